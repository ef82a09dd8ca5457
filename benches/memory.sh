#!/usr/bin/env bash
# RSS of a Memory stream, today's code (a baseline revision) and this tree
# side by side in one run: idle, after filling a 256 MiB Memory stream of
# 100-byte messages with `weir-bench load` (then read back), and after
# deleting it; the fill and delete are repeated (CYCLES) because glibc's
# malloc behaves differently once it has freed a large block.
#
#   benches/memory.sh                     # both release builds, about 2 min of load plus the builds
#   MESSAGES=500000 benches/memory.sh     # smaller
#
# Knobs (environment):
#   BASELINE_REV   revision to compare with (default: the one before "Memory
#                  streams keep records in ..." last changed src/store/memory.rs)
#   BASELINE_BIN   a ready baseline binary instead of building BASELINE_REV
#   WEIR_BIN       this tree's binary (default: cargo build --release)
#   MESSAGES       appends per fill (default 2164742: 256 MiB of totalBytes,
#                  which counts 24 bytes per message on top of its payload)
#   PAYLOAD        bytes per message (100)
#   CYCLES         fill + delete rounds (2)
#   BENCH_DIR      work folder (target/bench-memory)
#
# Both servers are loaded by this tree's `weir-bench load`, so only the
# server differs. The table is also left in $BENCH_DIR/results.md.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
BENCH_DIR=${BENCH_DIR:-$repo/target/bench-memory}
MESSAGES=${MESSAGES:-2164742}
PAYLOAD=${PAYLOAD:-100}
CYCLES=${CYCLES:-2}
mkdir -p "$BENCH_DIR"

if [ -z "${WEIR_BIN:-}" ]; then
    (cd "$repo" && cargo build --release --quiet)
    WEIR_BIN=$repo/target/release/weir
fi

if [ -z "${BASELINE_BIN:-}" ]; then
    if [ -z "${BASELINE_REV:-}" ]; then
        change=$(git -C "$repo" log -1 --format=%H \
            --grep='^Memory streams keep records in' -- src/store/memory.rs)
        [ -n "$change" ] || { echo "memory.sh: set BASELINE_REV" >&2; exit 1; }
        BASELINE_REV=$change~1
    fi
    rev=$(git -C "$repo" rev-parse --short "$BASELINE_REV")
    src=$BENCH_DIR/baseline-$rev
    if [ ! -x "$src/target/release/weir" ]; then
        rm -rf "$src" && mkdir -p "$src"
        git -C "$repo" archive "$BASELINE_REV" | tar -x -C "$src"
        echo "memory.sh: building baseline $rev in $src" >&2
        (cd "$src" && CARGO_TARGET_DIR=$src/target cargo build --release --quiet)
    fi
    BASELINE_BIN=$src/target/release/weir
    baseline_name="baseline $rev"
else
    baseline_name="baseline $BASELINE_BIN"
fi

current_rev=$(git -C "$repo" rev-parse --short HEAD)
if [ -n "$(git -C "$repo" status --porcelain -- src Cargo.toml Cargo.lock)" ]; then
    current_rev="$current_rev+changes"
fi

echo "memory.sh: $MESSAGES x $PAYLOAD B per fill, $CYCLES cycles" >&2
for which in baseline current; do
    if [ $which = baseline ]; then bin=$BASELINE_BIN; else bin=$WEIR_BIN; fi
    rm -rf "$BENCH_DIR/$which"
    python3 "$here/memory_helper.py" run "$bin" "$(dirname "$WEIR_BIN")/weir-bench" "$BENCH_DIR/$which" \
        "$MESSAGES" "$PAYLOAD" "$CYCLES" >"$BENCH_DIR/$which.txt"
    rm -rf "$BENCH_DIR/$which/store"
done

{
    echo "Memory stream RSS: $baseline_name vs this build ($current_rev);"
    echo "$MESSAGES x $PAYLOAD B appends per fill, $(nproc) cores, $(date -u +%Y-%m-%d)."
    echo
    python3 "$here/memory_helper.py" table "$BENCH_DIR/baseline.txt" "$BENCH_DIR/current.txt"
} | tee "$BENCH_DIR/results.md"
