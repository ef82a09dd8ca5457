#!/usr/bin/env python3
"""Benchmark: the real Python client (greengrasssdk 1.5.0, Python 3.7) against
weir and against `weir-bench null-server` (same networking code, stores
nothing), alternating in one run so both see the same machine state.

    compat-tests/bench/python_client.py [--rounds 5] [--appends 5000]

Uses WEIR_BIN or target/release/weir (build it with `cargo build --release`).
Prints each round and the medians, and the weir/null ratio.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
READY = re.compile(r"listening on ([0-9.]+):([0-9]+)")


def start(cmd, env):
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        m = READY.search(line)
        if m:
            # keep draining so the server never blocks on a full pipe
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(2))
    raise SystemExit(f"{cmd} exited before listening")


PIN = (["taskset", "-c", "1"], ["taskset", "-c", "0"]) if shutil.which("taskset") and os.cpu_count() >= 2 else ([], [])


def run_round(kind, binary, client_python, appends):
    with tempfile.TemporaryDirectory() as store:
        env = dict(os.environ, STREAM_MANAGER_SERVER_PORT="0", STREAM_MANAGER_STORE_ROOT_DIR=store,
                   STREAM_MANAGER_AUTHENTICATE_CLIENT="false", LOG_LEVEL="INFO")
        cmd = [binary] if kind == "weir" else [os.path.join(os.path.dirname(binary), "weir-bench"), "null-server"]
        # Pinned, the same way for both servers: the client (whose two
        # threads hand every call to each other) on CPU 0, the server on CPU 1.
        # Unpinned, the scheduler's placement swings the client's rate by 2x.
        server_pin, client_pin = PIN
        cmd = server_pin + cmd
        proc, port = start(cmd, env)
        try:
            out = subprocess.run(client_pin + [client_python, os.path.join(HERE, "py_client_bench.py"), str(appends)],
                                 env=dict(env, STREAM_MANAGER_SERVER_PORT=str(port)), capture_output=True,
                                 text=True, timeout=600)
            if out.returncode != 0:
                raise SystemExit(f"client failed against {kind}:\n{out.stderr}")
            return json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--appends", type=int, default=5000)
    args = ap.parse_args()
    binary = os.environ.get("WEIR_BIN") or os.path.join(ROOT, "target", "release", "weir")
    cache = subprocess.run([os.path.join(ROOT, "compat-tests", "setup-clients.sh")], capture_output=True,
                           text=True, check=True).stdout.strip().splitlines()[-1]
    client_python = os.path.join(cache, "py37-greengrasssdk-1.5.0", "bin", "python")
    results = {"weir": [], "null": []}
    for r in range(args.rounds):
        for kind in ("null", "weir"):
            res = run_round(kind, binary, client_python, args.appends)
            results[kind].append(res)
            print(f"round {r + 1} {kind:4}: append {res['append_per_s']:8.0f}/s  read {res['read_msgs_per_s']:8.0f} msg/s",
                  flush=True)
    print()
    print("| greengrasssdk 1.5.0, 100-B messages | store-nothing server | weir | weir / baseline |")
    print("|---|---|---|---|")
    for key, label in (("append_per_s", "append_message, one thread (/s)"),
                       ("read_msgs_per_s", "read_messages max 100 (messages/s)")):
        base = statistics.median(x[key] for x in results["null"])
        weir = statistics.median(x[key] for x in results["weir"])
        print(f"| {label} | {base:,.0f} | {weir:,.0f} | {weir / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
