#!/usr/bin/env bash
# Runs the JavaScript client's checks (clients/js): its tests against real wspair nodes and a
# real redis-server, a type check of index.d.ts, and a check that `npm pack` ships the module
# and its types and that the packed package loads by its name. Kept apart from scripts/test.sh
# so that the Rust suite does not need Node.
#
# Installs Node, npm and redis-server with apt when they are missing and this runs as root on
# Debian; elsewhere it names what is missing and fails.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/require.sh
missing=()
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v redis-server >/dev/null || missing+=(redis-server)
require test-js "${missing[@]}"

echo "test-js: building the node"
cargo build -p wspair

cd clients/js
if [[ -f package-lock.json ]]; then
    npm ci --no-audit --no-fund --loglevel=error
else
    npm install --no-audit --no-fund --loglevel=error
fi

echo "test-js: type check of index.d.ts"
npx tsc --noEmit --strict --lib es2022,dom --target es2022 --module nodenext \
    --moduleResolution nodenext test/types-check.ts

echo "test-js: tests"
npm test

echo "test-js: npm pack"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
tarball="$scratch/$(npm pack --silent --pack-destination "$scratch" | tail -n 1)"
listing=$(tar -tzf "$tarball")
for file in package/package.json package/index.d.ts package/README.md \
    package/src/wspair.js package/src/protocol.js package/src/frame.js; do
    if ! grep -qx "$file" <<<"$listing"; then
        echo "test-js: $file is missing from $(basename "$tarball"):" >&2
        echo "$listing" >&2
        exit 1
    fi
done
if grep -qE '^package/(test|node_modules)/' <<<"$listing"; then
    echo "test-js: the tarball ships tests or node_modules:" >&2
    echo "$listing" >&2
    exit 1
fi
# The packed package, installed alone (no ws: it is loaded only when a client connects), loads
# by its name and exposes its API.
mkdir "$scratch/app"
(
    cd "$scratch/app"
    echo '{"name":"pack-check","private":true,"type":"module"}' >package.json
    npm install --no-audit --no-fund --loglevel=error "$tarball"
    node -e "
      const m = await import('wspair-client');
      for (const name of ['connect', 'WspairClient', 'WspairError', 'decodeFrame', 'sidOfKey']) {
        if (!m[name]) throw new Error('wspair-client does not export ' + name);
      }
      if (m.sidOfKey('0'.repeat(32)) !== '374708fff7719dd5') throw new Error('wrong sid');
    " --input-type=module
)
echo "test-js: ok ($(basename "$tarball"), $(wc -l <<<"$listing") files)"
