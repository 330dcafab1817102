#!/usr/bin/env bash
# Builds filter.py into a filter component with componentize-py:
#   the contract (from the wasmgate binary) -> a venv with componentize-py
#   (pinned) -> componentize-py ... componentize filter -o OUT_DIR/filter.wasm
# Needs python3 with venv and PyPI; componentize-py's wheel carries CPython
# for wasm32-wasip2, its standard library and the component tooling.
# WASMGATE names the wasmgate binary (default: wasmgate on the PATH); VENV
# the venv to make or reuse (default: OUT_DIR/venv).
# Usage: build.sh [OUT_DIR]   (default: ./out)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
wasmgate=${WASMGATE:-wasmgate}
venv=${VENV:-$out/venv}
version=0.25.1

"$wasmgate" filter wit --out "$out/wit" >/dev/null
if [ ! -x "$venv/bin/componentize-py" ] ||
   [ "$("$venv/bin/componentize-py" --version)" != "componentize-py $version" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi
# `filter` is the app module (filter.py); its top-level code runs now, at
# build time, and is snapshotted into the component.
cd "$here"
"$venv/bin/componentize-py" -d "$out/wit" -w plugin componentize -p "$here" filter \
    -o "$out/filter.wasm" >/dev/null
