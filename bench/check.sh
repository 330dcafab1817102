#!/usr/bin/env bash
# The fast path's regression check, in about a minute and a half: mode S's
# method (wrk, the proxy and an nginx upstream pinned to one CPU, rounds
# interleaved) on nginx, plain wasmgate and wasmgate with api-key + headers,
# 3 rounds × 3 s, then the ratios the fast-path targets are written in:
#
#   plain wasmgate ÷ nginx      (cost per request; target ≤ 1.0)
#   two filters − plain         (µs per request the two filters add; target ≤ 6)
#
#   bench/check.sh [--no-setup] [extra bench.py arguments]
#
# It builds a release wasmgate unless --no-setup (then target/release/wasmgate
# and the filters under target/filters/ must exist), writes nothing into the
# repository, and prints the table and the ratios. A figure from this check
# is a guide on a quiet machine, not a result: BENCHMARKS.md's come from
# `bench/run.sh`.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
cd "$REPO"

SETUP=1
ARGS=()
for arg in "$@"; do
    case "$arg" in
        --no-setup) SETUP=0 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) ARGS+=("$arg") ;;
    esac
done

if [[ $SETUP == 1 ]]; then
    for tool in nginx wrk; do
        command -v "$tool" >/dev/null || {
            echo "==> apt-get install nginx wrk" >&2
            apt-get install -y nginx wrk >&2 || { apt-get update >&2 && apt-get install -y nginx wrk >&2; }
            break
        }
    done
    echo "==> cargo build --release (wasmgate and the filters)" >&2
    cargo build --release -p wasmgate --bin wasmgate -p wasmgate-tests --bin bookstore-grpc >&2
fi

OUT="$(mktemp /tmp/wasmgate-check.XXXXXX.md)"
trap 'rm -f "$OUT"' EXIT
printf '# check\n' > "$OUT"
python3 "$BENCH/bench.py" --mode S --scenarios nginx,wasmgate,wasmgate-2f \
    --rounds 3 --duration 3 --warmup 1 --output "$OUT" --write \
    --command "bench/check.sh" "${ARGS[@]}" >&2

python3 - "$OUT" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
cost = {}
for line in text.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 6:
        continue
    m = re.match(r"([0-9.]+) \(", cells[5])
    if m:
        cost[cells[0]] = float(m.group(1))
nginx, plain = cost.get("nginx"), cost.get("wasmgate")
two = cost.get("wasmgate + api-key + headers")
if None in (nginx, plain, two):
    sys.exit(f"could not read the costs from the table: {cost}")
print(f"cost per request (median): nginx {nginx:.1f} µs, wasmgate {plain:.1f} µs, "
      f"wasmgate + api-key + headers {two:.1f} µs")
print(f"plain wasmgate ÷ nginx: {plain / nginx:.2f}  (target ≤ 1.0)")
print(f"two filters − plain:    {two - plain:+.1f} µs  (target ≤ 6)")
EOF
