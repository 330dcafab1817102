#!/usr/bin/env bash
# Builds a release wasmgate and its filters from an older commit, for
# `bench/run.sh --baseline` (the same scenarios run with both builds,
# interleaved in the same rounds).
#
#   bench/baseline.sh COMMIT [--rebuild]
#
# The commit is checked out into a temporary git worktree under
# $WASMGATE_BASELINE_ROOT (default /work/bench-baseline-target), built there
# with `cargo build --release -p wasmgate --workspace` (the package is
# `runtime/` before 93c75de and `runtime/wasmgate/` after; the name is the
# same) into its own target dir, $WASMGATE_BASELINE_ROOT/target, shared by
# all baselines; the filters, which tests/build.rs builds into the
# worktree's target/filters/, go to $WASMGATE_BASELINE_ROOT/guest-target
# through a symlink. The binary and the filter components are then copied to
# $WASMGATE_BASELINE_ROOT/<commit, 12 hex digits>/ (`wasmgate`, `filters/`),
# the worktree removed, and the two paths printed on stdout (progress goes to
# stderr). An existing build of the commit is reused unless --rebuild.
# Nothing is written into this repository's work tree.
set -euo pipefail

usage() { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

COMMIT=""
REBUILD=0
for arg in "$@"; do
    case "$arg" in
        --rebuild) REBUILD=1 ;;
        -h|--help) usage ;;
        -*) echo "unknown option: $arg" >&2; usage ;;
        *) [[ -z $COMMIT ]] || usage; COMMIT="$arg" ;;
    esac
done
[[ -n $COMMIT ]] || usage

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$BENCH/.." && pwd)"
ROOT="${WASMGATE_BASELINE_ROOT:-/work/bench-baseline-target}"

SHA="$(git -C "$REPO" rev-parse --verify --quiet "$COMMIT^{commit}")" \
    || { echo "not a commit: $COMMIT" >&2; exit 1; }
SHORT="${SHA:0:12}"
OUT="$ROOT/$SHORT"
SRC="$ROOT/src-$SHORT"

case "$ROOT/" in
    "$REPO"/*) echo "WASMGATE_BASELINE_ROOT must be outside the repository" >&2; exit 1 ;;
esac

say() { printf '==> %s\n' "$*" >&2; }

report() {
    echo "$OUT/wasmgate"
    echo "$OUT/filters"
}

if [[ $REBUILD == 0 && -x $OUT/wasmgate && -f $OUT/COMMIT ]]; then
    say "already built: $(head -1 "$OUT/COMMIT") (--rebuild to build again)"
    report
    exit 0
fi

mkdir -p "$ROOT"
# Left over from an interrupted run: ours, under $ROOT.
if [[ -e $SRC ]]; then
    rm -f "$SRC/target"
    git -C "$REPO" worktree remove --force "$SRC" 2>/dev/null || rm -rf "$SRC"
fi

cleanup() {
    # The symlink first: the guest build cache behind it is kept.
    rm -f "$SRC/target"
    git -C "$REPO" worktree remove --force "$SRC" 2>/dev/null || true
}
trap cleanup EXIT

say "worktree $SRC at $(git -C "$REPO" log -1 --format='%h %s' "$SHA")"
# --force: also when an interrupted run left $SRC registered but gone.
git -C "$REPO" worktree add --force --detach "$SRC" "$SHA" >&2

# tests/build.rs writes the filters into <worktree>/target/filters whatever
# CARGO_TARGET_DIR says; the symlink keeps them (and their build cache)
# outside the temporary worktree.
mkdir -p "$ROOT/guest-target"
ln -s "$ROOT/guest-target" "$SRC/target"

say "cargo build --release -p wasmgate --workspace (target dir $ROOT/target)"
(cd "$SRC" && CARGO_TARGET_DIR="$ROOT/target" cargo build --release -p wasmgate --workspace) >&2

FILTERS="$ROOT/guest-target/filters/wasm32-wasip2/release"
[[ -x $ROOT/target/release/wasmgate ]] || { echo "no binary at $ROOT/target/release/wasmgate" >&2; exit 1; }
ls "$FILTERS"/*.wasm >/dev/null 2>&1 || { echo "no filters in $FILTERS" >&2; exit 1; }

rm -rf "$OUT.tmp"
mkdir -p "$OUT.tmp/filters"
cp "$ROOT/target/release/wasmgate" "$OUT.tmp/wasmgate"
cp "$FILTERS"/*.wasm "$OUT.tmp/filters/"
{
    git -C "$REPO" log -1 --format='%H %s' "$SHA"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) with $(cargo --version) ($(rustc --version))"
} >"$OUT.tmp/COMMIT"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"

say "built $(head -1 "$OUT/COMMIT")"
report
