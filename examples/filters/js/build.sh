#!/usr/bin/env bash
# Builds filter.js into a filter component with componentize-js:
#   the contract (from the wasmgate binary) -> npm ci (the exact toolchain of
#   package-lock.json) -> componentize-js -> OUT_DIR/filter.wasm
# Needs Node.js 18 or later and npm (componentize-js ships StarlingMonkey and
# wizer as npm packages). WASMGATE names the wasmgate binary (default:
# wasmgate on the PATH).
# Usage: build.sh [OUT_DIR]   (default: ./out)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
wasmgate=${WASMGATE:-wasmgate}

"$wasmgate" filter wit --out "$out/wit" >/dev/null
cd "$here"
npm ci --no-audit --no-fund --loglevel=error >/dev/null
# -d http -d fetch-event: leave out wasi:http (fetch and the incoming
# handler), which a filter cannot use and the gateway refuses. stdio, random
# and clocks stay (the gateway's WASI 0.2 is there, and empty): without
# stdio an uncaught exception traps with no message.
node_modules/.bin/componentize-js \
    --wit "$out/wit/filter.wit" --world-name plugin \
    -d http -d fetch-event \
    -o "$out/filter.wasm" filter.js >/dev/null
