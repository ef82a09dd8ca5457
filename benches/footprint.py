#!/usr/bin/env python3
"""Footprint of one weir binary: its size, its RSS when idle, and how long it
takes from exec to the first accepted TCP connection.

    benches/footprint.py [WEIR_BIN] [--runs 10] [--idle 3]   -> markdown table

WEIR_BIN defaults to target/release/weir. Each start gets its own empty
store in a temporary folder, `STREAM_MANAGER_AUTHENTICATE_CLIENT=false` and
`LOG_LEVEL=WARN`, and nothing else of the caller's STREAM_MANAGER_* / WEIR_*
environment.

* size: the file as built, and a stripped copy of it (`strip` on a copy in
  the temporary folder; the same number when the build strips already).
* RSS idle: started on port 0, VmRSS read from /proc/<pid>/status `--idle`
  seconds after its `weir listening on` line.
* cold start: a free port chosen here, the binary spawned with it, then
  `connect()` to 127.0.0.1:<port> retried with no pause until one
  succeeds; the time from just before the spawn to that connect. Median,
  minimum and maximum of `--runs` starts. The page cache holds the binary
  after the first run, so this is a warm-cache start of an empty store
  (BENCHMARKS.md section 3 row 4 measures starts over a 1 GiB store).

Every process it starts is stopped by its pid.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from procs import resident_kib, stop


def clean_env(store: str, port: int) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("STREAM_MANAGER_") or k.startswith("WEIR_") or k in ("LOG_LEVEL", "RUST_LOG"))
    }
    env.update(
        STREAM_MANAGER_SERVER_PORT=str(port),
        STREAM_MANAGER_STORE_ROOT_DIR=store,
        STREAM_MANAGER_AUTHENTICATE_CLIENT="false",
        LOG_LEVEL="WARN",
    )
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sizes(binary: str, tmp: str) -> tuple[int, int]:
    built = os.path.getsize(binary)
    copy = os.path.join(tmp, "weir-stripped")
    shutil.copyfile(binary, copy)
    subprocess.run(["strip", copy], check=True)
    return built, os.path.getsize(copy)


def rss_idle(binary: str, tmp: str, idle: float) -> int:
    store = tempfile.mkdtemp(dir=tmp)
    log_path = os.path.join(tmp, "rss.log")
    env = clean_env(store, 0)
    # INFO here: the readiness line is what says weir is up.
    env["LOG_LEVEL"] = "INFO"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in open(log_path).read():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("weir did not start:\n" + open(log_path).read())
            time.sleep(0.01)
        time.sleep(idle)
        return resident_kib(proc.pid)
    finally:
        stop(proc)


def cold_start(binary: str, tmp: str) -> float:
    store = tempfile.mkdtemp(dir=tmp)
    port = free_port()
    env = clean_env(store, port)
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return time.perf_counter() - start
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(f"weir exited with {proc.returncode} before accepting")
                if time.perf_counter() - start > 30:
                    raise RuntimeError("no connection accepted in 30 s")
    finally:
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary", nargs="?", default="target/release/weir")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=3.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="weir-footprint-") as tmp:
        built, stripped = sizes(args.binary, tmp)
        rss = rss_idle(args.binary, tmp, args.idle)
        starts = [cold_start(args.binary, tmp) for _ in range(args.runs)]
    ms = [s * 1000 for s in starts]
    print(f"binary: {args.binary}")
    print()
    print("| figure | weir |")
    print("|---|---:|")
    print(f"| binary as built | {built:,} bytes ({built / 2**20:.1f} MiB) |")
    print(f"| binary stripped | {stripped:,} bytes ({stripped / 2**20:.1f} MiB) |")
    print(f"| RSS idle ({args.idle:g} s after ready) | {rss:,} KiB ({rss / 1024:.1f} MiB) |")
    print(
        f"| exec to first accepted connection, median of {args.runs} | {statistics.median(ms):.1f} ms "
        f"(min {min(ms):.1f}, max {max(ms):.1f}) |"
    )
    print()
    print("runs (ms): " + ", ".join(f"{m:.1f}" for m in ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
