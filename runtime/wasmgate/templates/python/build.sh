#!/usr/bin/env bash
# Builds filter.py into out/filter.wasm with componentize-py (pinned, in a
# venv): the contract from the wasmgate binary, then componentize.
# Needs python3 with venv, PyPI, and WASMGATE (default: wasmgate on the PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
venv=${VENV:-$out/venv}
version=0.25.1
"${WASMGATE:-wasmgate}" filter wit --out "$out/wit" >/dev/null
if [ ! -x "$venv/bin/componentize-py" ] ||
   [ "$("$venv/bin/componentize-py" --version)" != "componentize-py $version" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "componentize-py==$version"
fi
cd "$here"
"$venv/bin/componentize-py" -d "$out/wit" -w plugin componentize -p "$here" filter \
    -o "$out/filter.wasm" >/dev/null
