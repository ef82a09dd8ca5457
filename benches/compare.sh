#!/usr/bin/env bash
# Append and read rates of two weir builds side by side, in one run:
#
#   benches/compare.sh BASELINE_BIN NEW_BIN [ROUNDS]
#
# Each round starts each binary in turn (port 0, auth off, a fresh store in
# target/bench-compare/, WEIR_SYNC_INTERVAL_MS=1000), loads it with the NEW
# build's `weir-bench load --addr` (the `weir-bench` binary next to NEW_BIN,
# or WEIR_BENCH_BIN; the same client for both), and stops it
# by pid. Three loads per server: File 4x64 without flush, File 4x64 with
# flushOnWrite, Memory 4x64. The binaries alternate within each round so
# that machine noise falls on both. Prints every run and the medians as a
# markdown table.
set -euo pipefail
base="${1:?baseline binary}"
new="${2:?new binary}"
rounds="${3:-5}"
bench="${WEIR_BENCH_BIN:-$(dirname "$new")/weir-bench}"
[ -x "$bench" ] || { echo "compare: no load generator at $bench (cargo build --release builds it)" >&2; exit 1; }
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$root/target/bench-compare"
rm -rf "$work"
mkdir -p "$work"
pid=""
cleanup() { if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi; }
trap cleanup EXIT

start() { # binary, label -> sets pid, port
  local store="$work/store-$2"
  rm -rf "$store"
  : > "$work/$2.log"
  STREAM_MANAGER_SERVER_PORT=0 STREAM_MANAGER_AUTHENTICATE_CLIENT=false \
    STREAM_MANAGER_STORE_ROOT_DIR="$store" LOG_LEVEL=INFO "$1" 2>>"$work/$2.log" &
  pid=$!
  for _ in $(seq 1 200); do
    port="$(grep -o 'weir listening on 127.0.0.1:[0-9]*' "$work/$2.log" | head -1 | sed 's/.*://')" || true
    [ -n "$port" ] && return 0
    sleep 0.05
  done
  echo "compare: $1 did not start" >&2
  exit 1
}

stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

results="$work/runs.tsv"
: > "$results"
for round in $(seq 1 "$rounds"); do
  for label in base new; do
    bin="$base"; [ "$label" = new ] && bin="$new"
    for load in file file-flush memory; do
      start "$bin" "$label"
      args=(--addr "127.0.0.1:$port")
      case "$load" in
        file) args+=(--messages 200000) ;;
        file-flush) args+=(--flush-on-write --messages 100000) ;;
        memory) args+=(--persistence memory --messages 200000) ;;
      esac
      out="$("$bench" load "${args[@]}" 2>&1)" || { echo "$out" >&2; exit 1; }
      stop
      rate="$(sed -n 's/^append: \([0-9]*\) appends\/s.*/\1/p' <<<"$out")"
      p50="$(sed -n 's/.*p50 \([0-9]*\) us.*/\1/p' <<<"$out")"
      p99="$(sed -n 's/.*p99 \([0-9]*\) us.*/\1/p' <<<"$out")"
      read="$(sed -n 's/^read: .*: \([0-9]*\) messages\/s.*/\1/p' <<<"$out")"
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" "$load" "$rate" "$p50" "$p99" "$read" >> "$results"
      printf 'round %s %-4s %-10s appends/s %8s p50 %4s us p99 %5s us read %8s msg/s\n' \
        "$round" "$label" "$load" "$rate" "$p50" "$p99" "$read"
    done
  done
done

python3 - "$results" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
def med(label, load, col):
    return statistics.median(int(r[col]) for r in rows if r[1] == label and r[2] == load)
print()
print("| load (4 conns x 64, 100 B) | metric | baseline | new | new / baseline |")
print("|---|---|---:|---:|---:|")
for load in ("file", "file-flush", "memory"):
    for col, name in ((3, "appends/s"), (4, "p50 us"), (5, "p99 us"), (6, "read msg/s")):
        b, n = med("base", load, col), med("new", load, col)
        print(f"| {load} | {name} | {b:,.0f} | {n:,.0f} | {n / b:.2f} |")
EOF
