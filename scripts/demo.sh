#!/usr/bin/env bash
# Builds everything (gateway, demo services, WASM filters) and runs the gateway
# on gateway.toml in front of the e-commerce demo services. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
echo "==> building (release; the first build compiles wasmtime and takes several minutes)"
cargo build --release --workspace

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

start_service() {
    local name=$1 port=$2
    ./target/release/demo-service --name "$name" --port "$port" &
    pids+=($!)
}
start_service search-1 9101
start_service search-2 9102
start_service cart-1 9201

# Wait until the services answer (or one of them failed to start).
for port in 9101 9102 9201; do
    for _ in $(seq 1 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
        sleep 0.1
    done
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "demo service on port $port did not start (port in use?)" >&2; exit 1; }
done

cat <<'TXT'
==> gateway on http://127.0.0.1:8080  (Ctrl-C to stop). Try:
    curl -i http://127.0.0.1:8080/api/search?q=shoes                                  # 401: no API key
    curl -i -H 'x-api-key: demo-key-123' http://127.0.0.1:8080/api/search?q=shoes     # 200, search-1 then search-2
    curl -i http://127.0.0.1:8080/api/cart                                            # 401: no token
    TOKEN=$(scripts/demo-token.sh alice cart:read)                                    # a demo JWT for user alice
    curl -i -H "authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/cart          # 200 from cart-1, as alice
    curl -s -H "authorization: Bearer $TOKEN" 'http://127.0.0.1:8080/api/home?q=boots' # search + cart in one answer
    curl -i http://127.0.0.1:8080/nowhere                                             # 404 in the standard error format
TXT
./target/release/wasmgate serve --config gateway.toml &
pids+=($!)
wait "${pids[-1]}"
