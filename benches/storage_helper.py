#!/usr/bin/env python3
"""Helpers for benches/storage.sh (Python 3.11, standard library only).

    freeport                         a free TCP port on 127.0.0.1
    wait-ready LOG TIMEOUT_S         wait for weir's readiness line in LOG, print host:port
    startup WEIR STORE RUNS COLD     time exec -> "weir listening on" RUNS times, print key=value
    resp-xadd KEY N PAYLOAD          RESP for `redis-cli --pipe`: XADD KEY 1-i p <payload>, i = 1..N
    dd-mibs                          MiB/s from dd's last stderr line on stdin
    cpu-sample PID OUT               append "monotonic_s cpu_s syscalls" of PID to OUT every 10 ms until it exits
                                     (syscalls: read + write calls from /proc/PID/io)
    cpu-between OUT T0 T1 [COL]      growth of column COL (1: CPU s, 2: syscalls) between monotonic
                                     times T0 and T1 (interpolated)
    now                              time.monotonic()
    table RESULTS                    the markdown table from the TSV results file
"""

import os
import re
import socket
import statistics
import subprocess
import sys
import time

from procs import rss_kib, stop

ANSI = re.compile(r"\x1b\[[0-9;]*m")
READY = re.compile(r"weir listening on (\S+)")
OPENED = re.compile(r"store opened.*elapsed=(\S+)")


def freeport() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def wait_ready(log: str, timeout: str) -> None:
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        try:
            with open(log, encoding="utf-8", errors="replace") as f:
                m = READY.search(ANSI.sub("", f.read()))
            if m:
                print(m.group(1))
                return
        except FileNotFoundError:
            pass
        time.sleep(0.01)
    sys.exit(f"weir did not log its readiness line within {timeout} s (see {log})")


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def one_start(weir: str, store: str, cold: bool) -> tuple[float, str, int]:
    env = dict(os.environ)
    env.update(
        STREAM_MANAGER_SERVER_PORT="0",
        STREAM_MANAGER_STORE_ROOT_DIR=store,
        STREAM_MANAGER_AUTHENTICATE_CLIENT="false",
        NO_COLOR="1",
    )
    if cold:
        drop_caches()
    started = time.monotonic()
    proc = subprocess.Popen([weir], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    opened = "?"
    try:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = ANSI.sub("", raw.decode("utf-8", "replace"))
            if m := OPENED.search(line):
                opened = m.group(1)
            if READY.search(line):
                elapsed = time.monotonic() - started
                break
        else:
            sys.exit(f"weir exited ({proc.wait()}) before its readiness line")
        rss, _ = rss_kib(proc.pid)
    finally:
        stop(proc)
    return elapsed, opened, rss


def startup(weir: str, store: str, runs: str, cold: str) -> None:
    modes = [("warm", False)] + ([("cold", True)] if cold == "1" else [])
    for name, is_cold in modes:
        times, opens, rss = [], [], 0
        for _ in range(int(runs)):
            elapsed, opened, rss = one_start(weir, store, is_cold)
            times.append(elapsed * 1000)
            opens.append(opened)
        print(f"{name}_median_ms={statistics.median(times):.1f}")
        print(f"{name}_all_ms={','.join(f'{t:.1f}' for t in times)}")
        print(f"{name}_store_opened={','.join(opens)}")
        print(f"{name}_rss_kib={rss}")


def resp_xadd(key: str, n: str, payload: str) -> None:
    out = sys.stdout.buffer
    value = b"x" * int(payload)
    k = key.encode()
    head = b"*5\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n" % (len(k), k)
    tail = b"$1\r\np\r\n$%d\r\n%s\r\n" % (len(value), value)
    chunk = []
    for i in range(1, int(n) + 1):
        sid = b"1-%d" % i
        chunk.append(head + b"$%d\r\n%s\r\n" % (len(sid), sid) + tail)
        if len(chunk) == 10000:
            out.write(b"".join(chunk))
            chunk = []
    out.write(b"".join(chunk))


def dd_mibs() -> None:
    # "536870912 bytes (537 MB, 512 MiB) copied, 0.71 s, 754 MB/s"
    text = sys.stdin.read()
    m = re.search(r"(\d+) bytes .*copied, ([0-9.]+) s", text)
    if not m:
        sys.exit(f"cannot read dd's output: {text!r}")
    print(f"{int(m.group(1)) / float(m.group(2)) / 2**20:.0f}")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def io_calls(pid: int) -> int:
    calls = 0
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith(("syscr:", "syscw:")):
                calls += int(line.split()[1])
    return calls


def cpu_sample(pid: str, out: str) -> None:
    with open(out, "w") as f:
        while True:
            try:
                t = time.monotonic()
                cpu = cpu_seconds(int(pid))
                calls = io_calls(int(pid))
            except OSError:  # gone (or a zombie)
                return
            f.write(f"{t:.4f} {cpu:.2f} {calls}\n")
            f.flush()
            time.sleep(0.01)


def cpu_between(out: str, t0: str, t1: str, col: str = "1") -> None:
    c = int(col)
    samples = [(float(p[0]), float(p[c])) for p in (line.split() for line in open(out)) if len(p) > c]

    def at(t: float) -> float:
        before = [s for s in samples if s[0] <= t]
        after = [s for s in samples if s[0] >= t]
        if not before:
            # The sampler starts just after the process it samples, which
            # has used next to no CPU by then.
            return 0.0
        if not after:
            sys.exit(f"no CPU samples after {t}")
        (ta, ca), (tb, cb) = before[-1], after[0]
        return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)

    print(f"{at(float(t1)) - at(float(t0)):.3f}")


def now() -> None:
    print(f"{time.monotonic():.4f}")


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(path: str) -> None:
    """TSV rows: id, what, weir, unit, compared with, reference, goal.
    goal: `ratio>=X` (weir / reference), `weir<X`, or empty."""
    print("| # | benchmark | weir | compared with | reference | weir / ref | goal |")
    print("|---|---|---:|---|---:|---:|---|")
    failed = 0
    for line in open(path, encoding="utf-8"):
        if not line.strip():
            continue
        rid, what, weir, unit, ref_what, ref, goal = (line.rstrip("\n").split("\t") + [""] * 7)[:7]
        w = float(weir) if weir else None
        r = float(ref) if ref else None
        ratio = w / r if (w is not None and r) else None
        verdict = ""
        if goal:
            m = re.fullmatch(r"(ratio|weir)(>=|<)([0-9.]+)", goal)
            assert m, goal
            subject = ratio if m.group(1) == "ratio" else w
            bound = float(m.group(3))
            ok = subject is not None and (subject >= bound if m.group(2) == ">=" else subject < bound)
            failed += not ok
            verdict = f"{goal.replace('>=', ' ≥ ').replace('<', ' < ')}: {'**ok**' if ok else '**MISSED**'}"
        print(
            f"| {rid} | {what} | {fmt(w) + ' ' + unit if w is not None else ''} | {ref_what} "
            f"| {fmt(r) + ' ' + unit if r is not None else ''} | {fmt(ratio) if ratio is not None else ''} | {verdict} |"
        )
    print()
    print(f"goals missed: {failed}")


def main() -> None:
    cmds = {
        "freeport": freeport,
        "wait-ready": wait_ready,
        "startup": startup,
        "resp-xadd": resp_xadd,
        "dd-mibs": dd_mibs,
        "cpu-sample": cpu_sample,
        "cpu-between": cpu_between,
        "now": now,
        "table": table,
    }
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
