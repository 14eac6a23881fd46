#!/usr/bin/env bash
# Runs examples/python against a real `larder serve` (run by scripts/test.sh):
# http_client.py over HTTP (requests) and redis_client.py over the Redis
# protocol (redis-py), each with the seed's get_user_data /
# update_user_data_write_through, and checks what they print
# (examples/python/*.expected) and what the database holds afterwards.
#
# Needs Redis and PostgreSQL and the virtualenv $LARDER_VENV (default
# /opt/larder-venv) with requests and redis-py: scripts/services.sh.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=${LARDER_VENV:-/opt/larder-venv}
PY="$VENV/bin/python"
NAME=py_examples
export LARDER_TEST_ADMIN_TOKEN="py-admin-$$-$RANDOM"
# shellcheck source=lib/serve.sh
. scripts/lib/serve.sh
sample_tables

"$PY" -c 'import requests, redis' 2>/dev/null || fail "requests or redis-py is not in $VENV (run scripts/services.sh)"

serve_start "
[auth]
token_env = \"LARDER_TEST_ADMIN_TOKEN\"
[resp]
listen = \"127.0.0.1:0\"
[[entity]]
name = \"user\"
table = \"$SCHEMA.users\"
resp_writes = true"
[ -n "$RESP" ] || fail "larder serve did not open its Redis port"

# expect NAME OUTPUT: OUTPUT is exactly examples/python/NAME.expected. The
# examples run in this order on a fresh service, so even the read counts
# they print at the end are known: the second one's include the first's.
expect() {
    if [ "$2" != "$(cat "examples/python/$1.expected")" ]; then
        diff <(cat "examples/python/$1.expected") <(echo "$2") >&2 || true
        fail "$1.py printed something else"
    fi
}

out=$(LARDER_URL="http://$HTTP" LARDER_TOKEN="$LARDER_TEST_ADMIN_TOKEN" "$PY" examples/python/http_client.py 42) ||
    fail "http_client.py: $out"
echo "$out" | sed 's/^/  /'
expect http_client "$out"

out=$(LARDER_RESP_PORT="${RESP##*:}" LARDER_TOKEN="$LARDER_TEST_ADMIN_TOKEN" "$PY" examples/python/redis_client.py 43) ||
    fail "redis_client.py: $out"
echo "$out" | sed 's/^/  /'
expect redis_client "$out"

# The writes went through to the database.
got=$("${PG[@]}" -c "SELECT id || ' ' || name || ' ' || email FROM $SCHEMA.users WHERE id IN (42, 43) ORDER BY id")
[ "$got" = "$(printf '42 Ada ada@example.com\n43 Grace grace@example.com')" ] || fail "the database holds: $got"
say "ok"
