#!/usr/bin/env bash
# Builds filter.c into out/filter.wasm: C bindings for the contract (from
# the wasmgate binary), clang for wasm32-wasi (a reactor), then a component.
# WASMGATE names the wasmgate binary (default: wasmgate on the PATH).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
wasmgate=${WASMGATE:-wasmgate}
"$wasmgate" filter bindings --lang c --out "$out/gen" >/dev/null
"${CC:-clang}" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -I"$out/gen" "$here/filter.c" "$out/gen/plugin.c" "$out/gen/plugin_component_type.o" \
    -Wl,--strip-debug -o "$out/core.wasm"
"$wasmgate" filter componentize "$out/core.wasm" -o "$out/filter.wasm"
