#!/usr/bin/env python3
"""Memory of a `Memory` stream in one weir binary (benches/memory.sh runs it
for the baseline and the current build, then prints them side by side).

    memory_helper.py run WEIR_BIN BENCH_BIN WORKDIR MESSAGES PAYLOAD CYCLES  -> key=value lines
    memory_helper.py table RESULTS_BASELINE RESULTS_CURRENT                 -> markdown table

`run` starts WEIR_BIN (port 0, auth off, its own store folder), reads its
VmRSS idle, then CYCLES times: fills the stream `weir-bench` with `BENCH_BIN
load` (BENCH_BIN: a weir-bench binary; MESSAGES appends of PAYLOAD bytes on 4
connections, read back),
asks weir for the stream's totalBytes, reads VmRSS, deletes the stream, and
reads VmRSS again. It stops weir by its pid. The delete and describe go over
the real protocol with a minimal stdlib client below.
"""

import os
import re
import socket
import struct
import subprocess
import sys
import time

from procs import resident_kib, stop

READY = re.compile(r"listening on (\S+)")
STREAM = "weir-bench"


# --- a minimal CBOR writer/reader: the shapes the stream manager protocol uses
def cbor_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for ai, fmt in ((24, ">B"), (25, ">H"), (26, ">I"), (27, ">Q")):
        if n < 1 << (8 * struct.calcsize(fmt)):
            return bytes([major << 5 | ai]) + struct.pack(fmt, n)
    raise ValueError(n)


def cbor(value) -> bytes:
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return cbor_head(0, value) if value >= 0 else cbor_head(1, -1 - value)
    if isinstance(value, str):
        data = value.encode()
        return cbor_head(3, len(data)) + data
    if isinstance(value, dict):
        return cbor_head(5, len(value)) + b"".join(cbor(k) + cbor(v) for k, v in value.items())
    if isinstance(value, list):
        return cbor_head(4, len(value)) + b"".join(cbor(v) for v in value)
    raise TypeError(type(value))


def uncbor(b: bytes, i: int = 0):
    """Definite-length items only (weir writes nothing else)."""
    major, ai = b[i] >> 5, b[i] & 31
    i += 1
    if ai < 24:
        n = ai
    elif ai <= 27:
        size = 1 << (ai - 24)
        n = int.from_bytes(b[i:i + size], "big")
        i += size
    else:
        raise ValueError(f"unsupported CBOR head {b[i - 1]:#x}")
    if major == 0:
        return n, i
    if major == 1:
        return -1 - n, i
    if major in (2, 3):
        data = b[i:i + n]
        return (data if major == 2 else data.decode()), i + n
    if major == 4:
        items = []
        for _ in range(n):
            item, i = uncbor(b, i)
            items.append(item)
        return items, i
    if major == 5:
        out = {}
        for _ in range(n):
            k, i = uncbor(b, i)
            out[k], i = uncbor(b, i)
        return out, i
    if major == 7:
        return {20: False, 21: True, 22: None}[n], i
    raise ValueError(f"unsupported CBOR major type {major}")


class Client:
    def __init__(self, addr: str):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.sendall(b"\x01" + self.frame(1, {
            "requestId": "connect", "protocolVersion": "1.1.0",
            "otherSupportedProtocolVersions": [], "sdkVersion": "memory-bench",
        }))
        if self.recv_exact(1) != b"\x01":
            sys.exit("weir refused the connect version")
        op, reply = self.recv_frame()
        if op != 6 or reply.get("status") != 0:
            sys.exit(f"connect failed: {reply}")

    @staticmethod
    def frame(op: int, body: dict) -> bytes:
        payload = cbor(body)
        return struct.pack(">iB", 1 + len(payload), op) + payload

    def recv_exact(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                sys.exit("weir closed the connection")
            out += chunk
        return out

    def recv_frame(self):
        (length,) = struct.unpack(">i", self.recv_exact(4))
        body = self.recv_exact(length)
        return body[0], uncbor(body[1:])[0]

    def call(self, op: int, body: dict) -> dict:
        self.sock.sendall(self.frame(op, body))
        return self.recv_frame()[1]


def rss_mib(pid: int) -> float:
    return resident_kib(pid) / 1024


def run(weir: str, bench: str, workdir: str, messages: str, payload: str, cycles: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    log_path = os.path.join(workdir, "weir.log")
    env = dict(os.environ, NO_COLOR="1", STREAM_MANAGER_SERVER_PORT="0",
               STREAM_MANAGER_AUTHENTICATE_CLIENT="false",
               STREAM_MANAGER_STORE_ROOT_DIR=os.path.join(workdir, "store"))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([weir], env=env, stdout=log, stderr=log)
    try:
        addr = None
        deadline = time.monotonic() + 30
        while addr is None and time.monotonic() < deadline:
            with open(log_path, encoding="utf-8", errors="replace") as f:
                m = READY.search(f.read())
            addr = m.group(1) if m else None
            if addr is None:
                if proc.poll() is not None:
                    sys.exit(f"weir exited with {proc.returncode} (see {log_path})")
                time.sleep(0.02)
        if addr is None:
            sys.exit(f"weir did not log its readiness line (see {log_path})")
        time.sleep(0.2)  # let start-up settle before the idle sample
        print(f"rss_idle={rss_mib(proc.pid):.1f}")
        client = Client(addr)
        for cycle in range(1, int(cycles) + 1):
            load = subprocess.run(
                [bench, "load", "--addr", addr, "--persistence", "memory",
                 "--messages", messages, "--payload", payload, "--connections", "4"],
                capture_output=True, text=True, check=False)
            if load.returncode != 0:
                sys.exit(f"weir-bench load failed: {load.stderr.strip()}")
            info = client.call(13, {"requestId": f"d{cycle}", "name": STREAM})
            if info.get("status") != 0:
                sys.exit(f"describe failed: {info}")
            total = info["messageStreamInfo"]["storageStatus"]["totalBytes"]
            print(f"stored_mib_{cycle}={total / 2**20:.1f}")
            print(f"rss_full_{cycle}={rss_mib(proc.pid):.1f}")
            deleted = client.call(3, {"requestId": f"x{cycle}", "name": STREAM})
            if deleted.get("status") != 0:
                sys.exit(f"delete failed: {deleted}")
            print(f"rss_deleted_{cycle}={rss_mib(proc.pid):.1f}")
    finally:
        stop(proc, timeout=20)


def table(baseline: str, current: str) -> None:
    def load(path):
        with open(path) as f:
            return dict(line.strip().split("=", 1) for line in f if "=" in line)
    b, c = load(baseline), load(current)
    cycles = sum(1 for k in c if k.startswith("rss_full_"))
    rows = [("RSS idle", "rss_idle")]
    for n in range(1, cycles + 1):
        rows += [(f"fill {n}: stream totalBytes", f"stored_mib_{n}"),
                 (f"fill {n}: RSS after filling (and reading back)", f"rss_full_{n}"),
                 (f"fill {n}: RSS after deleting the stream", f"rss_deleted_{n}")]
    print("| MiB | baseline | this build |")
    print("|---|---:|---:|")
    for label, key in rows:
        print(f"| {label} | {b.get(key, '-')} | {c.get(key, '-')} |")


if __name__ == "__main__":
    {"run": run, "table": table}[sys.argv[1]](*sys.argv[2:])
