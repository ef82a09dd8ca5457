"""Issue item 6a: weir killed with SIGKILL while a real client appends; nothing acknowledged is lost.

Two File streams, one with flushOnWrite=true and one without (small segments, so
crashes also land while segments are sealed and opened).  Each round:

  1. a client process (stream-manager 1.1.2, one connection) appends to both
     streams from several threads; every append that returned a sequence
     number is printed at once, on its own flushed stdout line, with the
     payload's length and SHA-256;
  2. after a random 50..500 ms of appending weir gets SIGKILL;
  3. weir is started again on the same store and the driver (the same SDK, in
     this process) checks, for BOTH streams:
       - the definition is the one created;
       - the stream holds sequence numbers 0..newest without a gap, every
         message intact (each payload carries its own checksum) and written by
         the client exactly once; totalBytes agrees with the messages;
       - every message acknowledged in this or any earlier round is readable
         at its acknowledged sequence number, byte for byte (a killed process
         loses nothing it had written to the OS, so this holds for the stream
         without flushOnWrite too);
       - what the previous restart showed is still there (a prefix);
       - no sequence number was acknowledged twice, and every acknowledgement
         of this round is above everything present after the previous restart;
       - an append now gets exactly newest + 1.
A last SIGTERM restart repeats the checks.  The randomness (payloads, kill
moments) is seeded; the seed is printed and WEIR_CRASH_SEED=<seed> repeats it
(WEIR_CRASH_ROUNDS sets the number of rounds, default 30).  No timing assertions.

    python test_crash.py                      # driver (run.sh uses the stream-manager venv's Python)
    python test_crash.py client <round> <seed> <threads per stream>   # appender (internal)
"""
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
import time

STREAMS = ["crash-flush", "crash-noflush"]          # index 0: flushOnWrite=true, 1: default (false)
SEGMENT_SIZES = [64 * 1024, 256 * 1024]
THREADS_PER_STREAM = 3
TAG_LEN = 16                                        # trailing SHA-256 prefix of the rest of the payload
HEADER_RE = re.compile(rb"crash r(\d+) s(\d) t(\d+) n(\d+) len(\d+) \|")
MARKER_THREAD = 99                                  # "thread" number of the driver's own appends


def make_payload(rng, rnd, si, t, n):
    """Unique (round, stream, thread, counter) header, random bytes, checksum of both."""
    x = rng.random()
    size = rng.randint(0, 1500) if x < 0.95 else rng.randint(1500, 48 * 1024)
    body = b"crash r%d s%d t%d n%d len%d |" % (rnd, si, t, n, size) + rng.randbytes(size)
    return body + hashlib.sha256(body).digest()[:TAG_LEN]


# ---------------------------------------------------------------- client process

def client_main(argv):
    from stream_manager import StreamManagerClient

    rnd, seed, per_stream = int(argv[0]), int(argv[1]), int(argv[2])
    lock = threading.Lock()

    def out(line):
        with lock:
            os.write(1, (line + "\n").encode())

    # request_timeout only bounds requests still pending when weir dies; the
    # driver ends this process itself once weir is dead.
    client = StreamManagerClient(request_timeout=120)

    def worker(si, t):
        rng = random.Random("%d/%d/%d/%d" % (seed, rnd, si, t))
        n = 0
        while True:
            payload = make_payload(rng, rnd, si, t, n)
            try:
                seq = client.append_message(STREAMS[si], payload)
            except Exception as e:  # weir died (or refused): this append is not acknowledged
                out("ERR %d %d %d %s: %s" % (si, t, n, type(e).__name__, str(e).replace("\n", " ")[:200]))
                return
            out("ACK %d %d %d %d %d %d %s" % (si, seq, rnd, t, n, len(payload), hashlib.sha256(payload).hexdigest()))
            n += 1

    out("READY")
    for si in range(len(STREAMS)):
        for t in range(per_stream):
            threading.Thread(target=worker, args=(si, t), daemon=True).start()
    sys.stdin.buffer.read()            # EOF: the driver has killed weir
    # Answers weir sent before it died may still sit in our socket buffer: give
    # the SDK's read loop a moment to hand them out (it drops `connected` when
    # it reads the end of the stream, but not when the kernel reports a reset).
    deadline = time.monotonic() + 0.5
    while client.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    with lock:
        os.write(1, b"END\n")
        os._exit(0)


# ---------------------------------------------------------------- driver

CLIENT_READY_DEADLINE_S = 30
CLIENT_EXIT_DEADLINE_S = 30
ACK_RE = re.compile(r"ACK (\d) (-?\d+) (\d+) (\d+) (\d+) (\d+) ([0-9a-f]{64})")
ERR_RE = re.compile(r"ERR (\d) (\d+) (\d+) (.*)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class Ack:
    __slots__ = ("si", "seq", "rnd", "t", "n", "length", "sha")

    def __init__(self, si, seq, rnd, t, n, length, sha):
        self.si, self.seq, self.rnd, self.t, self.n, self.length, self.sha = si, seq, rnd, t, n, length, sha

    def ident(self):
        return "r%d s%d t%d n%d" % (self.rnd, self.si, self.t, self.n)


def ensure_sdk_python():
    """The driver uses the stream-manager SDK itself; re-run under its venv if needed."""
    try:
        import stream_manager  # noqa: F401
    except ImportError:
        from harness import sdk_python
        py = sdk_python("py311-stream-manager-1.1.2")
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


class Round:
    """One client process appending while weir is killed."""

    def __init__(self, weir, rnd, seed):
        from harness import HERE
        self.lines = []            # (time, line)
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "client", str(rnd), str(seed), str(THREADS_PER_STREAM)],
            env=weir.client_env(), cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.err_chunks = []
        self.t_out = threading.Thread(target=self._read_out, daemon=True)
        self.t_err = threading.Thread(target=self._read_err, daemon=True)
        self.t_out.start()
        self.t_err.start()

    def _read_out(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append((time.monotonic(), line))
            if line == "READY":
                self.ready.set()

    def _read_err(self):
        for raw in self.proc.stderr:
            self.err_chunks.append(raw.decode(errors="replace"))

    def finish(self):
        """Tell the client weir is dead, wait for it; returns a note if it had to be killed."""
        note = None
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(CLIENT_EXIT_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            note = "client did not exit within %ds of the kill and was killed" % CLIENT_EXIT_DEADLINE_S
        self.t_out.join(10)
        self.t_err.join(10)
        return note

    def stderr_tail(self, n=3000):
        return "".join(self.err_chunks)[-n:]


def parse_message(si, seq, payload):
    """Problems with one stored message; returns (problem or None, identity or None)."""
    if len(payload) < TAG_LEN:
        return "payload of %d bytes is too short to be one of ours" % len(payload), None
    body, tag = payload[:-TAG_LEN], payload[-TAG_LEN:]
    if hashlib.sha256(body).digest()[:TAG_LEN] != tag:
        return "payload of %d bytes fails its own checksum (corrupted): starts %r" % (len(payload), payload[:48]), None
    m = HEADER_RE.match(body)
    if not m:
        return "payload has no header: starts %r" % payload[:48], None
    rnd, psi, t, n, size = (int(x) for x in m.groups())
    if psi != si:
        return "message written to stream %s found in %s" % (STREAMS[psi], STREAMS[si]), None
    if len(body) != m.end() + size:
        return "payload length %d disagrees with its header (len%d)" % (len(payload), size), None
    return None, (rnd, t, n)


def main():
    from harness import HarnessError, Report, Weir
    from stream_manager import StreamManagerClient
    from stream_manager.data import (MessageStreamDefinition, Persistence, ReadMessagesOptions, StrategyOnFull)
    from stream_manager.exceptions import NotEnoughMessagesException

    seed = int(os.environ.get("WEIR_CRASH_SEED") or random.SystemRandom().randrange(1 << 32))
    rounds = int(os.environ.get("WEIR_CRASH_ROUNDS") or 30)
    print("crash test: seed %d (repeat with WEIR_CRASH_SEED=%d), %d rounds, %d appender threads per stream"
          % (seed, seed, rounds, THREADS_PER_STREAM), flush=True)
    rng = random.Random(seed)
    report = Report("crash")
    t_begin = time.monotonic()

    definitions = [
        MessageStreamDefinition(name=STREAMS[0], strategy_on_full=StrategyOnFull.RejectNewData,
                                persistence=Persistence.File, flush_on_write=True, stream_segment_size=SEGMENT_SIZES[0]),
        MessageStreamDefinition(name=STREAMS[1], strategy_on_full=StrategyOnFull.RejectNewData,
                                persistence=Persistence.File, stream_segment_size=SEGMENT_SIZES[1]),
    ]
    expected_defs = []
    for d in definitions:
        w = d.as_dict()
        w.setdefault("maxSize", 268435456)
        w.setdefault("flushOnWrite", False)
        expected_defs.append(w)

    acks = [dict() for _ in STREAMS]       # seq -> Ack (every acknowledged message, all rounds)
    seen = [[] for _ in STREAMS]           # sha256 per sequence number, as read after the previous restart
    marker_seq = [-1 for _ in STREAMS]     # the driver's last verification append
    stats = {"acks": [0, 0], "unacked_present": [0, 0], "client_kills": 0}

    weir = Weir("crash")
    weir.start()
    # The driver's own SDK client: the token stays, the port changes with every start.
    os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = weir.token

    def connect():
        return StreamManagerClient(port=weir.port, request_timeout=60)

    try:
        with connect() as c:
            for d in definitions:
                c.create_message_stream(d)

        def verify(label, rnd, round_acks):
            """All checks against the weir that was just started; returns False if any failed."""
            problems = []
            loaded = [ANSI_RE.sub("", l) for l in weir.current_log() if "stream loaded" in l]
            with connect() as c:
                names = c.list_streams()
                if sorted(names) != sorted(STREAMS):
                    problems.append("list_streams after restart: %r, expected %r" % (names, sorted(STREAMS)))
                for si, name in enumerate(STREAMS):
                    if name not in names:
                        continue
                    info = c.describe_message_stream(name)
                    got_def = info.definition.as_dict()
                    if got_def != expected_defs[si]:
                        problems.append("%s: definition after restart %r, expected %r" % (name, got_def, expected_defs[si]))
                    st = info.storage_status
                    oldest, newest, total = st.oldest_sequence_number, st.newest_sequence_number, st.total_bytes
                    if oldest != 0:
                        problems.append("%s: oldestSequenceNumber %d after restart, expected 0 (nothing may leave these streams)"
                                        % (name, oldest))
                    # Read everything, 0..newest.
                    shas, idents, byte_sum, seq = [], {}, 0, 0
                    while seq <= newest:
                        try:
                            msgs = c.read_messages(name, ReadMessagesOptions(
                                desired_start_sequence_number=seq, min_message_count=1,
                                max_message_count=2000, read_timeout_millis=0))
                        except NotEnoughMessagesException as e:
                            problems.append("%s: describe says newest %d but reading from %d: %s" % (name, newest, seq, e))
                            break
                        for m in msgs:
                            if m.sequence_number != seq:
                                problems.append("%s: read from %d returned sequence number %d (gap or disorder)"
                                                % (name, seq, m.sequence_number))
                                seq = newest + 1
                                break
                            problem, ident = parse_message(si, seq, m.payload)
                            if problem:
                                problems.append("%s seq %d: %s" % (name, seq, problem))
                            elif ident in idents:
                                problems.append("%s: message %r stored twice, at %d and %d" % (name, ident, idents[ident], seq))
                            else:
                                idents[ident] = seq
                            shas.append(hashlib.sha256(m.payload).hexdigest())
                            byte_sum += len(m.payload) + 24
                            seq += 1
                    if len(shas) == newest + 1 and byte_sum != total:
                        problems.append("%s: totalBytes %d, but the %d messages make %d" % (name, total, len(shas), byte_sum))
                    # What the previous restart showed must still be there.
                    prev = seen[si]
                    for s in range(len(prev)):
                        if s >= len(shas):
                            problems.append("%s: %d messages present after the previous restart (seq 0..%d) are gone: "
                                            "newest is now %d" % (name, len(prev) - len(shas), len(prev) - 1, newest))
                            break
                        if shas[s] != prev[s]:
                            problems.append("%s seq %d: content changed since the previous restart" % (name, s))
                            break
                    # Every acknowledged message, of every round so far.
                    lost = []
                    for s, a in acks[si].items():
                        if s >= len(shas):
                            lost.append("seq %d (%s, %d bytes, acknowledged in round %d): missing" % (s, a.ident(), a.length, a.rnd))
                        elif shas[s] != a.sha:
                            stored = [k for k, v in idents.items() if v == s]
                            lost.append("seq %d (%s, acknowledged in round %d): stored payload differs (stored: %s)"
                                        % (s, a.ident(), a.rnd, "r%d t%d n%d" % stored[0] if stored else "not ours"))
                    if lost:
                        problems.append("%s (%s): %d acknowledged messages lost or changed, newest present %d, highest ack %d: %s"
                                        % (name, "flushOnWrite" if si == 0 else "no flushOnWrite", len(lost), newest,
                                           max(acks[si]), "; ".join(sorted(lost, key=lambda x: int(x.split()[1]))[:8])))
                    acked_here = sum(1 for a in round_acks if a.si == si)
                    unacked = len(shas) - (marker_seq[si] + 1) - acked_here
                    if rnd is not None:
                        stats["unacked_present"][si] += max(0, unacked)
                    seen[si] = shas
                    # The next append continues right after the newest message present.
                    payload = make_payload(rng, rnd or 0, si, MARKER_THREAD, 0)
                    got = c.append_message(name, payload)
                    if got != len(shas):
                        problems.append("%s: append after restart got sequence number %d, expected %d (newest present %d)"
                                        % (name, got, len(shas), len(shas) - 1))
                    if got in acks[si]:
                        problems.append("%s: append after restart reused sequence number %d, acknowledged in round %d (%s)"
                                        % (name, got, acks[si][got].rnd, acks[si][got].ident()))
                    else:
                        acks[si][got] = Ack(si, got, rnd or 0, MARKER_THREAD, 0, len(payload), hashlib.sha256(payload).hexdigest())
                    marker_seq[si] = got
                    print("  %s %s: %d messages (%d acknowledged in this round, %d written but not acknowledged), "
                          "%d bytes; next append got %d"
                          % (label, name, len(shas), acked_here, max(0, unacked), total, got), flush=True)
            for l in loaded:
                if "truncated_bytes=0" not in l:
                    print("  weir: " + l.strip(), flush=True)
            return problems

        for rnd in range(1, rounds + 1):
            delay = rng.uniform(0.05, 0.5)
            r = Round(weir, rnd, seed)
            if not r.ready.wait(CLIENT_READY_DEADLINE_S):
                r.proc.kill()
                raise HarnessError("round %d: the client did not connect within %ds:\n%s"
                                   % (rnd, CLIENT_READY_DEADLINE_S, r.stderr_tail()))
            time.sleep(delay)
            t_kill = time.monotonic()
            weir.crash()
            note = r.finish()
            if note:
                stats["client_kills"] += 1
                print("  round %d: %s" % (rnd, note), flush=True)
            problems = []
            round_acks = []
            errs_before_kill = []
            for t, line in r.lines:
                m = ACK_RE.fullmatch(line)
                if m:
                    si, seq, ar, th, n, length = (int(x) for x in m.groups()[:6])
                    a = Ack(si, seq, ar, th, n, length, m.group(7))
                    round_acks.append(a)
                    old = acks[si].get(seq)
                    if old is not None:
                        problems.append("%s: sequence number %d acknowledged twice: %s (round %d) and %s (round %d)"
                                        % (STREAMS[si], seq, old.ident(), old.rnd, a.ident(), rnd))
                    elif seq <= marker_seq[si]:
                        problems.append("%s: %s acknowledged with sequence number %d, not above %d present after "
                                        "the previous restart" % (STREAMS[si], a.ident(), seq, marker_seq[si]))
                    acks[si][seq] = a
                    stats["acks"][si] += 1
                    continue
                m = ERR_RE.fullmatch(line)
                if m:
                    if t < t_kill:
                        errs_before_kill.append(line)
                    continue
                if line not in ("READY", "END"):
                    problems.append("unexpected client output %r" % line)
            if errs_before_kill:
                problems.append("appends failed while weir was still running: %s" % "; ".join(errs_before_kill[:4]))
            n_acks = [sum(1 for a in round_acks if a.si == si) for si in range(len(STREAMS))]
            print("round %d: SIGKILL after %.0f ms of appending; acknowledged %d (%s) + %d (%s)"
                  % (rnd, delay * 1000, n_acks[0], STREAMS[0], n_acks[1], STREAMS[1]), flush=True)
            if sum(n_acks) == 0:
                print("  round %d: no append was acknowledged before the kill; client stderr:\n%s"
                      % (rnd, r.stderr_tail(1500)), flush=True)
            try:
                weir.start()
            except HarnessError as e:
                report.fail("round-%d" % rnd, "seed %d, SIGKILL after %.0f ms: weir did not start again on its store "
                            "(kept for inspection: %s): %s" % (seed, delay * 1000, weir.store, e))
                break
            broken = False
            try:
                problems += verify("after restart", rnd, round_acks)
            except Exception as e:  # the SDK raised: weir refused or failed a request of the checks
                problems.append("checking the restarted weir failed: %s: %s" % (type(e).__name__, e))
                broken = True
            if problems:
                report.fail("round-%d" % rnd, "seed %d, SIGKILL after %.0f ms:\n    %s\n%s"
                            % (seed, delay * 1000, "\n    ".join(problems), weir.log_tail(30)))
            else:
                report.ok("round-%d" % rnd, "%d + %d acknowledged appends all present" % tuple(n_acks))
            if broken:
                break

        if weir.proc is not None and weir.proc.poll() is None:
            weir.restart()
            try:
                problems = verify("after SIGTERM restart", None, [])
            except Exception as e:
                problems = ["checking the restarted weir failed: %s: %s" % (type(e).__name__, e)]
            if problems:
                report.fail("clean-restart", "seed %d:\n    %s\n%s" % (seed, "\n    ".join(problems), weir.log_tail(30)))
            else:
                report.ok("clean-restart", "%d + %d messages" % (len(seen[0]), len(seen[1])))
            weir.stop()
        else:
            print("store left for inspection: %s" % weir.store, flush=True)
    except BaseException:
        print("weir log tail:\n" + weir.log_tail(40), flush=True)
        weir.kill()
        raise
    print("crash test: seed %d; %d + %d acknowledged appends checked (%s / %s), %d + %d messages written but not "
          "acknowledged were also found; %.1fs"
          % (seed, stats["acks"][0], stats["acks"][1], STREAMS[0], STREAMS[1], stats["unacked_present"][0],
             stats["unacked_present"][1], time.monotonic() - t_begin), flush=True)
    return report.finish()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(sys.argv[2:])
    else:
        ensure_sdk_python()
        from harness import main_guard
        main_guard(main)
