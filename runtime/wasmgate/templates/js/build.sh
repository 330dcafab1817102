#!/usr/bin/env bash
# Builds filter.js into out/filter.wasm with componentize-js: the contract
# from the wasmgate binary, the toolchain from npm (package.json pins it;
# commit the package-lock.json the first build writes), then componentize,
# leaving out wasi:http (which a filter cannot use and the gateway refuses).
# Needs node and npm, and WASMGATE (default: wasmgate on the PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
"${WASMGATE:-wasmgate}" filter wit --out "$out/wit" >/dev/null
cd "$here"
if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
else
    npm install --no-audit --no-fund --loglevel=error >/dev/null
fi
node_modules/.bin/componentize-js --wit "$out/wit/filter.wit" --world-name plugin \
    -d http -d fetch-event -o "$out/filter.wasm" filter.js >/dev/null
