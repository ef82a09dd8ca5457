#!/usr/bin/env python3
"""RSS of weir binaries side by side: idle, with N idle connections, and after
a large Memory stream is filled and deleted (the last part only when the
build's own `weir-bench` can drive it; see memory_rss in this folder).

    benches/connections_rss.py BASELINE_BIN NEW_BIN [--connections 2000]

For each binary, in turn, in the same run:
  1. start it (port 0, auth off, fresh store, WEIR_MAX_CONNECTIONS raised above
     the count) and read VmRSS once it listens;
  2. open N sockets that complete the handshake and then stay idle (real
     clients that connected and wait), read VmRSS;
  3. open N more sockets that never send a byte (a local process hoarding
     slots), read VmRSS, then check a fresh client still gets its handshake
     answered;
  4. stop it by pid.
Prints a markdown table. Stdlib only.
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid

from procs import resident_kib, stop, wait_listening


def cbor_text(s):
    b = s.encode()
    return cbor_head(3, len(b)) + b


def cbor_head(major, n):
    if n < 24:
        return bytes([major << 5 | n])
    if n < 256:
        return bytes([major << 5 | 24, n])
    if n < 65536:
        return bytes([major << 5 | 25]) + n.to_bytes(2, "big")
    return bytes([major << 5 | 26]) + n.to_bytes(4, "big")


def connect_frame():
    fields = [("requestId", cbor_text(str(uuid.uuid4()))),
              ("protocolVersion", cbor_text("1.1.0")),
              ("otherSupportedProtocolVersions", cbor_head(4, 1) + cbor_text("1.0.0")),
              ("sdkVersion", cbor_text("rss-bench"))]
    body = cbor_head(5, len(fields)) + b"".join(cbor_text(k) + v for k, v in fields)
    return b"\x01" + (1 + len(body)).to_bytes(4, "big") + b"\x01" + body


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("closed after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def handshake(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(connect_frame())
    assert recv_exact(s, 1) == b"\x01"
    length = int.from_bytes(recv_exact(s, 4), "big")
    recv_exact(s, length)
    return s


def settle(pid):
    """RSS once it stops changing (a few samples 100 ms apart)."""
    last = None
    for _ in range(50):
        now = resident_kib(pid)
        if now == last:
            return now
        last = now
        time.sleep(0.1)
    return last


def measure(binary, count):
    store = tempfile.mkdtemp(prefix="weir-rss-")
    env = dict(os.environ,
               STREAM_MANAGER_SERVER_PORT="0",
               STREAM_MANAGER_AUTHENTICATE_CLIENT="false",
               STREAM_MANAGER_STORE_ROOT_DIR=store,
               WEIR_MAX_CONNECTIONS=str(2 * count + 100),
               LOG_LEVEL="WARN")
    env["RUST_LOG"] = "warn,weir::daemon=info"
    proc = subprocess.Popen([binary], env=env, stderr=subprocess.PIPE, text=True)
    sockets = []
    try:
        port = int(wait_listening(proc).rsplit(":", 1)[1])
        row = {"idle": settle(proc.pid)}
        for _ in range(count):
            sockets.append(handshake(port))
        row["handshaken"] = settle(proc.pid)
        for _ in range(count):
            sockets.append(socket.create_connection(("127.0.0.1", port), timeout=30))
        row["silent"] = settle(proc.pid)
        try:
            handshake(port).close()
            row["fresh client"] = "served"
        except (OSError, EOFError) as e:
            row["fresh client"] = "refused (%s)" % e
        return row
    finally:
        for s in sockets:
            s.close()
        stop(proc)
        subprocess.run(["rm", "-rf", store])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binaries", nargs="+")
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = [(b, measure(b, args.connections)) for b in args.binaries]
    n = args.connections
    print("| binary | RSS idle | + %d idle handshaken connections | + %d silent sockets | new client then |" % (n, n))
    print("|---|---:|---:|---:|---|")
    for b, r in rows:
        print("| %s | %.1f MiB | %.1f MiB | %.1f MiB | %s |" % (
            b, r["idle"] / 1024, r["handshaken"] / 1024, r["silent"] / 1024, r["fresh client"]))


if __name__ == "__main__":
    sys.exit(main())
