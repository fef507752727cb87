#!/usr/bin/env bash
# Runs wspair's whole test suite, installing first what the tests need.
# Usage: bash scripts/test.sh   (root on Debian installs missing packages with apt)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "scripts/test.sh: cargo not found; install a Rust toolchain (1.85 or newer) first" >&2
    exit 1
fi

# Debian packages the tests use: redis-server (cluster tests), promtool (the Prometheus
# format) and the C toolchain some crates build with.
source scripts/lib/require.sh
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v cc >/dev/null || missing+=(gcc)
# promtool checks the /metrics format (tests/it/admin.rs).
command -v promtool >/dev/null || missing+=(prometheus)
require scripts/test.sh "${missing[@]}"

cargo test --locked -p wspair -p wspair-client

# The JavaScript library and the demo page in a real browser (installs Node, npm and
# Chromium with apt when missing).
bash scripts/test-js.sh
bash scripts/test-browser.sh
