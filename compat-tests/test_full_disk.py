"""A full disk: appends fail with a clear error, nothing stored is lost, reads keep
working, and appends succeed again once space is freed.

weir's store lives on a real, small file system: a 4 MiB tmpfs this test mounts.
As root it mounts it directly; otherwise it re-runs itself in a user and mount
namespace of its own (`unshare -rm`), where it may mount a tmpfs, and weir runs
in there with it (the network is shared, so the client reaches it on loopback).
If neither works it prints a SKIP line and exits 0, except under CI=true, where
that is a failure (exit 1).  Before weir starts, two filler files (1 MiB and 512 KiB) are
written into the tmpfs; the store fills the rest.  With a real SDK client
(stream-manager 1.1.2) and two File streams -- `full-flush` (flushOnWrite, small
segments, so the disk also fills while segments are sealed and opened) and
`full-noflush` (the defaults) -- appending unique 64 KiB payloads:

  fill          append to both streams until each append_message raises: it must be
                UnknownFailureException (status 1, UnknownFailure) whose message says
                "No space left"; then 4 KiB payloads into what is left, until each
                fails again the same way; every acknowledged sequence number is the
                previous one + 1 (from 0), a failed append takes none
  full-reads    while the disk is full: list and describe work (oldest 0, newest = the
                last acknowledged sequence number, totalBytes = payloads + 24 each) and
                every acknowledged message reads back byte for byte, nothing else
  freed         delete the 1 MiB filler: appends to both streams succeed and continue
                right after the last acknowledged sequence number; everything reads back
  refill        fill the disk again, same checks as fill
  restart-full  SIGTERM (exit 0) and start weir again on the full disk: it starts, every
                acknowledged message is there; one append per stream either succeeds
                with the next sequence number or fails as in fill
  freed-again   delete the 512 KiB filler: appends succeed and continue; all reads back
  restart       SIGTERM restart with room: everything is there, appends continue

The tmpfs is unmounted at the end, whatever happened.  No timing assertions.

    python test_full_disk.py        # run.sh uses the stream-manager venv's Python
"""
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TMPFS_SIZE = 4 * 1024 * 1024
FILLERS = [("filler-1", 1024 * 1024), ("filler-2", 512 * 1024)]   # freed in this order
PAYLOAD_LEN = 64 * 1024
SMALL_PAYLOAD_LEN = 4 * 1024                    # tops the disk up once 64 KiB no longer fit
STREAMS = ["full-flush", "full-noflush"]        # index 0: flushOnWrite + small segments, 1: defaults
FLUSH_SEGMENT_SIZE = 160 * 1024                 # two 64 KiB records per segment
FILL_MAX_ATTEMPTS = 200                         # 4 MiB / 64 KiB = 64: the disk is full long before
APPENDS_AFTER_FREE = [4, 2]                     # per stream, after freeing filler-1 / filler-2 (with room
                                                # to spare for segment headers, indexes and the restart)
RECORD_OVERHEAD = 24


def ensure_sdk_python():
    """The driver uses the stream-manager SDK itself; re-run under its venv if needed."""
    try:
        import stream_manager  # noqa: F401
    except ImportError:
        from harness import sdk_python
        py = sdk_python("py311-stream-manager-1.1.2")
        os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


USERNS_ENV = "WEIR_FULLDISK_IN_USERNS"      # set once the test re-ran itself under unshare -rm


def reexec_in_user_namespace():
    """Re-runs this test in a new user + mount namespace, where it is root of its own mounts.
    Does not return if that works; returns why not otherwise."""
    if os.environ.get(USERNS_ENV):
        return "not root even in the user namespace unshare -rm made (euid %d)" % os.geteuid()
    unshare = shutil.which("unshare")
    if unshare is None:
        return "not root, and no unshare command for a user namespace"
    try:
        probe = subprocess.run([unshare, "-rm", "true"], stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return "not root, and unshare -rm failed: %s" % e
    if probe.returncode != 0:
        return "not root, and unshare -rm failed (exit %d): %s" % (probe.returncode, probe.stderr.strip())
    print("full-disk test: not root (euid %d): re-running in a user + mount namespace (unshare -rm)"
          % os.geteuid(), flush=True)
    os.environ[USERNS_ENV] = "1"
    os.execv(unshare, [unshare, "-rm", sys.executable, os.path.abspath(__file__)] + sys.argv[1:])


def mount_tmpfs():
    """Mounts a TMPFS_SIZE tmpfs on a new temporary folder; returns (folder, None) or (None, why not)."""
    if os.geteuid() != 0:
        return None, reexec_in_user_namespace()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        return None, "no mount/umount command on PATH"
    mnt = tempfile.mkdtemp(prefix="weir-fulldisk-mnt-")
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0700" % TMPFS_SIZE, "tmpfs", mnt],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        os.rmdir(mnt)
        return None, "mount -t tmpfs failed: %s" % e
    if p.returncode != 0:
        os.rmdir(mnt)
        return None, "mount -t tmpfs failed (exit %d): %s" % (p.returncode, (p.stderr or p.stdout).strip())
    return mnt, None


def unmount(mnt):
    """Unmounts (lazily if it is still busy) and removes the folder; returns a problem or None."""
    problem = None
    p = subprocess.run(["umount", mnt], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        problem = "umount %s failed (exit %d): %s" % (mnt, p.returncode, p.stderr.strip())
        q = subprocess.run(["umount", "-l", mnt], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if q.returncode != 0:
            return problem + "; umount -l failed too: %s (the tmpfs is still mounted)" % q.stderr.strip()
    try:
        os.rmdir(mnt)
    except OSError as e:
        problem = (problem + "; " if problem else "") + "rmdir %s: %s" % (mnt, e)
    return problem


class Fatal(Exception):
    """weir stopped answering properly: the remaining phases cannot run."""


class FullDisk:
    def __init__(self, weir):
        from stream_manager.data import ResponseStatusCode
        self.weir = weir
        self.rng = random.Random("weir full disk")
        self.acks = [dict() for _ in STREAMS]       # seq -> payload, every acknowledged append
        self.next_seq = [0 for _ in STREAMS]        # the sequence number the next append must get
        self.attempts = [0 for _ in STREAMS]        # payload counter (failed appends included)
        self.unknown_failure = ResponseStatusCode.UnknownFailure
        self.client = None
        self.last_error = None

    # -- client ------------------------------------------------------------

    def connect(self):
        from stream_manager import StreamManagerClient
        if self.client is not None:
            self.close()
        self.client = StreamManagerClient(port=self.weir.port, request_timeout=60)

    def close(self):
        if self.client is not None:
            try:
                self.client.close()
            except Exception:
                pass
            self.client = None

    def weir_alive(self, what):
        if self.weir.proc is None or self.weir.proc.poll() is not None:
            rc = None if self.weir.proc is None else self.weir.proc.returncode
            raise Fatal("weir is not running %s (exit status %s):\n%s" % (what, rc, self.weir.log_tail(40)))

    def payload(self, si, length):
        n = self.attempts[si]
        self.attempts[si] += 1
        head = b"fulldisk s%d n%d len%d |" % (si, n, length)
        return head + self.rng.randbytes(length - len(head))

    def append(self, si, problems, length=PAYLOAD_LEN):
        """One append; returns True if acknowledged, False if it failed as a full disk must
        make it fail.  Any other outcome is a problem (Fatal if weir no longer answers)."""
        from stream_manager.exceptions import ConnectFailedException, StreamManagerException, UnknownFailureException
        name = STREAMS[si]
        data = self.payload(si, length)
        try:
            seq = self.client.append_message(name, data)
        except UnknownFailureException as e:
            status = getattr(e.status, "value", e.status)
            if e.status != self.unknown_failure or status != 1:
                problems.append("%s: append (next seq %d) raised UnknownFailureException with status %r, expected 1"
                                % (name, self.next_seq[si], e.status))
            if "No space left" not in str(e):
                problems.append("%s: append (next seq %d) failed with a message that does not say \"No space left\": %r"
                                % (name, self.next_seq[si], str(e)))
            self.last_error = "%s: %s (status %s)" % (name, e, status)
            return False
        except (ConnectFailedException, ConnectionError, TimeoutError, OSError) as e:
            self.weir_alive("after an append to %s failed with %s: %s" % (name, type(e).__name__, e))
            raise Fatal("%s: append (next seq %d) raised %s: %s\n%s"
                        % (name, self.next_seq[si], type(e).__name__, e, self.weir.log_tail(30)))
        except StreamManagerException as e:
            problems.append("%s: append (next seq %d) raised %s (status %r): %s, expected UnknownFailureException "
                            "saying \"No space left\"" % (name, self.next_seq[si], type(e).__name__, e.status, e))
            self.weir_alive("after that append")
            return False
        if seq != self.next_seq[si]:
            kind = "reused an acknowledged sequence number" if seq in self.acks[si] else "skipped sequence numbers"
            problems.append("%s: append acknowledged with sequence number %d, expected %d (%s)"
                            % (name, seq, self.next_seq[si], kind))
        if seq in self.acks[si]:
            problems.append("%s: sequence number %d acknowledged twice" % (name, seq))
        self.acks[si][seq] = data
        self.next_seq[si] = max(self.next_seq[si], seq + 1)
        return True

    # -- phases ------------------------------------------------------------

    def fill(self, label):
        """Append 64 KiB payloads to both streams (alternating) until each has failed once,
        then 4 KiB ones (into what the cut-off failed appends left) until each fails again."""
        problems = []
        errors = []
        acked = {}
        for length in (PAYLOAD_LEN, SMALL_PAYLOAD_LEN):
            open_streams = list(range(len(STREAMS)))
            acked[length] = [0 for _ in STREAMS]
            attempts = 0
            while open_streams:
                if attempts >= FILL_MAX_ATTEMPTS:
                    problems.append("the disk did not fill: %d appends of %d bytes (%s acknowledged) without a "
                                    "failure for %s; is weir writing to %s?"
                                    % (attempts, length, acked[length], [STREAMS[i] for i in open_streams],
                                       self.weir.store))
                    break
                for si in list(open_streams):
                    attempts += 1
                    if self.append(si, problems, length):
                        acked[length][si] += 1
                    else:
                        errors.append(self.last_error)
                        open_streams.remove(si)
        self.weir_alive("after the disk filled")
        detail = "%s (%s) appends of 64 KiB, then %s of 4 KiB acknowledged before the failures; free on the " \
                 "tmpfs: %d bytes; first error: %s" % (
                     " + ".join(str(a) for a in acked[PAYLOAD_LEN]), " / ".join(STREAMS),
                     " + ".join(str(a) for a in acked[SMALL_PAYLOAD_LEN]), self.free_bytes(),
                     errors[0] if errors else None)
        print("  %s: %s" % (label, detail), flush=True)
        return problems, detail

    def append_each(self, count):
        """`count` 64 KiB appends per stream, each of which must succeed."""
        problems = []
        for _ in range(count):
            for si in range(len(STREAMS)):
                before = self.next_seq[si]
                if not self.append(si, problems):
                    problems.append("%s: append after space was freed failed (next seq %d): %s; %d bytes free"
                                    % (STREAMS[si], before, self.last_error, self.free_bytes()))
        self.weir_alive("after the appends")
        return problems

    def verify(self):
        """list, describe, and every acknowledged message byte for byte (and nothing else)."""
        from stream_manager.data import ReadMessagesOptions
        from stream_manager.exceptions import StreamManagerException
        problems = []
        c = self.client
        try:
            names = c.list_streams()
            if sorted(names) != sorted(STREAMS):
                problems.append("list_streams: %r, expected %r" % (names, sorted(STREAMS)))
            for si, name in enumerate(STREAMS):
                acks = self.acks[si]
                last = max(acks) if acks else -1
                st = c.describe_message_stream(name).storage_status
                want_bytes = sum(len(p) + RECORD_OVERHEAD for p in acks.values())
                if (st.oldest_sequence_number, st.newest_sequence_number, st.total_bytes) != (0, last, want_bytes):
                    problems.append("%s: describe says oldest %d, newest %d, totalBytes %d; expected 0, %d (the last "
                                    "acknowledged), %d" % (name, st.oldest_sequence_number, st.newest_sequence_number,
                                                           st.total_bytes, last, want_bytes))
                got = {}
                seq = 0
                newest = max(last, st.newest_sequence_number)
                while seq <= newest:
                    msgs = c.read_messages(name, ReadMessagesOptions(
                        desired_start_sequence_number=seq, min_message_count=1,
                        max_message_count=1000, read_timeout_millis=0))
                    if not msgs:
                        problems.append("%s: read from %d returned nothing" % (name, seq))
                        break
                    for m in msgs:
                        got[m.sequence_number] = m.payload
                    seq = msgs[-1].sequence_number + 1
                lost = [s for s in sorted(acks) if s not in got]
                changed = [s for s in sorted(acks) if s in got and got[s] != acks[s]]
                extra = [s for s in sorted(got) if s not in acks]
                if lost:
                    problems.append("%s: acknowledged sequence numbers missing: %s" % (name, compress(lost)))
                if changed:
                    problems.append("%s: acknowledged messages that read back different: %s (first: %d bytes starting %r)"
                                    % (name, compress(changed), len(got[changed[0]]), got[changed[0]][:32]))
                if extra:
                    problems.append("%s: messages stored that were never acknowledged: %s (first starts %r)"
                                    % (name, compress(extra), got[extra[0]][:32]))
        except StreamManagerException as e:
            problems.append("reading back failed: %s (status %r): %s" % (type(e).__name__, e.status, e))
            self.weir_alive("after a failed read")
        except (ConnectionError, TimeoutError, OSError) as e:
            self.weir_alive("after a read failed with %s: %s" % (type(e).__name__, e))
            raise Fatal("reading back failed: %s: %s\n%s" % (type(e).__name__, e, self.weir.log_tail(30)))
        return problems

    def free_bytes(self):
        st = os.statvfs(self.weir.store)
        return st.f_bavail * st.f_frsize

    def counts(self):
        return " + ".join("%d" % len(a) for a in self.acks)


def compress(seqs):
    """[1,2,3,7] -> '1..3, 7'"""
    out, i = [], 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(str(seqs[i]) if i == j else "%d..%d" % (seqs[i], seqs[j]))
        i = j + 1
    return ", ".join(out)


def main():
    from harness import HarnessError, Report, Weir, skip
    from stream_manager.data import MessageStreamDefinition, Persistence, StrategyOnFull

    t_begin = time.monotonic()
    mnt, why = mount_tmpfs()
    if mnt is None:
        return skip("full-disk test", "%s (it needs a small tmpfs of its own for weir's store)" % why)
    # A SIGTERM to the driver still unmounts (the finally below runs).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report = Report("full-disk")
    weir = None
    fd = None
    try:
        st = os.statvfs(mnt)
        size = st.f_blocks * st.f_frsize
        if size != TMPFS_SIZE:
            raise HarnessError("the tmpfs on %s has %d bytes, expected %d" % (mnt, size, TMPFS_SIZE))
        for name, n in FILLERS:
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(b"\xa5" * n)
        weir = Weir("fulldisk", store=os.path.join(mnt, "store"))
        weir.start()
        print("full-disk test: %d KiB tmpfs on %s, fillers %s, %d bytes free at weir's start"
              % (TMPFS_SIZE // 1024, mnt, ", ".join("%s %d KiB" % (n, s // 1024) for n, s in FILLERS),
                 os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize), flush=True)
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = weir.token
        fd = FullDisk(weir)
        fd.connect()
        fd.client.create_message_stream(MessageStreamDefinition(
            name=STREAMS[0], strategy_on_full=StrategyOnFull.RejectNewData, persistence=Persistence.File,
            flush_on_write=True, stream_segment_size=FLUSH_SEGMENT_SIZE))
        fd.client.create_message_stream(MessageStreamDefinition(
            name=STREAMS[1], strategy_on_full=StrategyOnFull.RejectNewData, persistence=Persistence.File))

        def phase(case, fn):
            try:
                problems, detail = fn()
            except Fatal as e:
                report.fail(case, str(e))
                return False
            if problems:
                report.fail(case, "\n    " + "\n    ".join(problems) + "\n" + weir.log_tail(20))
            else:
                report.ok(case, detail)
            return True

        def free(i):
            name, n = FILLERS[i]
            os.remove(os.path.join(mnt, name))
            print("  deleted %s (%d KiB): %d bytes free" % (name, n // 1024, fd.free_bytes()), flush=True)

        def freed(i):
            free(i)
            problems = fd.append_each(APPENDS_AFTER_FREE[i])
            problems += fd.verify()
            return problems, "%d more appends per stream continued the sequence; %s messages read back" % (
                APPENDS_AFTER_FREE[i], fd.counts())

        def restart(full):
            before = fd.free_bytes()
            fd.close()
            try:
                weir.restart()
            except HarnessError as e:
                raise Fatal("SIGTERM restart on the %s disk (%d bytes free): %s"
                            % ("full" if full else "freed", before, e))
            fd.connect()
            problems = fd.verify()
            for l in [l for l in weir.current_log() if "WARN" in l or "ERROR" in l]:
                print("  weir: " + l.strip(), flush=True)
            if full:
                # The disk is as full as before: an append may fit (nothing is promised about a
                # few bytes freed at start-up) or fail as a full disk must make it.
                outcomes = []
                for si in range(len(STREAMS)):
                    ok = fd.append(si, problems)
                    outcomes.append("%s %s" % (STREAMS[si], "acknowledged" if ok else "refused (No space left)"))
                fd.weir_alive("after the appends on the full disk")
                problems += fd.verify()
                return problems, "started on the full disk (%d bytes free); %s messages read back; %s" % (
                    before, fd.counts(), ", ".join(outcomes))
            problems += fd.append_each(1)
            problems += fd.verify()
            return problems, "%s messages read back, appends continue" % fd.counts()

        def full_reads():
            problems = fd.verify()
            return problems, "%s messages read back byte for byte with the disk full (%d bytes free)" % (
                fd.counts(), fd.free_bytes())

        phases = [
            ("fill", lambda: fd.fill("fill")),
            ("full-reads", full_reads),
            ("freed", lambda: freed(0)),
            ("refill", lambda: fd.fill("refill")),
            ("restart-full", lambda: restart(True)),
            ("freed-again", lambda: freed(1)),
            ("restart", lambda: restart(False)),
        ]
        for case, fn in phases:
            if not phase(case, fn):
                break
        fd.close()
        if weir.proc is not None and weir.proc.poll() is None:
            try:
                weir.stop()
            except HarnessError as e:
                report.fail("stop", str(e))
        else:
            weir.kill()
        no_space = [l for l in weir.log_lines if "No space" in l]
        if no_space:
            print("weir logged %d lines about the full disk; the first:\n    %s" % (len(no_space), no_space[0].strip()),
                  flush=True)
    except BaseException:
        if weir is not None:
            print("weir log tail:\n" + weir.log_tail(40), flush=True)
        raise
    finally:
        if fd is not None:
            fd.close()
        if weir is not None:
            weir.kill()
        problem = unmount(mnt)
        if problem:
            report.fail("unmount", problem)
    print("full-disk test: %.1fs" % (time.monotonic() - t_begin), flush=True)
    return report.finish()


if __name__ == "__main__":
    ensure_sdk_python()
    from harness import main_guard
    main_guard(main)
