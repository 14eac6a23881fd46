#!/usr/bin/env bash
# Soak: mixed load on a release `larder serve` for a while (default 10
# minutes), its resident memory sampled every 10 s; reports the growth from
# the first minute's end to the last sample (the target is under 10%).
# Not part of CI. Needs the services of scripts/services.sh.
#
#   scripts/soak.sh                 # 600 s, 16 clients
#   SOAK_SECS=120 SOAK_CLIENTS=8 scripts/soak.sh
#
# The service runs a write-through entity and a write-back entity (on a
# durable redis-server of its own, AOF always, on a free port) over two
# PostgreSQL tables of 10,000 rows, with a near cache. The load: 80% reads
# (keys Zipf-like), 20% writes, from SOAK_CLIENTS keep-alive connections.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${SOAK_SECS:-600}
CLIENTS=${SOAK_CLIENTS:-16}
PG_URL=${LARDER_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/test}
SAMPLE=10

scripts/services.sh >/dev/null
cargo build --release -q -p larder-server
BIN=${CARGO_TARGET_DIR:-target}/release/larder

work=$(mktemp -d /tmp/larder-soak.XXXXXX)
suffix=$$
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -X -q "$PG_URL" -c "DROP TABLE IF EXISTS soak_wt_$suffix, soak_wb_$suffix CASCADE" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work" --save "" \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

for t in wt wb; do
    psql -X -q "$PG_URL" -c "CREATE TABLE soak_${t}_$suffix (id bigint PRIMARY KEY, name text NOT NULL, n bigint NOT NULL DEFAULT 0);
        INSERT INTO soak_${t}_$suffix SELECT g, 'seed-' || g, 0 FROM generate_series(0, 9999) g;" >/dev/null
done

port=$(free_port)
cat >"$work/larder.toml" <<EOF
listen = "127.0.0.1:$port"
[store]
url = "redis://127.0.0.1:$redis_port/0"
prefix = "soak"
[source]
url = "$PG_URL"
pool = 8
[near]
capacity = 2000
ttl = "2s"
[[entity]]
name = "wt"
table = "soak_wt_$suffix"
ttl = "30s"
[[entity]]
name = "wb"
table = "soak_wb_$suffix"
ttl = "30s"
write = "back"
[entity.write_back]
max_delay = "200ms"
EOF
LARDER_LOG=warn "$BIN" serve --config "$work/larder.toml" >"$work/serve.log" 2>&1 &
larder_pid=$!
pids+=($larder_pid)
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break; sleep 0.1; done

python3 - "$port" "$CLIENTS" "$SECS" >"$work/load.log" 2>&1 <<'EOF' &
import http.client, json, random, sys, threading, time
port, clients, secs = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
end = time.time() + secs
counts = {}
lock = threading.Lock()
def run(c):
    rng = random.Random(c)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    n = 0
    while time.time() < end:
        entity = rng.choice(("wt", "wb"))
        key = min(int(rng.paretovariate(1.2)) - 1, 9999)
        try:
            if rng.random() < 0.8:
                conn.request("GET", f"/v1/{entity}/{key}")
            else:
                n += 1
                body = json.dumps({"name": f"c{c}-{n}", "n": n})
                conn.request("PUT", f"/v1/{entity}/{key}", body, {"content-type": "application/json"})
            status = conn.getresponse()
            status.read()
            code = status.status
        except Exception as e:
            code = type(e).__name__
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with lock:
            counts[code] = counts.get(code, 0) + 1
threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({str(k): v for k, v in sorted(counts.items(), key=str)}))
EOF
load_pid=$!
pids+=($load_pid)

rss() { awk '/^VmRSS/ {print $2}' "/proc/$larder_pid/status"; }
echo "soak: larder pid $larder_pid on :$port, $CLIENTS clients for ${SECS}s; RSS (KiB) every ${SAMPLE}s:"
samples=()
t=0
while kill -0 "$load_pid" 2>/dev/null; do
    sleep "$SAMPLE"
    t=$((t + SAMPLE))
    kill -0 "$larder_pid" 2>/dev/null || { echo "soak: larder died"; cat "$work/serve.log"; exit 1; }
    r=$(rss)
    samples+=("$t:$r")
    echo "  ${t}s ${r}"
done
echo "soak: answers $(cat "$work/load.log")"
python3 - "${samples[@]}" <<'EOF'
import sys
pts = [tuple(map(int, s.split(":"))) for s in sys.argv[1:]]
base = [r for t, r in pts if t >= 60]
if len(base) < 2:
    print("soak: too short to judge growth after the first minute"); sys.exit(0)
first, last, peak = base[0], base[-1], max(base)
print(f"soak: RSS at 60s {first} KiB, at the end {last} KiB, peak {peak} KiB: growth after the first minute {100.0 * (last - first) / first:+.1f}%")
EOF
