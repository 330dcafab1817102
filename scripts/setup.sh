#!/usr/bin/env bash
# Installs what a fresh machine lacks for building wasmgate: the wasm32-wasip2
# target (filters compile to it) and, for CI, rustfmt and clippy.
set -euo pipefail

if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust with rustup first (https://rustup.rs)" >&2
    exit 1
fi
if command -v rustup >/dev/null; then
    installed=$(rustup target list --installed)
    grep -qx wasm32-wasip2 <<<"$installed" || rustup target add wasm32-wasip2
    if [ "${WASMGATE_LINT:-0}" = 1 ]; then
        rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
        rustup component list --installed | grep -q '^clippy' || rustup component add clippy
    fi
else
    rustc --print target-list | grep -qx wasm32-wasip2 || { echo "need the wasm32-wasip2 target" >&2; exit 1; }
fi
