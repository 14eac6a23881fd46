#!/usr/bin/env bash
# The Redis protocol front end against Redis itself, same machine, same run
# (not run by CI: it needs a quiet machine and a release build):
#
#   redis-benchmark -c 64 -n 400000 -r 1000 get users:__rand_int__
#       against `larder serve --resp` (near cache on, warmed; rows 0–999 in
#       PostgreSQL) and against a private redis-server holding the same
#       1,000 keys with the very bytes larder answers; 3 alternating runs
#       each, medians of requests/s and p99 reported with their ratio;
#   the same with -P 16 (pipelined);
#   RSS of larder before and with 1,000 idle connections (redis-benchmark -I).
#
#   scripts/resp_bench.sh                 # RUNS=3 REQUESTS=400000 by default
#   RUNS=5 REQUESTS=200000 scripts/resp_bench.sh
#
# Needs Redis and PostgreSQL (scripts/services.sh). Builds the release binary
# unless $LARDER_BIN names one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUNS=${RUNS:-3}
REQUESTS=${REQUESTS:-400000}
PG=(psql -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1 -qAt)
ID="rb_$$_$(date +%s)"
SCHEMA="$ID"
WORK=$(mktemp -d)
PID=""
REDIS_PID=""

say() { echo "resp_bench: $*"; }
fail() {
    echo "resp_bench: FAILED: $*" >&2
    [ -f "$WORK/serve.log" ] && sed 's/^/  larder: /' "$WORK/serve.log" >&2
    exit 1
}
cleanup() {
    for p in $PID $REDIS_PID; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    "${PG[@]}" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

if [ -z "${LARDER_BIN:-}" ]; then
    cargo build -q --release -p larder-server --bin larder
    LARDER_BIN="${CARGO_TARGET_DIR:-target}/release/larder"
fi

"${PG[@]}" <<SQL
CREATE SCHEMA $SCHEMA;
CREATE TABLE $SCHEMA.users (id bigint PRIMARY KEY, name text NOT NULL, email text, team int NOT NULL DEFAULT 0);
INSERT INTO $SCHEMA.users SELECT i, 'user ' || i, 'u' || i || '@x', i % 10 FROM generate_series(0, 999) i;
SQL

cat >"$WORK/larder.toml" <<TOML
listen = "127.0.0.1:0"
[store]
url = "redis://127.0.0.1:6379/0"
prefix = "${ID//_/-}"
[source]
url = "postgres://postgres@127.0.0.1:5432/test"
pool = 4
[near]
capacity = 10000
ttl = "10m"
[resp]
listen = "127.0.0.1:0"
[[entity]]
name = "users"
table = "$SCHEMA.users"
ttl = "10m"
TOML

ulimit -n 8192
LARDER_LOG=warn "$LARDER_BIN" serve --config "$WORK/larder.toml" >"$WORK/serve.out" 2>"$WORK/serve.log" &
PID=$!
for _ in $(seq 300); do
    grep -q 'listening on redis://' "$WORK/serve.out" 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || fail "larder serve exited"
    sleep 0.1
done
RESP=$(sed -n 's|.*listening on redis://||p' "$WORK/serve.out")
[ -n "$RESP" ] || fail "larder serve did not say where it listens"
LARDER_PORT=${RESP##*:}

# The baseline: a private Redis holding the bytes larder answers, key for key.
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --logfile "$WORK/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
done

say "warming larder (every row into Redis and the near cache) and copying its answers"
python3 - "$LARDER_PORT" "$REDIS_PORT" <<'PY'
import socket, sys

def conn(port):
    s = socket.create_connection(("127.0.0.1", int(port)))
    return s, s.makefile("rb")

def command(sock, f, *args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    sock.sendall(out)
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if line.startswith(b"-"):
        raise SystemExit("error: " + line.decode().strip())
    return line

larder, lf = conn(sys.argv[1])
redis, rf = conn(sys.argv[2])
size = 0
for i in range(1000):
    key = "users:%012d" % i
    value = command(larder, lf, "GET", key)
    if value is None:
        raise SystemExit("larder has no row for " + key)
    command(larder, lf, "GET", key)  # a second read lands in the near cache
    command(redis, rf, "SET", key, value)
    size += len(value)
print("resp_bench: 1000 rows, %.1f bytes on average" % (size / 1000))
PY

# bench PORT [extra args] -> "rps p99_ms"
bench() {
    local port=$1
    shift
    redis-benchmark -p "$port" -c 64 -n "$REQUESTS" -r 1000 --csv "$@" get users:__rand_int__ 2>/dev/null |
        awk -F, 'NR == 2 { gsub(/"/, ""); print $2, $7 }'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

report() { # report LABEL [redis-benchmark args]
    local label=$1
    shift
    : >"$WORK/larder.txt"
    : >"$WORK/redis.txt"
    for run in $(seq "$RUNS"); do
        bench "$LARDER_PORT" "$@" >>"$WORK/larder.txt"
        bench "$REDIS_PORT" "$@" >>"$WORK/redis.txt"
        say "$label run $run: larder $(tail -1 "$WORK/larder.txt") | redis $(tail -1 "$WORK/redis.txt") (req/s p99_ms)"
    done
    local lr rr lp rp
    lr=$(awk '{ print $1 }' "$WORK/larder.txt" | median)
    rr=$(awk '{ print $1 }' "$WORK/redis.txt" | median)
    lp=$(awk '{ print $2 }' "$WORK/larder.txt" | median)
    rp=$(awk '{ print $2 }' "$WORK/redis.txt" | median)
    say "$label median: larder $lr req/s p99 $lp ms | redis $rr req/s p99 $rp ms | ratio $(awk -v a="$lr" -v b="$rr" 'BEGIN { printf "%.2f", a / b }')x"
}

report "-c 64"
report "-c 64 -P 16" -P 16

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$PID/status"; }
before=$(rss)
redis-benchmark -p "$LARDER_PORT" -I -c 1000 >/dev/null 2>&1 &
IDLE=$!
for _ in $(seq 200); do
    n=$(redis-cli -p "$LARDER_PORT" INFO clients 2>/dev/null | sed -n 's/^connected_clients:\([0-9]*\).*/\1/p')
    [ "${n:-0}" -ge 1000 ] && break
    sleep 0.1
done
after=$(rss)
kill "$IDLE" 2>/dev/null || true
wait "$IDLE" 2>/dev/null || true
say "RSS: $before KiB before, $after KiB with ${n:-?} idle connections (+$((after - before)) KiB, $(awk -v d=$((after - before)) -v n="${n:-1}" 'BEGIN { printf "%.1f", d / n }') KiB per connection)"
