#!/usr/bin/env bash
# Property-based tests of the HTTP API against its own OpenAPI document:
# starts `larder serve` (the debug binary) over PostgreSQL tables of mixed
# column types — `items` (integer key, write-through), `events` (text key,
# write-back, tagged, public reads) and `counts` (a write-back hash entity
# with counters) — and runs schemathesis
# against /v1/openapi.json with every check on, in positive mode: every
# request is schema-valid, so it must be answered 2xx, 404 or 409, with a
# documented status and a body that matches the document; never a 5xx.
#
#   scripts/schemathesis.sh               # as scripts/test.sh runs it
#   LARDER_ST_SEED=123 scripts/schemathesis.sh
#   scripts/schemathesis.sh --mode negative   # more `st run` options (the last wins)
#
# Needs the virtualenv scripts/services.sh makes (/opt/larder-venv), Redis
# and PostgreSQL on loopback. Leaves nothing behind: the schema, the Redis
# keys of its prefix and the service are removed at exit.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${LARDER_VENV:-/opt/larder-venv}
PG_URL=${LARDER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
REDIS_URL=${LARDER_TEST_REDIS_URL:-redis://127.0.0.1:6379/0}
SEED=${LARDER_ST_SEED:-20261201}
MAX_EXAMPLES=${LARDER_ST_EXAMPLES:-50}
BUDGET_SECS=180

say() { echo "schemathesis.sh: $*"; }
[ -x "$VENV/bin/st" ] || {
    echo "schemathesis.sh: no $VENV/bin/st: run scripts/services.sh first" >&2
    exit 1
}

cargo build -q -p larder-server --bin larder
BIN=${CARGO_TARGET_DIR:-target}/debug/larder

ID="st_$$_$(date +%s)"
WORK=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    psql -X -q -w "$PG_URL" -c "DROP SCHEMA IF EXISTS $ID CASCADE" >/dev/null 2>&1 || true
    redis-cli -u "$REDIS_URL" --scan --pattern "$ID:*" 2>/dev/null |
        xargs -r -n 500 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

psql -X -q -w -v ON_ERROR_STOP=1 "$PG_URL" >/dev/null <<SQL
CREATE SCHEMA $ID;
CREATE TABLE $ID.items (
    id integer PRIMARY KEY,
    name varchar(40) NOT NULL,
    note text,
    qty integer NOT NULL DEFAULT 0,
    big bigint,
    small smallint,
    price numeric(10, 2),
    ratio double precision,
    active boolean NOT NULL DEFAULT true,
    attrs jsonb,
    created timestamptz NOT NULL DEFAULT now(),
    due date
);
INSERT INTO $ID.items (id, name, note, attrs) VALUES
    (1, 'one', 'first', '{"a": [1, "x"]}'), (2, 'two', NULL, NULL), (3, 'three', 'third', '[]');
CREATE TABLE $ID.events (
    id text PRIMARY KEY,
    kind varchar(16) NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    count bigint,
    at timestamptz,
    flag boolean,
    labels text[]
);
INSERT INTO $ID.events (id, kind, labels) VALUES ('a', 'click', '{x,y}'), ('b', 'view', NULL);
CREATE TABLE $ID.counts (
    id integer PRIMARY KEY,
    hits bigint NOT NULL DEFAULT 0,
    small smallint
);
INSERT INTO $ID.counts (id, hits) VALUES (1, 10), (2, 0);
SQL

cat >"$WORK/larder.toml" <<TOML
listen = "127.0.0.1:0"
body_limit = "64KiB"

[store]
url = "$REDIS_URL"
prefix = "$ID"

[source]
url = "$PG_URL"
pool = 3

[auth]
token_env = "LARDER_ST_TOKEN"
read_token_env = "LARDER_ST_READ_TOKEN"

[[entity]]
name = "items"
table = "$ID.items"

[[entity]]
name = "events"
table = "$ID.events"
write = "back"
tags = ["kind:{kind}"]
public_reads = true

[entity.write_back]
require_durable = false
max_delay = "100ms"

[[entity]]
name = "counts"
table = "$ID.counts"
write = "back"
representation = "hash"

[entity.write_back]
require_durable = false
max_delay = "100ms"
TOML

cat >"$WORK/schemathesis.toml" <<'TOML'
# A schema-valid request is answered 2xx, 404 (no such row) or 409 (a
# constraint), nothing else.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "404", "409"]
TOML

TOKEN="st-admin-$$-$RANDOM"
LARDER_ST_TOKEN=$TOKEN LARDER_ST_READ_TOKEN="st-read-$$-$RANDOM" RUST_LOG=warn \
    "$BIN" serve --config "$WORK/larder.toml" >"$WORK/stdout" 2>"$WORK/stderr" &
SERVER_PID=$!
ADDR=
for _ in $(seq 300); do
    ADDR=$(sed -n 's#^larder: listening on \(http://.*\)$#\1#p' "$WORK/stdout")
    [ -n "$ADDR" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ADDR" ]; then
    cat "$WORK/stderr" >&2
    echo "schemathesis.sh: larder serve did not start" >&2
    exit 1
fi
say "larder serve at $ADDR; schemathesis (positive mode, every check, at most $MAX_EXAMPLES examples per operation, seed $SEED)"

status=0
# From the work dir: schemathesis keeps a cache (.schemathesis/) where it runs.
cd "$WORK"
timeout --signal=INT "$BUDGET_SECS" "$VENV/bin/st" --config-file "$WORK/schemathesis.toml" run "$ADDR/v1/openapi.json" \
    --checks all \
    --mode positive \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 2 \
    --request-timeout 10 \
    -H "Authorization: Bearer $TOKEN" "$@" || status=$?

if [ "$status" -ne 0 ]; then
    echo "schemathesis.sh: schemathesis failed (exit $status); the service's log:" >&2
    tail -n 50 "$WORK/stderr" >&2
    exit "$status"
fi
say "passed"
