# Sourced by the scripts that drive a real `larder serve` (dashboard.sh,
# python_examples.sh, resp_clients.sh): a PostgreSQL schema of their own
# ($SCHEMA, dropped on exit), the debug binary ($LARDER_BIN, else
# target/debug/larder, built if `cargo test` has not), free ports, and the shared Redis
# under a unique prefix.
#
#   NAME=dashboard; . scripts/lib/serve.sh
#   sample_tables                 # or "${PG[@]}" <<SQL ... with tables of its own
#   serve_start "$TOML_EXTRA"     # sets HTTP (host:port), RESP (host:port or empty), PID

PG=(psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -qAt)
ID="${NAME}_$$_$(date +%s)"
SCHEMA="$ID"
WORK=$(mktemp -d)
PID=""

say() { echo "$NAME: $*"; }
fail() {
    echo "$NAME: FAILED: $*" >&2
    [ -f "$WORK/serve.log" ] && sed 's/^/  larder: /' "$WORK/serve.log" >&2
    exit 1
}
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    "${PG[@]}" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${LARDER_BIN:-}" ]; then
    # scripts/test.sh runs these after `cargo test`, which built it.
    LARDER_BIN="${CARGO_TARGET_DIR:-target}/debug/larder"
    [ -x "$LARDER_BIN" ] || cargo build -q -p larder-server --bin larder
fi

"${PG[@]}" -c "CREATE SCHEMA $SCHEMA"

# sample_tables: `users` (1..1000), `teams` (0..9) and `events` (empty) in $SCHEMA.
sample_tables() {
    "${PG[@]}" <<SQL
CREATE TABLE $SCHEMA.users (id bigint PRIMARY KEY, name text NOT NULL, email text, team int NOT NULL DEFAULT 0);
INSERT INTO $SCHEMA.users SELECT i, 'user ' || i, 'u' || i || '@example.com', i % 10 FROM generate_series(1, 1000) i;
CREATE TABLE $SCHEMA.teams (id int PRIMARY KEY, title text NOT NULL);
INSERT INTO $SCHEMA.teams SELECT i, 'team ' || i FROM generate_series(0, 9) i;
CREATE TABLE $SCHEMA.events (id bigint PRIMARY KEY, kind text NOT NULL, n int NOT NULL DEFAULT 0);
SQL
}

# serve_start EXTRA: writes the config (common part + EXTRA) and starts the service.
serve_start() {
    cat >"$WORK/larder.toml" <<TOML
listen = "127.0.0.1:0"
[store]
url = "redis://127.0.0.1:6379/0"
prefix = "${ID//_/-}"
[source]
url = "postgres://postgres@127.0.0.1:5432/test"
pool = 3
$1
TOML
    LARDER_LOG=warn "$LARDER_BIN" serve --config "$WORK/larder.toml" >"$WORK/serve.out" 2>"$WORK/serve.log" &
    PID=$!
    for _ in $(seq 300); do
        grep -q 'listening on http://' "$WORK/serve.out" 2>/dev/null && break
        kill -0 "$PID" 2>/dev/null || fail "larder serve exited"
        sleep 0.1
    done
    HTTP=$(sed -n 's|.*listening on http://||p' "$WORK/serve.out")
    RESP=$(sed -n 's|.*listening on redis://||p' "$WORK/serve.out")
    [ -n "$HTTP" ] || fail "larder serve did not say where it listens"
    say "larder serve: http://$HTTP${RESP:+, redis://$RESP}"
}
