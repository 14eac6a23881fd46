#!/usr/bin/env bash
# The test command (README, and the last step of .ci/run): make sure Redis and
# PostgreSQL are up (scripts/services.sh), then run every test in the
# workspace: unit tests of the library and binaries, integration tests, and
# doctests; then schemathesis against the service (scripts/schemathesis.sh),
# real Redis clients against the RESP listener (scripts/resp_clients.sh),
# the Python examples (scripts/python_examples.sh) and the dashboard in a
# browser (scripts/dashboard.sh).
# Criterion benches are not run (`--benches`/`--all-targets` would
# run each bench once in test mode; clippy still compiles them).
#
#   scripts/test.sh                  # everything, as CI does
#   scripts/test.sh -p larder-test-support --test selftest   # any `cargo test` args instead
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/services.sh

if [ "$#" -gt 0 ]; then
    exec cargo test "$@"
fi

# Each step reports its wall time, so CI's log shows what each part costs.
timed() {
    local started=$SECONDS
    "$@"
    echo "==> $* took $((SECONDS - started)) s" >&2
}

timed cargo test --workspace --lib --bins --tests
timed cargo test --workspace --doc
# The HTTP API against its own OpenAPI document (about 30 s).
timed scripts/schemathesis.sh
# Real Redis clients (redis-cli, redis-py, redis-benchmark) against `larder serve --resp`.
timed scripts/resp_clients.sh
# examples/python against `larder serve`, over HTTP and over the Redis protocol.
timed scripts/python_examples.sh
# The dashboard in headless Chromium (about 20 s).
timed scripts/dashboard.sh
