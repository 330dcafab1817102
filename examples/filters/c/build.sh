#!/usr/bin/env bash
# Builds filter.c into a filter component:
#   C bindings for the contract -> clang (wasm32-wasi, reactor) -> component.
# Needs Debian's clang, lld, wasi-libc and libclang-rt-dev-wasm32, and the
# wasmgate binary (WASMGATE, default: wasmgate on the PATH).
# Usage: build.sh [OUT_DIR]   (default: ./out; the filter is OUT_DIR/filter.wasm)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(mkdir -p "${1:-$here/out}" && cd "${1:-$here/out}" && pwd)
wasmgate=${WASMGATE:-wasmgate}
cc=${CC:-clang}

"$wasmgate" filter bindings --lang c --out "$out/gen" >/dev/null
# clang 14 names the target wasm32-wasi; a reactor has no main, and the
# component runs its _initialize when it is instantiated.
# plugin_component_type.o carries the world's type into the module.
"$cc" --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -I"$out/gen" "$here/filter.c" "$out/gen/plugin.c" "$out/gen/plugin_component_type.o" \
    -Wl,--strip-debug -o "$out/core.wasm"
"$wasmgate" filter componentize "$out/core.wasm" -o "$out/filter.wasm"
