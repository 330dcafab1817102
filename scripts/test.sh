#!/usr/bin/env bash
# Runs the whole test suite: unit tests, SDK doc tests, and the end-to-end tests
# (which build the WASM filters first, through tests/build.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo test --workspace "$@"
