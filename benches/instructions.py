#!/usr/bin/env python3
"""CPU instructions the weir server executes per append, for two builds side
by side: a measure that machine noise does not move.

  python3 benches/instructions.py BASE_DIR NEW_DIR [--messages 20000] [--repeats 2]
  python3 benches/instructions.py BASE_DIR NEW_DIR --export [--records 10000]

Each DIR holds a `weir` and a `weir-bench` of one build (`target/release`
of a checkout, say). Every run starts the DIR's `weir` under valgrind's
callgrind (port 0, auth off, a fresh store, WEIR_SYNC_INTERVAL_MS=1000),
loads it with NEW_DIR's `weir-bench load --addr` (natively, the same client
for both), stops it with SIGTERM and reads the instruction total callgrind
wrote. A run with no load gives the fixed cost of starting and stopping,
which is subtracted. The loads are those of benches/compare.sh: File 4 x 64
in flight, File with flushOnWrite, Memory; each writes `--messages`
100-byte messages and reads them back.

With `--export`, each DIR's own `weir-bench export --records N` runs under
callgrind instead, against kinesalite on loopback (compat-tests/cloud.py;
installed by compat-tests/setup-clients.sh): the AWS SDK calling PutRecords
for N records, then weir's exporter draining N records from a `File`
stream, in one process. Its instructions per record are the CPU cost of
the export stack (serialization, signing, HTTP), which a kinesalite on the
same two cores hides from the records/s of benches/export.py.

Why: wall-clock rates on this 2-core machine move by 5-15 % between
identical runs (BENCHMARKS.md), more than a build setting costs. The
instruction count of the same work is repeatable (callgrind counts, it does
not sample), so a change in the server's hot path shows as a change in
instructions per append. It does not see cache or branch effects; the
wall-clock comparison (benches/compare.sh) stays beside it.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from procs import stop, wait_listening  # noqa: E402
from export import env_for  # noqa: E402

LOADS = {
    "file": ["--connections", "4", "--in-flight", "64"],
    "file-flush": ["--connections", "4", "--in-flight", "64", "--flush-on-write"],
    "memory": ["--connections", "4", "--in-flight", "64", "--persistence", "memory"],
}


def server_instructions(weir, bench, load_args, messages, work):
    """Instructions the server ran over its whole life, with the load if any."""
    store = tempfile.mkdtemp(prefix="store-", dir=work)
    out_file = os.path.join(work, "callgrind.out")
    env = dict(os.environ, STREAM_MANAGER_SERVER_PORT="0", STREAM_MANAGER_STORE_ROOT_DIR=store,
               STREAM_MANAGER_AUTHENTICATE_CLIENT="false", WEIR_SYNC_INTERVAL_MS="1000",
               LOG_LEVEL="INFO")
    env.pop("RUST_LOG", None)
    proc = subprocess.Popen(under_callgrind(out_file, [weir]), env=env, stderr=subprocess.PIPE, text=True)
    try:
        addr = wait_listening(proc)
        if load_args is not None:
            run = subprocess.run([bench, "load", "--addr", addr, "--messages", str(messages)] + load_args,
                                 capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise RuntimeError(f"weir-bench load: {run.stderr[-2000:]}")
    finally:
        stop(proc, timeout=300)
    total = callgrind_total(out_file)
    os.unlink(out_file)
    shutil.rmtree(store, ignore_errors=True)
    return total


def export_instructions(bench, records, kinesis, work):
    """Instructions `weir-bench export` ran over its whole life, and what it
    printed."""
    out_file = os.path.join(work, "callgrind-export.out")
    run = subprocess.run(under_callgrind(out_file, [bench, "export", "--records", str(records)]),
                         env=env_for(kinesis), capture_output=True, text=True, timeout=3600)
    if run.returncode != 0:
        raise RuntimeError(f"weir-bench export: {run.stderr[-2000:]}")
    total = callgrind_total(out_file)
    os.unlink(out_file)
    return total, run.stdout


def under_callgrind(out_file, argv):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "--quiet"] + argv


def callgrind_total(path):
    """The instruction total of a callgrind output file."""
    with open(path) as f:
        for line in f:
            if line.startswith("totals:") or line.startswith("summary:"):
                return int(line.split()[1])
    raise RuntimeError(f"{path}: callgrind wrote no total")


def compare_exports(builds, records, repeats):
    sys.path.insert(0, os.path.join(HERE, "..", "compat-tests"))
    import cloud
    work = tempfile.mkdtemp(prefix="weir-instructions-")
    per_record = {}
    try:
        with cloud.Kinesalite() as kinesis:
            for repeat in range(repeats):
                for label, folder in builds.items():
                    total, out = export_instructions(os.path.join(folder, "weir-bench"), records,
                                                     kinesis, work)
                    # both phases: the SDK alone, then weir's exporter
                    value = total / (2 * records)
                    per_record.setdefault(label, []).append(value)
                    ratio = next((l for l in out.splitlines() if l.startswith("ratio")), "no ratio printed")
                    print(f"repeat {repeat + 1} {label:4} {value:10.0f} instructions/record ({ratio})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base, new = min(per_record["base"]), min(per_record["new"])
    print()
    print(f"| weir-bench export --records {records} | base | new | new / base |")
    print("|---|---:|---:|---:|")
    print(f"| instructions per record (SDK alone + weir's exporter) | {base:,.0f} | {new:,.0f} | {new / base:.3f} |")
    print("\n(the lowest of the repeats)")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base_dir")
    parser.add_argument("new_dir")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--export", action="store_true")
    parser.add_argument("--records", type=int, default=10_000)
    args = parser.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("instructions.py: valgrind is needed (Debian's valgrind)")
    builds = {"base": os.path.abspath(args.base_dir), "new": os.path.abspath(args.new_dir)}
    if args.export:
        compare_exports(builds, args.records, args.repeats)
        return
    bench = os.path.join(builds["new"], "weir-bench")
    work = tempfile.mkdtemp(prefix="weir-instructions-")
    per_append = {}
    try:
        for repeat in range(args.repeats):
            for label, folder in builds.items():
                weir = os.path.join(folder, "weir")
                idle = server_instructions(weir, bench, None, 0, work)
                for load, load_args in LOADS.items():
                    total = server_instructions(weir, bench, load_args, args.messages, work)
                    value = (total - idle) / args.messages
                    per_append.setdefault((load, label), []).append(value)
                    print(f"repeat {repeat + 1} {label:4} {load:10} {value:10.0f} instructions/append"
                          f" (start+stop {idle:,})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print(f"| load ({args.messages} x 100 B, written and read back) | base | new | new / base |")
    print("|---|---:|---:|---:|")
    for load in LOADS:
        base = min(per_append[(load, "base")])
        new = min(per_append[(load, "new")])
        print(f"| {load} | {base:,.0f} | {new:,.0f} | {new / base:.3f} |")
    print("\n(instructions the server ran per message, the lowest of the repeats)")


if __name__ == "__main__":
    main()
