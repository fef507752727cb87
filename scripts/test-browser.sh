#!/usr/bin/env bash
# Drives the demo page in headless Chromium (tests/browser): two pages pair through two real
# nodes, one node is killed and another started on its address, and every message must arrive
# once. Installs what it needs when missing (as root on Debian: nodejs, npm, chromium,
# redis-server); Chromium is Debian's, nothing downloads a browser.
# Usage: bash scripts/test-browser.sh
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/require.sh
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
require test-browser "${missing[@]}"

cargo build --locked -p wspair
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && npm test)
