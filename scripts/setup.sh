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

# The C toolchain the C example filter is built with in the tests
# (examples/filters/c): Debian's clang, lld, wasi-libc and the wasm32
# compiler runtime.
c_packages="clang lld wasi-libc libclang-rt-dev-wasm32"
if ! dpkg -s $c_packages >/dev/null 2>&1; then
    if command -v apt-get >/dev/null; then
        sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        echo "installing $c_packages (apt-get)" >&2
        $sudo apt-get install -y -q $c_packages >/dev/null 2>&1 \
            || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q $c_packages >/dev/null; }
    else
        echo "need $c_packages (or their equivalents) to build the C example filter" >&2
        exit 1
    fi
fi
