#!/usr/bin/env bash
# weir compatibility tests: real, unmodified stream manager client SDKs against weir.
#
#   compat-tests/run.sh            # uses $WEIR_BIN, else target/debug/weir (not built here)
#   compat-tests/run.sh test_full_disk test_conformance   # only these
#
# 1. setup-clients.sh installs the SDKs (idempotent) into target/compat-cache/
#    (override with WEIR_COMPAT_CACHE).
# 2. Runs, each against its own weir (port 0, fresh temp store, auth on):
#      test_gg110.py        Greengrass 1.10 sample-style writer/reader (greengrasssdk 1.5.0, Python 3.7)
#      test_conformance.py  every operation/status/edge case with all four SDKs
#      test_hostile.py      malformed input on raw sockets while an SDK client keeps working
#      test_crash.py        SIGKILL while a client appends (flushOnWrite on/off); restart on the
#                           same store: every acknowledged message is there, sequence numbers go on
#                           (seeded: WEIR_CRASH_SEED=<printed seed> repeats a run)
#      test_restart.py      File streams of every kind across SIGTERM restarts with three Python SDKs
#                           (includes a one-minute TTL wait), and conformance.py with a restart
#                           between every two cases
#      test_full_disk.py    the store on a 4 MiB tmpfs it mounts (as root, else in an unshare -rm namespace):
#                           appends until the disk is full fail with "No space left", everything
#                           acknowledged reads back, appends continue once space is freed, also
#                           across SIGTERM restarts (one of them on the full disk)
#      test_cloud_standins.py the exporters' cloud stand-ins of cloud.py (moto, kinesalite, the
#                           IoT Analytics stand-in, the fault proxy) checked with the real boto3:
#                           every fault as a client sees it, partial failures in order, read_all
#                           returns what was put (needs no weir; the weir check above still applies)
#      test_export.py       exports end to end: SDK clients append, weir exports through the AWS SDK for
#                           Rust to kinesalite, moto and the IoT Analytics stand-in (often through the
#                           fault proxy), and every record is checked where it arrived: the GG 1.10
#                           writer's Kinesis export across a SIGTERM restart, faults, SIGKILL and SIGTERM
#                           with a request in flight, disabled/startSequenceNumber, refused records,
#                           request limits, retention, IoT Analytics (and its redirect to Kinesis), bandwidth
#                           priority
#      test_ipc_auth.py     client tokens validated by the Greengrass nucleus over its IPC socket: the
#                           nucleus stand-in (nucleus_ipc.py) checked with the real awsiotsdk IPC client,
#                           then weir against it with the stream_manager SDK (valid, invalid, held,
#                           silent, down, restarted, lite); readiness (UpdateState RUNNING once the
#                           port takes connections) and telemetry (PutComponentMetric deltas; lite
#                           refuses it once) against the stand-in, checked with awsiotsdk first
#      test_packaging.py    the Greengrass v2 component (build-component.sh; the recipe parsed with
#                           PyYAML and checked, each manifest's startup run as its nucleus would,
#                           serving stream_manager 1.1.2), the Greengrass v1 java wrapper (weir for
#                           the stream manager's command line, the real JVM otherwise), sd_notify
#      test_debian.py       the .deb (build-deb.sh): dpkg -i, the installed weir started as its unit
#                           would (user weir, env file, NOTIFY_SOCKET) serving a client, dpkg -r, -P
#                           (as root; installs and purges the package and its user on this machine)
# Exits non-zero if anything failed. Under CI=true a skip is a failure too: a test whose
# output has a SKIP line, a summary with skip=<n> or "<n> skipped" (n > 0) fails.
# Needs: pyenv Python 3.7.16 + 3.11.7, node, npm.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [ "${CI:-}" = "true" ] && [ -n "${WEIR_RESTART_SKIP_TTL:-}" ]; then
  echo "compat: WEIR_RESTART_SKIP_TTL skips part of test_restart.py; under CI=true a skip is a failure" >&2
  exit 1
fi

cache="$("$here/setup-clients.sh")" || { echo "compat: setup-clients.sh failed" >&2; exit 1; }
export WEIR_COMPAT_CACHE="$cache"

weir="${WEIR_BIN:-$here/../target/debug/weir}"
if [ ! -x "$weir" ]; then
  echo "compat: weir binary not found at $weir (run 'cargo build' or set WEIR_BIN)" >&2
  exit 1
fi
export WEIR_BIN="$(cd "$(dirname "$weir")" && pwd)/$(basename "$weir")"
echo "compat: weir binary $WEIR_BIN"
echo "compat: SDK cache $WEIR_COMPAT_CACHE"

# The drivers are stdlib-only Python 3.11 (the hostile test also needs cbor2 and
# the stream_manager SDK, test_packaging PyYAML), so they all run with the
# stream-manager venv's Python.
py="$cache/py311-stream-manager-1.1.2/bin/python"

declare -a names=() results=()
start_all=$SECONDS
all_tests=(test_gg110 test_conformance test_hostile test_crash test_restart test_full_disk test_cloud_standins
           test_export test_ipc_auth test_packaging test_debian)
if [ $# -gt 0 ]; then selected=("$@"); else selected=("${all_tests[@]}"); fi
for t in "${selected[@]}"; do
  if [ ! -f "$here/$t.py" ]; then echo "compat: no test $t (one of: ${all_tests[*]})" >&2; exit 1; fi
  echo
  echo "======== $t"
  start=$SECONDS
  out="$(mktemp)"
  (cd "$here" && "$py" "$t.py") 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  # Skip markers as the drivers print them: "SKIP <case>", "skip=<n>", "<n> skipped".
  skips="$(grep -E '(^|[] ])SKIP |skip=[1-9]|(^|[^0-9])[1-9][0-9]* skipped' "$out" || true)"
  rm -f "$out"
  names+=("$t")
  if [ $rc -ne 0 ]; then
    results+=("FAIL exit $rc ($((SECONDS - start))s)")
  elif [ -n "$skips" ] && [ "${CI:-}" = "true" ]; then
    results+=("FAIL: skipped under CI=true ($((SECONDS - start))s): $(head -1 <<<"$skips")")
  elif [ -n "$skips" ]; then
    results+=("PASS with skips ($((SECONDS - start))s): $(head -1 <<<"$skips")")
  else
    results+=("PASS ($((SECONDS - start))s)")
  fi
done

echo
echo "======== compat summary ($((SECONDS - start_all))s)"
failed=0
for i in "${!names[@]}"; do
  printf '  %-18s %s\n' "${names[$i]}" "${results[$i]}"
  case "${results[$i]}" in PASS*) ;; *) failed=1 ;; esac
done
if [ $failed -ne 0 ]; then
  echo "compat: FAILED"
  exit 1
fi
echo "compat: all passed"
