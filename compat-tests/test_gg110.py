"""Item 7a: Greengrass 1.10 getting-started programs (greengrasssdk 1.5.0 on Python 3.7).

1. writer.py against an empty store: deleting the missing SomeStream must raise
   ResourceNotFoundException; create, two appends (seq 0, 1), read-back of exactly
   those two, one random append.
2. writer.py again (SomeStream now exists, so its delete must succeed) running
   concurrently with reader.py: the reader is started once the writer has recreated
   the stream, and must see every message of the new stream exactly once, in order,
   with the right payload. Sequence numbers restart at 0 after the delete.
Every output line of both programs is parsed with an exact pattern; an unexpected
line is a failure.
"""
import json
import os
import queue
import re
import subprocess
import threading
import time

from harness import HERE, HarnessError, Report, Weir, indent, main_guard, run_client, sdk_python

PY37 = sdk_python("py37-greengrasssdk-1.5.0")
WRITER = os.path.join(HERE, "gg110", "writer.py")
READER = os.path.join(HERE, "gg110", "reader.py")
RANDOM_COUNT = 8            # ~8 s of writing at one append per second
INITIAL = [b"ABCDEFGHIJKLMNO", b"PQRSTUVWXYZ"]

W_DELETE = re.compile(r"delete SomeStream: (deleted|ResourceNotFoundException)")
W_CREATE = re.compile(r"create SomeStream")
W_APPEND = re.compile(r"append seq=(-?\d+) payload=([0-9a-f]*)")
W_RBCOUNT = re.compile(r"readback count=(\d+)")
W_READBACK = re.compile(r"readback seq=(-?\d+) payload=([0-9a-f]*)")
W_RANDOM = re.compile(r"random seq=(-?\d+) value=(-?\d+) payload=([0-9a-f]*)")
W_DESCRIBE = re.compile(r"describe (\{.*\})")
R_READ = re.compile(r"read seq=(-?\d+) payload=([0-9a-f]*)")
R_WAIT = re.compile(r"wait NotEnoughMessagesException")
CLIENT_DEADLINE_S = 90


class Problems(list):
    def need(self, cond, msg):
        if not cond:
            self.append(msg)
        return cond


def parse_writer(stdout, expect_delete, random_count):
    """Checks the writer's whole output; returns (problems, appended {seq: payload})."""
    p = Problems()
    lines = stdout.splitlines()
    appended = {}
    it = iter(enumerate(lines, 1))

    def nxt(pattern, what):
        try:
            n, line = next(it)
        except StopIteration:
            p.append(f"output ended, expected {what}")
            return None
        m = pattern.fullmatch(line)
        if not m:
            p.append(f"line {n}: expected {what}, got {line!r}")
        return m

    m = nxt(W_DELETE, "delete result")
    if m:
        p.need(m.group(1) == expect_delete, f"delete of SomeStream: expected {expect_delete}, got {m.group(1)}")
    nxt(W_CREATE, "create line")
    for i, payload in enumerate(INITIAL):
        m = nxt(W_APPEND, f"append #{i}")
        if m:
            seq = int(m.group(1))
            p.need(seq == i, f"initial append #{i}: sequence number {seq}, expected {i}")
            p.need(m.group(2) == payload.hex(), f"initial append #{i}: payload echo mismatch")
            appended[seq] = payload
    m = nxt(W_RBCOUNT, "readback count")
    if m:
        p.need(int(m.group(1)) == 2, f"read_messages(min=2, no max) returned {m.group(1)} messages, expected exactly 2")
        for i in range(int(m.group(1))):
            m2 = nxt(W_READBACK, f"readback message #{i}")
            if m2:
                seq, payload = int(m2.group(1)), bytes.fromhex(m2.group(2))
                p.need(seq == i, f"readback #{i} has sequence number {seq}, expected {i}")
                if i < len(INITIAL):
                    p.need(payload == INITIAL[i], f"readback #{i} payload {payload!r}, expected {INITIAL[i]!r}")
    for i in range(random_count):
        m = nxt(W_RANDOM, f"random append #{i}")
        if m:
            seq, value, payload = int(m.group(1)), int(m.group(2)), bytes.fromhex(m.group(3))
            exp_seq = len(INITIAL) + i
            p.need(seq == exp_seq, f"random append #{i}: sequence number {seq}, expected {exp_seq}")
            p.need(payload == value.to_bytes(4, "big", signed=True),
                   f"random append #{i}: payload {payload.hex()} is not {value} as 4-byte big-endian")
            appended[seq] = payload
    m = nxt(W_DESCRIBE, "describe line")
    if m:
        check_describe(p, json.loads(m.group(1)), appended)
    try:
        n, line = next(it)
        p.need(line == "done", f"line {n}: expected 'done', got {line!r}")
        extra = [l for _, l in it]
        p.need(not extra, f"unexpected trailing output: {extra[:3]!r}")
    except StopIteration:
        p.append("output ended before 'done'")
    return p, appended


def check_describe(p, info, appended):
    definition = info.get("definition", {})
    expected_def = {
        "name": "SomeStream", "maxSize": 268435456, "streamSegmentSize": 16777216,
        "strategyOnFull": 1, "persistence": 0, "flushOnWrite": False,
        "exportDefinition": {"kinesis": [{"identifier": "KinesisExportSomeStream",
                                          "kinesisStreamName": "MyKinesisStream"}]},
    }
    p.need(definition == expected_def, f"describe definition {definition!r}, expected {expected_def!r}")
    statuses = info.get("exportStatuses")
    p.need(isinstance(statuses, list) and [s.get("exportConfigIdentifier") for s in statuses] == ["KinesisExportSomeStream"],
           f"describe exportStatuses {statuses!r}, expected one status for KinesisExportSomeStream")
    n = len(appended)
    expected_storage = {"oldestSequenceNumber": 0, "newestSequenceNumber": n - 1,
                        "totalBytes": sum(len(v) + 24 for v in appended.values())}
    p.need(info.get("storageStatus") == expected_storage,
           f"describe storageStatus {info.get('storageStatus')!r}, expected {expected_storage!r}")


def parse_reader(stdout, appended, until_seq):
    p = Problems()
    seen = []
    lines = stdout.splitlines()
    for n, line in enumerate(lines, 1):
        if line == "done":
            p.need(n == len(lines), f"output continues after 'done': {lines[n:n + 3]!r}")
            break
        if R_WAIT.fullmatch(line):
            continue
        m = R_READ.fullmatch(line)
        if not p.need(m is not None, f"line {n}: unexpected reader output {line!r}"):
            continue
        seen.append((int(m.group(1)), bytes.fromhex(m.group(2))))
    else:
        p.append("reader output has no 'done' line")
    seqs = [s for s, _ in seen]
    p.need(seqs == list(range(until_seq + 1)),
           f"reader saw sequence numbers {seqs}, expected each of 0..{until_seq} exactly once, in order")
    for seq, payload in seen:
        if seq in appended:
            p.need(payload == appended[seq], f"reader seq {seq}: payload {payload.hex()}, writer appended {appended[seq].hex()}")
    return p


class LineReader:
    """Collects a child's stdout lines on a thread so we can wait for one with a deadline."""

    def __init__(self, proc):
        self.lines = []
        self.q = queue.Queue()
        self.t = threading.Thread(target=self._run, args=(proc,), daemon=True)
        self.t.start()

    def _run(self, proc):
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def wait_for(self, wanted, deadline_s):
        end = time.monotonic() + deadline_s
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                return False
            if line is None:
                return False
            if line == wanted:
                return True


def run_first_writer(weir, report):
    rc, out, err = run_client([PY37, WRITER, "--count", "1", "--interval", "0"], weir.client_env(), CLIENT_DEADLINE_S)
    problems, _ = parse_writer(out, "ResourceNotFoundException", 1)
    if rc != 0:
        problems.insert(0, f"writer exited with {rc}")
    if problems:
        report.fail("gg110-writer-empty-store", "; ".join(problems) + f"\n  writer stdout:\n{indent(out)}\n  stderr tail:\n{indent(err[-3000:])}")
    else:
        report.ok("gg110-writer-empty-store", "delete of missing SomeStream raised ResourceNotFoundException")


def run_concurrent(weir, report):
    env = weir.client_env()
    writer = subprocess.Popen([PY37, WRITER, "--count", str(RANDOM_COUNT)], env=env, cwd=HERE,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, errors="replace")
    wlines = LineReader(writer)
    werr = []
    threading.Thread(target=lambda: werr.append(writer.stderr.read()), daemon=True).start()
    reader = None
    try:
        # Start the reader only once SomeStream has been recreated, so it cannot read the old stream.
        if not wlines.wait_for("create SomeStream", 30):
            raise HarnessError("writer never printed 'create SomeStream':\n" + "\n".join(wlines.lines))
        until = len(INITIAL) + RANDOM_COUNT - 1
        reader = subprocess.Popen([PY37, READER, "--until-seq", str(until), "--deadline", "60"], env=env, cwd=HERE,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, errors="replace")
        rout, rerr = reader.communicate(timeout=CLIENT_DEADLINE_S)
        writer.wait(CLIENT_DEADLINE_S)
        wlines.t.join(10)
    except subprocess.TimeoutExpired:
        raise HarnessError("writer/reader did not finish in time:\n" + "\n".join(wlines.lines))
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    wout = "\n".join(wlines.lines) + "\n"
    wprob, appended = parse_writer(wout, "deleted", RANDOM_COUNT)
    if writer.returncode != 0:
        wprob.insert(0, f"writer exited with {writer.returncode}")
    if wprob:
        report.fail("gg110-writer-recreate", "; ".join(wprob) + f"\n  writer stdout:\n{indent(wout)}\n  stderr tail:\n{indent(''.join(werr)[-3000:])}")
    else:
        report.ok("gg110-writer-recreate", f"delete of existing stream ok, seq restarted at 0, {RANDOM_COUNT} random appends, describe shows Kinesis export")
    rprob = parse_reader(rout, appended, until)
    if reader.returncode != 0:
        rprob.insert(0, f"reader exited with {reader.returncode}")
    if rprob:
        report.fail("gg110-reader-concurrent", "; ".join(rprob) + f"\n  reader stdout:\n{indent(rout)}\n  stderr tail:\n{indent(rerr[-3000:])}")
    else:
        report.ok("gg110-reader-concurrent", f"reader saw all {until + 1} messages once, in order, payloads intact")


def main():
    report = Report("gg110 sample programs (greengrasssdk 1.5.0 / Python 3.7)")
    with Weir("gg110") as weir:
        run_first_writer(weir, report)
        run_concurrent(weir, report)
    return report.finish()


if __name__ == "__main__":
    main_guard(main)
