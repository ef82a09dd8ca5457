#!/usr/bin/env bash
# Storage benchmarks of weir's File streams, side by side in one run with
# Redis Streams (Debian's redis-server) at matching durability, and with the
# disk's own sequential write. See benches/README.md for what each row
# measures and why the pairs match.
#
#   benches/storage.sh                 # everything, about 70 s on 2 cores plus the build
#   MESSAGES=200000 benches/storage.sh # smaller
#
# Sizes and knobs (environment):
#   WEIR_BIN          weir binary (default: cargo build --release, target/release/weir)
#   WEIR_BENCH_BIN    weir-bench binary (default: the one next to WEIR_BIN)
#   BENCH_DIR         work folder for weir's store, redis's AOF and dd's file
#                     (default target/bench-storage; must be the real disk, not tmpfs)
#   CONNECTIONS, IN_FLIGHT   many-in-flight appends (default 50 x 16)
#   MESSAGES          100 B appends for the no-flush pair, the reads and RSS (1000000)
#   FLUSH_MESSAGES    appends for the flushOnWrite / appendfsync always pair (200000)
#   CONC_MESSAGES     appends for each 64-appender run (100000)
#   SINGLE_MESSAGES   appends for the single-appender runs (2000)
#   READ_REQUESTS     XRANGE ... COUNT 100 requests (50000)
#   BIG_MESSAGES, BIG_IN_FLIGHT   8 MiB appends per run and in flight (64, 4)
#   STARTUP_BYTES, STARTUP_PAYLOAD   store size and message size for start-up (1 GiB, 64 KiB)
#   STARTUP_RUNS      start-ups timed, median reported (5)
#   COLD_CACHE        1: also time start-ups after dropping the page cache
#                     (default 1 when /proc/sys/vm/drop_caches is writable)
#   REPEATS           runs of each flushOnWrite / appendfsync always pair, median kept (3)
#   SKIP_NULL         1: skip the client-ceiling run against `weir-bench null-server`
#   REDIS_EXTRA       more redis-server options, e.g. "--auto-aof-rewrite-percentage 0"
#                     (by default Redis rewrites its AOF in the background once it
#                     passes 64 MB, as it does in production; the 1 M run triggers it)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
helper=("python3" "$here/storage_helper.py")

CONNECTIONS=${CONNECTIONS:-50}
IN_FLIGHT=${IN_FLIGHT:-16}
MESSAGES=${MESSAGES:-1000000}
FLUSH_MESSAGES=${FLUSH_MESSAGES:-200000}
CONC_MESSAGES=${CONC_MESSAGES:-100000}
SINGLE_MESSAGES=${SINGLE_MESSAGES:-2000}
READ_REQUESTS=${READ_REQUESTS:-50000}
BIG_MESSAGES=${BIG_MESSAGES:-64}
BIG_IN_FLIGHT=${BIG_IN_FLIGHT:-4}
STARTUP_BYTES=${STARTUP_BYTES:-1073741824}
STARTUP_PAYLOAD=${STARTUP_PAYLOAD:-65536}
STARTUP_RUNS=${STARTUP_RUNS:-5}
SKIP_NULL=${SKIP_NULL:-0}
REPEATS=${REPEATS:-3}
REDIS_EXTRA=${REDIS_EXTRA:-}
if [[ -z ${COLD_CACHE:-} ]]; then
    if [[ -w /proc/sys/vm/drop_caches ]] && (echo 1 >/proc/sys/vm/drop_caches) 2>/dev/null; then
        COLD_CACHE=1
    else
        COLD_CACHE=0
    fi
fi
BENCH_DIR=${BENCH_DIR:-$repo/target/bench-storage}
PAYLOAD=100
BIG_PAYLOAD=$((8 * 1024 * 1024))
VALUE=$(printf 'x%.0s' $(seq "$PAYLOAD"))

script_started=$(date +%s.%N)
log() { printf '\n== %s\n' "$*" >&2; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(date +%s.%N)"; }

# --- prerequisites ------------------------------------------------------------
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null \
    || ! command -v redis-cli >/dev/null; then
    log "installing Debian's redis-server and redis-tools"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq redis-server redis-tools >/dev/null
fi
if [[ -z ${WEIR_BIN:-} ]]; then
    log "cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
    WEIR_BIN=$repo/target/release/weir
fi
# the load generator and the null server: the weir-bench binary of the same build
WEIR_BENCH_BIN=${WEIR_BENCH_BIN:-$(dirname "$WEIR_BIN")/weir-bench}

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
fstype=$(df --output=fstype "$BENCH_DIR" | tail -1 | tr -d ' ')
if [[ $fstype == tmpfs || $fstype == ramfs ]]; then
    echo "BENCH_DIR $BENCH_DIR is on $fstype: put it on a real disk" >&2
    exit 1
fi
results=$BENCH_DIR/results.tsv
: >"$results"
: >"$BENCH_DIR/runs.txt"
row() { local IFS=$'\t'; echo "$*" >>"$results"; }

# --- processes this script started (stopped on exit, by pid) ----------------
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

weir_pid=
weir_addr=
start_weir() { # store-dir log
    NO_COLOR=1 STREAM_MANAGER_SERVER_PORT=0 STREAM_MANAGER_STORE_ROOT_DIR=$1 \
        STREAM_MANAGER_AUTHENTICATE_CLIENT=false "$WEIR_BIN" 2>"$2" &
    weir_pid=$!
    pids+=("$weir_pid")
    weir_addr=$("${helper[@]}" wait-ready "$2" 10)
    sample_server "$weir_pid" "$2.cpu"
}
sample_server() { # pid file
    "${helper[@]}" cpu-sample "$1" "$2" &
    pids+=("$!")
    server_cpu_file=$2
}
stop_pid() {
    kill -TERM "$1"
    wait "$1" || true
}
# Percent of all CPUs busy over one second.
cpu_busy() {
    local a b
    a=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
        busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%.0f", 100 * busy / (busy + idle) }'
}
# CPU seconds (user + system) a process has used so far.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat"; }
# Microseconds of CPU per message between two cpu_s readings.
us_per() { python3 -c "import sys; a, b, n = map(float, sys.argv[1:]); print(f'{(b - a) / n * 1e6:.2f}')" "$@"; }
# read + write system calls a process has made so far, and a ratio.
io_calls() { awk '$1 == "syscr:" || $1 == "syscw:" { n += $2 } END { print n }' "/proc/$1/io"; }
per() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.3f}')" "$@"; }
rss_mib() { awk -v k="$2:" '$1 == k { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

redis_pid=
redis_port=
start_redis() { # name appendfsync
    local dir=$BENCH_DIR/redis-$1
    mkdir -p "$dir"
    redis_port=$("${helper[@]}" freeport)
    # shellcheck disable=SC2086 # REDIS_EXTRA is a list of options
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$dir" --save "" \
        --appendonly yes --appendfsync "$2" --daemonize no --logfile "$dir/redis.log" $REDIS_EXTRA &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 200); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return
        sleep 0.05
    done
    echo "redis-server did not start (see $dir/redis.log)" >&2
    exit 1
}

# weir-bench load; prints its output, sets append_rate, read_rate, and
# client_cpu_us / server_cpu_us: CPU microseconds per append of the load
# generator and of the server (server_cpu_file) during the append phase. The
# append phase is taken as (appends / append_rate) seconds from the start,
# read off 10 ms samples of /proc/<pid>/stat; it also holds the stream's
# delete and create, which is small beside the appends.
append_rate=
read_rate=
client_cpu_us=
server_cpu_us=
server_cpu_file=
weir_load() { # connections in-flight messages payload [extra args...]
    local out=$BENCH_DIR/load.out cpu=$BENCH_DIR/load.cpu t0 t1 total cpid spid
    total=$(($3 / $1 * $1))
    t0=$("${helper[@]}" now)
    "$WEIR_BENCH_BIN" load --addr "$weir_addr" --connections "$1" --in-flight "$2" \
        --messages "$3" --payload "$4" "${@:5}" >"$out" &
    cpid=$!
    "${helper[@]}" cpu-sample "$cpid" "$cpu" &
    spid=$!
    wait "$cpid"
    wait "$spid"
    cat "$out" >&2
    append_rate=$(sed -n 's/^append: \([0-9]*\) appends\/s.*/\1/p' "$out")
    read_rate=$(sed -n 's/^read: .*: \([0-9]*\) messages\/s.*/\1/p' "$out")
    t1=$(python3 -c "import sys; print(float(sys.argv[1]) + float(sys.argv[2]) / float(sys.argv[3]))" \
        "$t0" "$total" "$append_rate")
    client_cpu_us=$(us_per 0 "$("${helper[@]}" cpu-between "$cpu" "$t0" "$t1")" "$total")
    server_cpu_us=$(us_per 0 "$("${helper[@]}" cpu-between "$server_cpu_file" "$t0" "$t1")" "$total")
    server_calls=$(per "$("${helper[@]}" cpu-between "$server_cpu_file" "$t0" "$t1" 2)" "$total")
}

# redis-benchmark with a custom command; prints requests/s, leaves its CPU
# seconds (user + system) in $BENCH_DIR/rb.cpu.
redis_rps() { # clients pipeline requests [-r N] command...
    local c=$1 p=$2 n=$3
    shift 3
    local out TIMEFORMAT='%U %S'
    { time out=$(redis-benchmark -h 127.0.0.1 -p "$redis_port" -c "$c" -P "$p" -n "$n" --csv "$@"); } \
        2>"$BENCH_DIR/rb.time"
    awk '{ print $1 + $2 }' "$BENCH_DIR/rb.time" >"$BENCH_DIR/rb.cpu"
    echo "redis-benchmark -c $c -P $p -n $n $1: $(tail -1 <<<"$out" | cut -d, -f2-)" >&2
    tail -1 <<<"$out" | awk -F'","' '{ printf "%.0f", $2 }'
}
xadd() { redis_rps "$1" "$2" "$3" XADD "$4" '*' p "$VALUE"; }

{
    echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
    echo "disk: $BENCH_DIR on $(df --output=source "$BENCH_DIR" | tail -1) ($fstype)"
    echo "redis: $(redis-server --version | cut -d' ' -f1-3)"
    echo "weir: $WEIR_BIN ($("$WEIR_BIN" --version), tree $(git -C "$repo" describe --always --dirty 2>/dev/null || echo '?'))"
    echo "CPU busy in the second before the start: $(cpu_busy)% (anything else running lowers every number)"
} | tee "$BENCH_DIR/machine.txt" >&2

concurrency="c${CONNECTIONS}×${IN_FLIGHT}"

# --- (0) client ceiling: the load generator against a server that stores nothing
if [[ $SKIP_NULL != 1 ]]; then
    log "client ceiling: weir-bench load against weir-bench null-server"
    "$WEIR_BENCH_BIN" null-server 2>"$BENCH_DIR/null.log" &
    null_pid=$!
    pids+=("$null_pid")
    for _ in $(seq 200); do
        weir_addr=$(sed -n 's/.*listening on \(\S*\).*/\1/p' "$BENCH_DIR/null.log")
        [[ -n $weir_addr ]] && break
        sleep 0.05
    done
    sample_server "$null_pid" "$BENCH_DIR/null.cpu"
    weir_load "$CONNECTIONS" "$IN_FLIGHT" "$MESSAGES" "$PAYLOAD" --read-batch 100
    null_rate=$append_rate
    null_cpu=$server_cpu_us
    stop_pid "$null_pid"
fi

# --- (1a) File (synced every 1 s) vs appendfsync everysec, (2) reads, (5) RSS
log "weir: File without flushOnWrite, $MESSAGES x $PAYLOAD B, $concurrency"
start_weir "$BENCH_DIR/weir-store" "$BENCH_DIR/weir.log"
rss_idle=$(rss_mib "$weir_pid" VmRSS)
weir_load "$CONNECTIONS" "$IN_FLIGHT" "$MESSAGES" "$PAYLOAD" --read-batch 100
weir_everysec=$append_rate
weir_everysec_cpu=$server_cpu_us
weir_everysec_calls=$server_calls
weir_client_cpu=$client_cpu_us
weir_read=$read_rate
rss_1m=$(rss_mib "$weir_pid" VmRSS)
hwm_1m=$(rss_mib "$weir_pid" VmHWM)

log "redis: appendonly yes, appendfsync everysec"
start_redis everysec everysec
cpu0=$(cpu_s "$redis_pid")
calls0=$(io_calls "$redis_pid")
redis_everysec=$(xadd "$CONNECTIONS" "$IN_FLIGHT" "$MESSAGES" xadd)
redis_everysec_calls=$(per $(($(io_calls "$redis_pid") - calls0)) "$MESSAGES")
redis_everysec_cpu=$(us_per "$cpu0" "$(cpu_s "$redis_pid")" "$MESSAGES")
redis_client_cpu=$(us_per 0 "$(cat "$BENCH_DIR/rb.cpu")" "$MESSAGES")
redis_rss=$(rss_mib "$redis_pid" VmRSS)
log "redis: XRANGE COUNT 100 at random starts in a $MESSAGES-entry stream"
"${helper[@]}" resp-xadd rs "$MESSAGES" "$PAYLOAD" | redis-cli -p "$redis_port" --pipe >/dev/null
xrange_rps=$(redis_rps 1 8 "$READ_REQUESTS" -r $((MESSAGES - 100)) XRANGE rs '1-__rand_int__' + COUNT 100)
redis_read=$((xrange_rps * 100))
stop_pid "$redis_pid"

if [[ -n ${null_rate:-} ]]; then
    row 0 "appends/s, 100 B, $concurrency: load generator vs null-server (no storage) — the client ceiling" \
        "$null_rate" "/s" "redis-benchmark XADD everysec -c $CONNECTIONS -P $IN_FLIGHT" "$redis_everysec" ""
fi
row 1a "appends/s, 100 B, $concurrency, File (sync every 1 s)" "$weir_everysec" "/s" \
    "XADD, everysec, -c $CONNECTIONS -P $IN_FLIGHT" "$redis_everysec" "ratio>=1"
row 1a-cpu "server CPU µs per append, row 1a (lower is better)" "$weir_everysec_cpu" "µs" \
    "redis-server, XADD everysec" "$redis_everysec_cpu" ""
if [[ -n ${null_cpu:-} ]]; then
    row 0-cpu "server CPU µs per append, null-server (protocol only, no storage)" "$null_cpu" "µs" \
        "redis-server, XADD everysec" "$redis_everysec_cpu" ""
fi
row 1a-sys "server read+write syscalls per append, row 1a" "$weir_everysec_calls" "" \
    "redis-server, XADD everysec" "$redis_everysec_calls" ""
row 1a-client "client CPU µs per append, row 1a: weir-bench load (lower is better)" "$weir_client_cpu" "µs" \
    "redis-benchmark" "$redis_client_cpu" ""

# --- (1b) flushOnWrite vs appendfsync always -----------------------------------
# Each pair runs REPEATS times, weir and Redis alternating, medians kept:
# short fsync-bound runs vary by tens of percent from one run to the next.
log "weir File + flushOnWrite and redis appendfsync always, alternating, $REPEATS times each"
start_redis always always
declare -A weir_runs redis_runs
for r in $(seq "$REPEATS"); do
    for cfg in "$CONNECTIONS $IN_FLIGHT $FLUSH_MESSAGES" "1 1 $SINGLE_MESSAGES" \
        "4 16 $CONC_MESSAGES" "64 1 $CONC_MESSAGES"; do
        read -r c f n <<<"$cfg"
        weir_load "$c" "$f" "$n" "$PAYLOAD" --flush-on-write --read-batch 100
        weir_runs[$c.$f]+="$append_rate "
        if [[ $c.$f == "$CONNECTIONS.$IN_FLIGHT" ]]; then
            weir_always_cpu=$server_cpu_us
            weir_always_calls=$server_calls
            cpu0=$(cpu_s "$redis_pid")
            calls0=$(io_calls "$redis_pid")
        fi
        rate=$(xadd "$c" "$f" "$n" "s$r.$c.$f")
        redis_runs[$c.$f]+="$rate "
        if [[ $c.$f == "$CONNECTIONS.$IN_FLIGHT" ]]; then
            redis_always_calls=$(per $(($(io_calls "$redis_pid") - calls0)) "$n")
            redis_always_cpu=$(us_per "$cpu0" "$(cpu_s "$redis_pid")" "$n")
        fi
    done
done
stop_pid "$redis_pid"
# shellcheck disable=SC2086 # $1 is a list of numbers
median() { python3 -c "import statistics, sys; print(round(statistics.median(map(float, sys.argv[1:]))))" $1; }
for k in "${!weir_runs[@]}"; do
    echo "flushOnWrite c${k/./×}: weir ${weir_runs[$k]}| redis ${redis_runs[$k]}" >>"$BENCH_DIR/runs.txt"
done
weir_always=$(median "${weir_runs[$CONNECTIONS.$IN_FLIGHT]}")
weir_single=$(median "${weir_runs[1.1]}")
weir_4x16=$(median "${weir_runs[4.16]}")
weir_64x1=$(median "${weir_runs[64.1]}")
redis_always=$(median "${redis_runs[$CONNECTIONS.$IN_FLIGHT]}")
redis_single=$(median "${redis_runs[1.1]}")
redis_4x16=$(median "${redis_runs[4.16]}")
redis_64x1=$(median "${redis_runs[64.1]}")

row 1b "appends/s, 100 B, $concurrency, File + flushOnWrite (1b–1g: median of $REPEATS)" "$weir_always" "/s" \
    "XADD, always, -c $CONNECTIONS -P $IN_FLIGHT" "$redis_always" "ratio>=1"
row 1b-cpu "server CPU µs per append, row 1b (lower is better)" "$weir_always_cpu" "µs" \
    "redis-server, XADD always" "$redis_always_cpu" ""
row 1b-sys "server read+write syscalls per append, row 1b" "$weir_always_calls" "" \
    "redis-server, XADD always" "$redis_always_calls" ""
row 1c "appends/s, flushOnWrite, 1 appender (c1×1)" "$weir_single" "/s" \
    "XADD, always, -c 1 -P 1" "$redis_single" "ratio>=1"
row 1d "appends/s, flushOnWrite, 64 appenders (c4×16)" "$weir_4x16" "/s" \
    "XADD, always, -c 4 -P 16" "$redis_4x16" "ratio>=1"
row 1e "appends/s, flushOnWrite, 64 appenders (c64×1)" "$weir_64x1" "/s" \
    "XADD, always, -c 64 -P 1" "$redis_64x1" "ratio>=1"
row 1f "group commit: flushOnWrite c4×16 vs 1 appender" "$weir_4x16" "/s" \
    "weir flushOnWrite c1×1" "$weir_single" "ratio>=20"
row 1g "group commit: flushOnWrite c64×1 vs 1 appender" "$weir_64x1" "/s" \
    "weir flushOnWrite c1×1" "$weir_single" "ratio>=20"
row 2 "read messages/s, batches of 100, 1 connection × 8 in flight, $MESSAGES stored" "$weir_read" "/s" \
    "XRANGE rs <random> + COUNT 100, -c 1 -P 8 (×100)" "$redis_read" ""

# --- (3) 8 MiB payloads vs the disk's sequential write -------------------------
log "weir: $BIG_MESSAGES x 8 MiB, c1×$BIG_IN_FLIGHT"
weir_load 1 "$BIG_IN_FLIGHT" "$BIG_MESSAGES" "$BIG_PAYLOAD" --read-batch 1
big_plain=$((append_rate * 8))
big_plain_read=$((read_rate * 8))
weir_load 1 "$BIG_IN_FLIGHT" "$BIG_MESSAGES" "$BIG_PAYLOAD" --read-batch 1 --flush-on-write
big_flush=$((append_rate * 8))
hwm_big=$(rss_mib "$weir_pid" VmHWM)
log "dd: $BIG_MESSAGES x 8 MiB"
dd_mibs() { # dd options...
    local out
    out=$(LC_ALL=C dd if=/dev/zero of="$BENCH_DIR/dd.bin" bs=8M count="$BIG_MESSAGES" "$@" 2>&1)
    rm -f "$BENCH_DIR/dd.bin"
    echo "dd bs=8M $*: $(tail -1 <<<"$out")" >&2
    "${helper[@]}" dd-mibs <<<"$out"
}
dd_fdatasync=$(dd_mibs conv=fdatasync)
dd_direct=$(dd_mibs oflag=direct)
row 3a "MiB/s, 8 MiB appends, c1×$BIG_IN_FLIGHT, File (sync every 1 s)" "$big_plain" "MiB/s" \
    "dd bs=8M conv=fdatasync" "$dd_fdatasync" ""
row 3b "MiB/s, 8 MiB appends, c1×$BIG_IN_FLIGHT, File + flushOnWrite" "$big_flush" "MiB/s" \
    "dd bs=8M conv=fdatasync" "$dd_fdatasync" ""
row 3c "MiB/s, 8 MiB appends, c1×$BIG_IN_FLIGHT, File + flushOnWrite" "$big_flush" "MiB/s" \
    "dd bs=8M oflag=direct (no page cache)" "$dd_direct" ""
row 3d "MiB/s, 8 MiB reads, 1 per request, 8 in flight" "$big_plain_read" "MiB/s" "" "" ""

# --- (4) start-up over a 1 GiB store --------------------------------------------
startup_messages=$((STARTUP_BYTES / STARTUP_PAYLOAD))
log "weir: filling the store with $startup_messages x $STARTUP_PAYLOAD B"
weir_load 1 16 "$startup_messages" "$STARTUP_PAYLOAD" --read-batch 16
stop_pid "$weir_pid"
store_bytes=$(du -sb "$BENCH_DIR/weir-store" | cut -f1)
store_files=$(find "$BENCH_DIR/weir-store" -type f | wc -l)
log "weir: start-up over $store_bytes bytes in $store_files files, $STARTUP_RUNS runs"
startup_out=$("${helper[@]}" startup "$WEIR_BIN" "$BENCH_DIR/weir-store" "$STARTUP_RUNS" "$COLD_CACHE")
echo "$startup_out" >&2
warm_ms=$(sed -n 's/^warm_median_ms=//p' <<<"$startup_out")
cold_ms=$(sed -n 's/^cold_median_ms=//p' <<<"$startup_out")
rss_store=$(sed -n 's/^warm_rss_kib=//p' <<<"$startup_out" | awk '{ printf "%.1f", $1 / 1024 }')
store_mib=$((store_bytes / 1048576))
row 4a "start-up ms over a $store_mib MiB store, page cache warm (median of $STARTUP_RUNS)" "$warm_ms" "ms" "" "" "weir<1000"
if [[ -n $cold_ms ]]; then
    row 4b "start-up ms over a $store_mib MiB store, page cache dropped (median of $STARTUP_RUNS)" "$cold_ms" "ms" "" "" "weir<1000"
fi

# --- (5) RSS --------------------------------------------------------------------
row 5a "RSS idle (fresh store)" "$rss_idle" "MiB" "" "" ""
row 5b "RSS after $MESSAGES × 100 B stored (File) and read back; peak $hwm_1m MiB" "$rss_1m" "MiB" \
    "redis-server after $MESSAGES XADD" "$redis_rss" "weir<20"
row 5c "RSS right after start-up over the $store_mib MiB store" "$rss_store" "MiB" "" "" ""
row 5d "peak RSS (VmHWM) after the 8 MiB runs" "$hwm_big" "MiB" "" "" ""

log "results"
cat "$BENCH_DIR/machine.txt"
echo
"${helper[@]}" table "$results" | tee "$BENCH_DIR/results.md"
echo
echo "every flushOnWrite / always run (appends/s):"
sort "$BENCH_DIR/runs.txt"
echo
echo "whole script: $(elapsed "$script_started") s; results in $BENCH_DIR/results.md"
rm -rf "$BENCH_DIR/weir-store" "$BENCH_DIR"/redis-*/appendonlydir
