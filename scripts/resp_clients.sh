#!/usr/bin/env bash
# Real Redis clients against `larder serve --resp` (run by scripts/test.sh):
#
#   redis-cli        GET, MGET, SET, DEL, HGETALL, INFO, `-3` with HELLO 3, error strings
#   redis-py         a cache-aside program written for Redis (only the port
#                    changed): GET reads through, its DEL after its own UPDATE
#                    makes the next GET fresh; and a program writing through
#                    larder (r.set, r.mget, r.pipeline) on write-through and
#                    write-back entities with resp_writes = true
#   redis-benchmark  100,000 GETs of users:__rand_int__: no server error, and
#                    larder counts 100,000 reads
#
# Needs Redis and PostgreSQL (scripts/services.sh) and redis-py in the
# virtualenv $LARDER_VENV (default /opt/larder-venv; services.sh installs it).
# Uses the debug binary `cargo test` built unless $LARDER_BIN names one
# (scripts/lib/serve.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${LARDER_VENV:-/opt/larder-venv}
PY="$VENV/bin/python"
NAME=resp_clients
# shellcheck source=lib/serve.sh
. scripts/lib/serve.sh

[ -x "$PY" ] && "$PY" -c 'import redis' || fail "redis-py is not in $VENV (run scripts/services.sh)"

"${PG[@]}" <<SQL
CREATE TABLE $SCHEMA.users (id bigint PRIMARY KEY, name text NOT NULL, email text, team int NOT NULL DEFAULT 0);
INSERT INTO $SCHEMA.users SELECT i, 'user ' || i, 'u' || i || '@x', i % 10 FROM generate_series(0, 999) i;
CREATE TABLE $SCHEMA.wt (LIKE $SCHEMA.users INCLUDING ALL);
CREATE TABLE $SCHEMA.wb (LIKE $SCHEMA.users INCLUDING ALL);
SQL

serve_start "
[near]
capacity = 10000
ttl = \"2s\"
[resp]
listen = \"127.0.0.1:0\"
[[entity]]
name = \"users\"
table = \"$SCHEMA.users\"
[[entity]]
name = \"user\"
table = \"$SCHEMA.users\"
near = false
[[entity]]
name = \"wt\"
table = \"$SCHEMA.wt\"
resp_writes = true
[[entity]]
name = \"wb\"
table = \"$SCHEMA.wb\"
write = \"back\"
resp_writes = true
[entity.write_back]
max_delay = \"200ms\"
require_durable = false"
[ -n "$RESP" ] || fail "larder serve did not open its Redis port"
PORT=${RESP##*:}

# ------------------------------------------------------------ redis-cli ----
cli() { redis-cli -p "$PORT" "$@"; }
expect() { # expect WANT ARGS... : the output of redis-cli ARGS is exactly WANT
    local want=$1
    shift
    local got
    got=$(cli "$@" 2>&1)
    [ "$got" = "$want" ] || fail "redis-cli $*: want [$want], got [$got]"
}
expect '{"id":42,"name":"user 42","email":"u42@x","team":2}' GET users:000000000042
expect '' GET users:5000
expect "$(printf '{"id":1,"name":"user 1","email":"u1@x","team":1}\n\n{"id":2,"name":"user 2","email":"u2@x","team":2}')" MGET users:1 users:5000 users:2
expect "$(printf 'id\n3\nname\nuser 3\nemail\nu3@x\nteam\n3')" HGETALL users:3
expect 'OK' SET wt:1 '{"name":"cli","team":5}'
expect 'cli' HGET wt:1 name
expect 1 DEL wt:1
expect 'ERR wrong number of arguments for '"'"'get'"'"' command' GET
expect "ERR unknown command 'FOO', with args beginning with: 'a' " FOO a
case "$(cli SET users:1 '{}')" in
*"read-through over RESP"*) ;;
*) fail "SET on a read-through entity was not refused" ;;
esac
cli INFO | grep -q '^entity_users:' || fail "INFO has no larder section"
cli INFO | grep -q '^redis_version:' || fail "INFO has no server section"
cli -3 HELLO 3 | grep -q 'proto' || fail "HELLO 3 did not answer a map"
[ "$(cli -3 HGETALL users:3 | head -1)" = 'id 3' ] || fail "redis-cli -3 does not see a RESP3 map: $(cli -3 HGETALL users:3)"
say "redis-cli: ok"

# ------------------------------------------------------------- redis-py ----
"$PY" - "$PORT" "$SCHEMA" <<'PY'
import json, subprocess, sys, time
import redis

port, schema = int(sys.argv[1]), sys.argv[2]

def psql(sql):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qAt",
                           "-v", "ON_ERROR_STOP=1", "-c", sql],
                          check=True, capture_output=True, text=True).stdout.strip()

# A cache-aside program written for Redis; only the port is larder's.
r = redis.Redis(host="localhost", port=port, db=0)

def get_user_data(user_id):
    cache_key = f"user:{user_id}"
    cached = r.get(cache_key)
    if cached:
        return json.loads(cached)
    row = psql(f"SELECT row_to_json(u) FROM {schema}.users u WHERE id = {int(user_id)}")
    if not row:
        return None
    r.setex(cache_key, 3600, row)  # never reached: larder's GET reads through
    return json.loads(row)

def update_user_email(user_id, email):
    psql(f"UPDATE {schema}.users SET email = '{email}' WHERE id = {int(user_id)}")
    r.delete(f"user:{user_id}")

for i in range(1, 50):
    user = get_user_data(i)
    assert user and user["id"] == i, (i, user)
assert get_user_data(7)["email"] == "u7@x"
update_user_email(7, "new7@x")
assert get_user_data(7)["email"] == "new7@x", "DEL made the next GET fresh"
assert get_user_data(123456) is None

# Writing through larder, on write-through (wt) and write-back (wb) entities.
for entity in ("wt", "wb"):
    rows = {i: {"id": i, "name": f"{entity} {i}", "email": None, "team": i % 3} for i in range(40, 60)}
    assert r.set(f"{entity}:42", json.dumps(rows[42])) is True
    pipe = r.pipeline(transaction=False)
    for i, row in rows.items():
        if i != 42:
            pipe.set(f"{entity}:{i}", json.dumps(row))
    assert all(ok is True for ok in pipe.execute())
    got = r.mget([f"{entity}:{i}" for i in rows] + [f"{entity}:999"])
    assert [json.loads(g) if g else None for g in got] == list(rows.values()) + [None], got
    try:
        r.set(f"{entity}:42", json.dumps(rows[42]), nx=True)
        raise AssertionError("SET NX was accepted")
    except redis.ResponseError as e:
        assert "NX" in str(e), e
    want = {i: row["name"] for i, row in rows.items()}
    deadline = time.time() + 30
    while True:
        held = dict(tuple(line.split("|", 1)) for line in
                    psql(f"SELECT id, name FROM {schema}.{entity} WHERE id BETWEEN 40 AND 59").splitlines())
        if {int(k): v for k, v in held.items()} == want:
            break
        assert time.time() < deadline, f"{entity}: the database holds {held}"
        time.sleep(0.1)
print("resp_clients: redis-py: ok")
PY

# ------------------------------------------------------ redis-benchmark ----
reads() {
    "$PY" -c 'import json, sys, urllib.request
print(json.load(urllib.request.urlopen(sys.argv[1]))["entities"]["users"]["reads_total"])' "http://$HTTP/v1/stats"
}
before=$(reads)
out=$(redis-benchmark -p "$PORT" -e -r 1000 -n 100000 -q get users:__rand_int__ 2>&1)
if grep -q 'Error from server' <<<"$out"; then
    fail "redis-benchmark: $(grep -m1 'Error from server' <<<"$out")"
fi
after=$(reads)
[ $((after - before)) -eq 100000 ] || fail "larder counted $((after - before)) reads of 100000 GETs"
say "redis-benchmark: ok ($(tr '\r' '\n' <<<"$out" | grep -m1 'requests per second' | sed 's/^ *//'))"
say "all ok"
