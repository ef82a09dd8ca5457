#!/usr/bin/env python3
"""Export benchmarks of issue 7, side by side in one run, against kinesalite
on loopback (installed by compat-tests/setup-clients.sh):

  python3 benches/export.py target/release/weir [--rounds 2]

(`weir-bench`, next to the weir binary, drives it.)

1. `weir-bench export`: a backlog drained by weir's exporter next to the
   same SDK calling PutRecords directly (the stand-in's ceiling), and the
   payload rate under STREAM_MANAGER_EXPORTER_MAX_BANDWIDTH next to the cap.
2. `weir-bench load` on a File stream with no exports and with five Kinesis
   exports running, alternating, `--rounds` each: appends/s, p50, p99.
3. RSS of an idle weir with a stream of five exports next to one with a
   stream of none, and the size of the stripped binary.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "compat-tests"))
import cloud  # noqa: E402
from procs import resident_kib, stop, wait_listening  # noqa: E402


def env_for(kinesis):
    env = dict(os.environ)
    env.update({
        "AWS_ENDPOINT_URL_KINESIS": kinesis.endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "RUST_LOG": "warn",
    })
    return env


def bench_of(weir):
    """The weir-bench binary of the same build as `weir`."""
    return os.path.join(os.path.dirname(weir), "weir-bench")


def run(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    return out.stdout


def idle_rss(weir, env, exports):
    """RSS (KiB) of a weir binary idle after a stream with `exports` exports."""
    tmp = tempfile.mkdtemp(prefix="weir-bench-rss-")
    e = dict(env, STREAM_MANAGER_SERVER_PORT="0", STREAM_MANAGER_STORE_ROOT_DIR=tmp,
             STREAM_MANAGER_AUTHENTICATE_CLIENT="false", RUST_LOG="info")
    proc = subprocess.Popen([weir], env=e, stderr=subprocess.PIPE, text=True)
    try:
        addr = wait_listening(proc)
        run([bench_of(weir), "load", "--addr", addr, "--connections", "1", "--messages", "10",
             "--exports", str(exports), "--kinesis-stream", "weir-bench-idle"], env)
        time.sleep(3)
        return resident_kib(proc.pid)
    finally:
        stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weir")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    weir = os.path.abspath(args.weir)
    with cloud.Kinesalite() as kinesis:
        kc = kinesis.kinesis()
        kc.create_stream("weir-bench")
        kc.create_stream("weir-bench-idle")
        env = env_for(kinesis)
        print("== export throughput and bandwidth (weir-bench export)")
        print(run([bench_of(weir), "export", "--records", "20000", "--max-bandwidth-kbps", "800",
                   "--capped-records", "15000"], env), end="")
        print("== appends with exports off and with five Kinesis exports (weir-bench load, File)")
        for r in range(args.rounds):
            for exports in (0, 5):
                out = run([bench_of(weir), "load", "--messages", str(args.messages),
                           "--exports", str(exports), "--kinesis-stream", "weir-bench"], env)
                line = next((l for l in out.splitlines() if "appends/s" in l), out.strip())
                print(f"round {r + 1} exports={exports}: {line}")
        print("== idle RSS")
        for exports in (0, 5):
            print(f"exports={exports}: {idle_rss(weir, env, exports) / 1024:.1f} MiB")
    stripped = tempfile.mktemp(prefix="weir-stripped-")
    shutil.copy(weir, stripped)
    subprocess.run(["strip", stripped], check=True)
    print(f"== binary: {os.path.getsize(weir) / 1e6:.2f} MB as built, "
          f"{os.path.getsize(stripped) / 1e6:.2f} MB stripped")
    os.unlink(stripped)


if __name__ == "__main__":
    main()
