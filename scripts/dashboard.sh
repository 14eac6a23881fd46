#!/usr/bin/env bash
# The dashboard in a real browser (run by scripts/test.sh): starts
# `larder serve` with three entities and a token, and runs
# scripts/dashboard.test.cjs (node's test runner, playwright-core driving
# Debian's headless Chromium): the page loads with no console errors, asks
# for the token, lists every entity, and its numbers change as the test
# sends requests; the test saves a screenshot, checked here to be a
# non-empty PNG.
#
#   scripts/dashboard.sh                     # screenshot in a temp dir
#   DASHBOARD_PNG=docs/dashboard.png scripts/dashboard.sh
#
# Needs Chromium and playwright-core in $LARDER_NODE (default
# /opt/larder-node): scripts/services.sh installs both, once.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

NODE_DIR=${LARDER_NODE:-/opt/larder-node}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
NAME=dashboard
export LARDER_TEST_ADMIN_TOKEN="dash-admin-$$-$RANDOM"
export LARDER_TEST_READ_TOKEN="dash-read-$$-$RANDOM"
# shellcheck source=lib/serve.sh
. scripts/lib/serve.sh
sample_tables

[ -x "$CHROMIUM" ] || fail "no $CHROMIUM (run scripts/services.sh)"
[ -d "$NODE_DIR/node_modules/playwright-core" ] || fail "no playwright-core in $NODE_DIR (run scripts/services.sh)"

serve_start "
[auth]
token_env = \"LARDER_TEST_ADMIN_TOKEN\"
read_token_env = \"LARDER_TEST_READ_TOKEN\"
[near]
capacity = 10000
ttl = \"2s\"
[[entity]]
name = \"users\"
table = \"$SCHEMA.users\"
ttl = \"5s\"
[[entity]]
name = \"teams\"
table = \"$SCHEMA.teams\"
write = \"read-only\"
[[entity]]
name = \"events\"
table = \"$SCHEMA.events\"
write = \"back\"
near = false
[entity.write_back]
max_delay = \"300ms\"
require_durable = false"

PNG=${DASHBOARD_PNG:-$WORK/dashboard.png}
NODE_PATH="$NODE_DIR/node_modules" LARDER_HTTP="http://$HTTP" LARDER_ENTITIES="users,teams,events" \
    DASHBOARD_PNG="$PNG" CHROMIUM="$CHROMIUM" node --test scripts/dashboard.test.cjs ||
    fail "the browser test failed"
size=$(stat -c %s "$PNG" 2>/dev/null || echo 0)
[ "$size" -gt 10000 ] || fail "the screenshot $PNG is $size bytes"
[ "$(head -c 8 "$PNG" | od -An -tx1 | tr -d ' \n')" = "89504e470d0a1a0a" ] || fail "$PNG is not a PNG"
say "screenshot: $PNG ($size bytes)"
say "ok"
