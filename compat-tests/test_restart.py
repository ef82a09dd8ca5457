"""Issue 3: File streams (definitions, storage status, data, sequence numbers) survive a restart of weir.

Part 0 (TTL, which is at least 60 s): File streams that TTL empties -- a
RejectNewData stream filled to the brim, an OverwriteOldestData stream over two
segments, a small one, and a control stream without TTL -- on two weirs: one
keeps running while the minute passes (stream-manager 1.1.2), the other is
stopped meanwhile and started again once the data is out of date (greengrasssdk
1.5.0).  Then: every stream is empty with its sequence numbers kept (oldest =
newest + 1), appends continue from there, the RejectNewData stream takes data
again until full; SIGTERM restart; everything exactly as before; appends go on;
another restart, same again.  Parts 1 and 2 run while the minute passes.

Part 1, for each Python SDK (greengrasssdk 1.5.0 on protocol 1.0.0,
greengrasssdk 1.6.1 and stream-manager 1.1.2 on 1.1.0), against one weir and
its store, with a SIGTERM restart (new process, same store) between phases:

  populate  create File streams of every kind -- default definition; every export
            type with TTL and flushOnWrite; flushOnWrite off over several segments;
            a full RejectNewData stream; an OverwriteOldestData stream that has
            dropped segments; an updated stream (1.1.0 SDKs); an empty one; names
            with spaces, commas, dots, `.log`, non-ASCII letters, `..`, 255-character
            names that share a long prefix -- plus a Memory stream, a deleted stream
            and a deleted-then-recreated one.
  restart
  check1    everything reads back exactly as before the restart (the driver compares
            describe + every message incl. ingest time + list); definitions with
            defaults filled; the Memory stream is gone; the deleted one stays deleted;
            appends continue the sequence (OverwriteOldestData keeps dropping, the
            full stream keeps refusing); recreate after delete starts at 0; update
            again (TTL and more).
  restart
  check2    again exactly as check1 left it (the update persisted); delete everything.
  restart
  check3    nothing came back; a recreated stream starts at 0.

Part 2: the existing conformance program (conformance.py) with each Python SDK,
against a weir restarted (SIGTERM, same store, same port) between every two
cases; Memory streams the program created are forgotten at each restart.

    python test_restart.py                                  # driver
    python test_restart.py client <sdk module> <phase>      # one phase (internal; Python 3.7 compatible)
    WEIR_RESTART_SKIP_TTL=1 python test_restart.py         # without part 0 (saves the minute)
    python test_restart.py conformance <sdk module>         # part 2 client (internal)
"""
import hashlib
import importlib
import json
import os
import sys
import time
import traceback

# ================================================================ shared

LONG_PREFIX = "x" * 10 + "." * 240             # %2E-encoded: far beyond weir's 200-byte folder names
LONG_A = LONG_PREFIX + "AAAAA"                 # 255 characters, the SDK's maximum
LONG_B = LONG_PREFIX + "BBBBB"
UMLAUT_A = "\u00fc" * 200 + ".a"               # multi-byte UTF-8, shortened folder name too
UMLAUT_B = "\u00fc" * 200 + ".b"
ODD_NAMES = ["my stream, v1.log", "Str\u00f6mung \u00e4.segment.log", "..", "a.b..c, d-e_f", LONG_A, LONG_B,
             UMLAUT_A, UMLAUT_B]
MEMORY_STREAMS = {"rs-memory"}
TTL_MS = 60000                                 # the smallest TTL the SDKs and weir accept
TTL_WAIT_S = 90                                # bound on waiting for a TTL to take data away


def short(name):
    return name if len(name) <= 40 else name[:18] + "..." + name[-12:] + " (%d chars)" % len(name)


# ================================================================ client (Python 3.7 compatible)

from checks import CaseFailure, eq, every_export, need  # noqa: E402  (shared with the other client programs)


class Client(object):
    """One phase, run by one SDK."""

    def __init__(self, module, phase):
        self.suite = "ttl" if phase.startswith("ttl_") else "main"
        self.sm = importlib.import_module(module)
        self.data = importlib.import_module(module + ".data")
        self.exc = importlib.import_module(module + ".exceptions")
        self.full = hasattr(self.sm.StreamManagerClient, "update_message_stream")   # protocol 1.1.0 SDKs
        self.counts = {"PASS": 0, "FAIL": 0}
        self.c = self.sm.StreamManagerClient(request_timeout=60)

    # ------------------------------------------------------------ output

    def out(self, line):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def case(self, name, fn):
        try:
            detail = fn()
            self.counts["PASS"] += 1
            self.out("PASS {}{}".format(name, " ({})".format(detail) if detail else ""))
        except CaseFailure as e:
            self.counts["FAIL"] += 1
            self.out("FAIL {}: {}".format(name, e))
        except Exception as e:  # an SDK error nobody expected
            tb = traceback.format_exc().strip().splitlines()
            self.counts["FAIL"] += 1
            self.out("FAIL {}: unexpected {}: {} [{}]".format(name, type(e).__name__, e, " | ".join(tb[-3:])))

    # ------------------------------------------------------------ model

    def definition(self, name, strategy=0, **kw):
        return self.data.MessageStreamDefinition(name=name, strategy_on_full=self.data.StrategyOnFull(strategy), **kw)

    def exports(self):
        return every_export(self.data, self.full, "rs-defaults")

    def initial_definitions(self):
        """name -> definition the stream is created with in `populate`."""
        d, P = self.data, self.data.Persistence
        defs = [
            self.definition("rs-defaults"),
            self.definition("rs-exports", strategy=1, max_size=1048576, stream_segment_size=65536,
                            time_to_live_millis=3600000, persistence=P.File, flush_on_write=True,
                            export_definition=self.exports()),
            self.definition("rs-noflush", strategy=1, stream_segment_size=1024, time_to_live_millis=3600000,
                            persistence=P.File, flush_on_write=False),
            self.definition("rs-reject-full", strategy=0, max_size=1024, stream_segment_size=1024),
            self.definition("rs-overwrite", strategy=1, max_size=4096, stream_segment_size=1024,
                            persistence=P.File),
            self.definition("rs-empty", strategy=1),
            self.definition("rs-memory", strategy=1, persistence=P.Memory),
            self.definition("rs-deleted", strategy=1),
            self.definition("rs-recreated", strategy=0, flush_on_write=True),
        ]
        if self.full:
            defs += [
                self.definition("rs-update", strategy=0, time_to_live_millis=60000, export_definition=d.ExportDefinition(
                    kinesis=[d.KinesisConfig(identifier="K1", kinesis_stream_name="s1")])),
            ]
        defs += [self.definition(n, strategy=1) for n in ODD_NAMES]
        return dict((x.name, x) for x in defs)

    def update_1(self):
        d = self.data
        return self.definition("rs-update", strategy=1, max_size=10485760, time_to_live_millis=120000,
                               persistence=d.Persistence.File, flush_on_write=True,
                               export_definition=d.ExportDefinition(
                                   iot_analytics=[d.IoTAnalyticsConfig(identifier="IotA1", iot_channel="ch")],
                                   kinesis=[d.KinesisConfig(identifier="K1", kinesis_stream_name="s1", batch_size=50,
                                                            disabled=True)]))

    def update_2(self):
        return self.definition("rs-update", strategy=1, max_size=10485760, time_to_live_millis=240000,
                               persistence=self.data.Persistence.File, flush_on_write=False)

    def ttl_definitions(self):
        """The TTL suite: TTL is at least 60 s (SDK and weir), so these streams empty a minute after populate."""
        defs = [
            self.definition("ttl-emptied", strategy=1, time_to_live_millis=TTL_MS, stream_segment_size=1024),
            self.definition("ttl-reject", strategy=0, max_size=2048, stream_segment_size=1024,
                            time_to_live_millis=TTL_MS),
            self.definition("ttl-mixed", strategy=1, stream_segment_size=1024, time_to_live_millis=TTL_MS,
                            flush_on_write=True),
            self.definition("ttl-control", strategy=1),
        ]
        return dict((x.name, x) for x in defs)

    def all_names(self):
        if self.suite == "ttl":
            return sorted(self.ttl_definitions())
        return sorted(set(self.initial_definitions()) | {"rs-after-restart"})

    @staticmethod
    def stored(d):
        w = d.as_dict()
        w.setdefault("maxSize", 268435456)
        w.setdefault("streamSegmentSize", 16777216)
        w.setdefault("persistence", 0)
        w.setdefault("flushOnWrite", False)
        return w

    def stored_view(self, d):
        """The SDK's view of the stored definition."""
        return self.data.MessageStreamDefinition.from_dict(self.stored(d)).as_dict()

    @staticmethod
    def payload(name, i, size=None):
        base = ("%s #%d|" % (name, i)).encode("utf-8")
        if size is None:
            size = len(base) + 20 + i % 50
        fill = hashlib.sha256(base).digest()
        body = base + fill * (size // len(fill) + 1)
        return body[:max(size, len(base))]

    # ------------------------------------------------------------ operations

    def opts(self, start=None, min_count=1, max_count=None, timeout=0):
        return self.data.ReadMessagesOptions(desired_start_sequence_number=start, min_message_count=min_count,
                                             max_message_count=max_count, read_timeout_millis=timeout)

    def raises(self, exc_name, fn, *args):
        cls = getattr(self.exc, exc_name)
        try:
            result = fn(*args)
        except cls as e:
            if type(e).__name__ != exc_name:
                raise CaseFailure("expected {}, got {}: {}".format(exc_name, type(e).__name__, e))
            return e
        except Exception as e:  # noqa: B902
            raise CaseFailure("expected {}, got {}: {}".format(exc_name, type(e).__name__, e))
        raise CaseFailure("expected {}, but the call succeeded and returned {!r}".format(exc_name, result))

    def status(self, name):
        st = self.c.describe_message_stream(name).storage_status
        return st.oldest_sequence_number, st.newest_sequence_number, st.total_bytes

    def read_all(self, name):
        oldest, newest, _ = self.status(name)
        msgs, seq = [], oldest
        while seq <= newest:
            got = self.c.read_messages(name, self.opts(start=seq, min_count=1, max_count=1000))
            need(got, "read of {} from {} returned nothing".format(short(name), seq))
            msgs.extend(got)
            seq = got[-1].sequence_number + 1
        return msgs

    def append_expect(self, name, payload, seq):
        eq(self.c.append_message(name, payload), seq, "sequence number of an append to " + short(name))

    def check_tail(self, name, expected):
        """expected: [(seq, payload)] must be the newest messages of the stream."""
        start = expected[0][0]
        got = self.c.read_messages(name, self.opts(start=start, min_count=len(expected), max_count=len(expected)))
        eq([(m.sequence_number, m.payload) for m in got], expected, "messages read back from " + short(name))
        for m in got:
            eq(m.stream_name, name, "message.stream_name")

    def fill_until_refused(self, name, first_seq, limit=100):
        """Append 100-byte payloads until InvalidRequest; returns how many were accepted."""
        for i in range(limit):
            try:
                seq = self.c.append_message(name, self.payload(name, first_seq + i, 100))
            except self.exc.InvalidRequestException:
                return i
            eq(seq, first_seq + i, "sequence number of append #{} to {}".format(i, name))
        raise CaseFailure("{} appends of 124 bytes to {} were all accepted".format(limit, name))

    def wait_status(self, name, pred, what):
        deadline = time.monotonic() + TTL_WAIT_S
        while True:
            st = self.status(name)
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise CaseFailure("{}: storage status of {} still {} after {}s".format(what, name, st, TTL_WAIT_S))
            time.sleep(0.1)

    def dump(self, tag):
        """Everything the SDK can see, as one JSON line for the driver to compare across restarts."""
        state = {"list": self.c.list_streams(), "streams": {}}
        for name in self.all_names():
            try:
                info = self.c.describe_message_stream(name)
            except self.exc.ResourceNotFoundException:
                state["streams"][name] = None
                continue
            msgs = self.read_all(name)
            state["streams"][name] = {
                "info": info.as_dict(),
                "messages": [[m.sequence_number, m.ingest_time, m.payload.hex()] for m in msgs]}
        self.out("{} {}".format(tag, json.dumps(state, sort_keys=True)))
        return state

    # ------------------------------------------------------------ phases

    def populate(self):
        defs = self.initial_definitions()
        c = self.c

        def create_all():
            for d in defs.values():
                c.create_message_stream(d)
            for name, d in defs.items():
                info = c.describe_message_stream(name).as_dict()
                eq(info["definition"], self.stored_view(d), "definition of " + short(name))
                eq(self.status(name), (0, -1, 0), "storage status of new stream " + short(name))
            return "{} streams".format(len(defs))
        self.case("populate-create", create_all)

        def appends():
            plan = {"rs-defaults": 5, "rs-exports": 10, "rs-memory": 3, "rs-deleted": 3, "rs-recreated": 3}
            for n in ODD_NAMES:
                plan[n] = 3
            for name, count in sorted(plan.items()):
                for i in range(count):
                    self.append_expect(name, self.payload(name, i), i)
            for i in range(30):      # 124 bytes each: three 1024-byte segments and a bit
                self.append_expect("rs-noflush", self.payload("rs-noflush", i, 100), i)
            c.delete_message_stream("rs-deleted")
            c.delete_message_stream("rs-recreated")
            c.create_message_stream(defs["rs-recreated"])
            for i in range(2):
                self.append_expect("rs-recreated", self.payload("rs-recreated", 100 + i), i)
            self.raises("ResourceNotFoundException", c.describe_message_stream, "rs-deleted")
        self.case("populate-append-delete-recreate", appends)

        def reject_full():
            n = self.fill_until_refused("rs-reject-full", 0)
            need(n > 0, "the first append to an empty 1024-byte stream was refused")
            self.raises("InvalidRequestException", c.append_message, "rs-reject-full", b"z" * 100)
            eq(self.status("rs-reject-full"), (0, n - 1, n * 124), "storage status of the full stream")
            return "{} accepted".format(n)
        self.case("populate-reject-full", reject_full)

        def overwrite():
            for i in range(60):
                self.append_expect("rs-overwrite", self.payload("rs-overwrite", i, 100), i)
            oldest, newest, total = self.status("rs-overwrite")
            need(oldest > 0, "oldest still 0 after 7440 bytes into a 4096-byte OverwriteOldestData stream")
            eq((newest, total), (59, (60 - oldest) * 124), "newest and totalBytes")
            return "oldest {}".format(oldest)
        self.case("populate-overwrite-dropped-segments", overwrite)

        if self.full:
            def update():
                for i in range(2):
                    self.append_expect("rs-update", self.payload("rs-update", i), i)
                c.update_message_stream(self.update_1())
                eq(c.describe_message_stream("rs-update").as_dict()["definition"], self.stored_view(self.update_1()),
                   "definition after update")
            self.case("populate-update", update)

        def listed():
            eq(c.list_streams(), sorted(n for n in defs if n != "rs-deleted"), "list_streams")
        self.case("populate-list", listed)
        self.dump("STATE-END")

    def check1(self):
        c = self.c
        before = self.dump("STATE-BEGIN")["streams"]
        defs = self.initial_definitions()
        if self.full:
            defs["rs-update"] = self.update_1()
        file_names = sorted(n for n in defs if n not in MEMORY_STREAMS and n != "rs-deleted")

        def definitions():
            for name in file_names:
                info = c.describe_message_stream(name).as_dict()
                eq(info["definition"], self.stored_view(defs[name]), "definition of {} after restart".format(short(name)))
            return "{} File streams".format(len(file_names))
        self.case("restart-definitions-defaults-filled", definitions)

        def memory_gone():
            self.raises("ResourceNotFoundException", c.describe_message_stream, "rs-memory")
            self.raises("ResourceNotFoundException", c.append_message, "rs-memory", b"x")
            self.raises("ResourceNotFoundException", c.read_messages, "rs-memory", self.opts(start=0))
        self.case("restart-memory-stream-gone", memory_gone)

        def deleted():
            self.raises("ResourceNotFoundException", c.describe_message_stream, "rs-deleted")
            self.raises("ResourceNotFoundException", c.delete_message_stream, "rs-deleted")
        self.case("restart-deleted-stays-deleted", deleted)

        def listed():
            eq(c.list_streams(), file_names, "list_streams after restart")
        self.case("restart-list", listed)

        def continue_seq():
            done = []
            for name in file_names:
                if name in ("rs-reject-full", "rs-overwrite"):
                    continue
                b = before.get(name)
                need(b is not None, "{} did not come back".format(short(name)))
                st = b["info"]["storageStatus"]
                nxt = st["newestSequenceNumber"] + 1
                p = self.payload(name, nxt)
                self.append_expect(name, p, nxt)
                self.check_tail(name, [(nxt, p)])
                eq(self.status(name), (st["oldestSequenceNumber"], nxt, st["totalBytes"] + len(p) + 24),
                   "storage status of {} after the append".format(short(name)))
                done.append(nxt)
            return "{} streams".format(len(done))
        self.case("restart-appends-continue-sequence", continue_seq)

        def overwrite():
            st = before["rs-overwrite"]["info"]["storageStatus"]
            oldest = st["oldestSequenceNumber"]
            first = st["newestSequenceNumber"] + 1
            for i in range(first, first + 20):
                self.append_expect("rs-overwrite", self.payload("rs-overwrite", i, 100), i)
                o, n, t = self.status("rs-overwrite")
                need(o >= oldest, "oldest went back from {} to {}".format(oldest, o))
                oldest = o
                eq((n, t), (i, (i + 1 - o) * 124), "newest and totalBytes after append {}".format(i))
                need(t <= 4096, "totalBytes {} above maxSize".format(t))
            msgs = self.read_all("rs-overwrite")
            eq([(m.sequence_number, m.payload) for m in msgs],
               [(i, self.payload("rs-overwrite", i, 100)) for i in range(oldest, first + 20)], "messages")
            return "oldest {} -> {}".format(st["oldestSequenceNumber"], oldest)
        self.case("restart-overwrite-keeps-dropping", overwrite)

        def still_full():
            for name in ["rs-reject-full"]:
                st = before[name]["info"]["storageStatus"]
                self.raises("InvalidRequestException", c.append_message, name, self.payload(name, 999, 100))
                eq(self.status(name), (st["oldestSequenceNumber"], st["newestSequenceNumber"], st["totalBytes"]),
                   "storage status of full " + name)
        self.case("restart-reject-still-full", still_full)

        def recreate():
            c.create_message_stream(defs["rs-deleted"])
            eq(self.status("rs-deleted"), (0, -1, 0), "storage status of the recreated stream")
            self.append_expect("rs-deleted", self.payload("rs-deleted", 1000), 0)
            c.create_message_stream(defs["rs-memory"])
            self.append_expect("rs-memory", self.payload("rs-memory", 1000), 0)
            c.create_message_stream(self.definition("rs-after-restart", flush_on_write=True))
            for i in range(2):
                self.append_expect("rs-after-restart", self.payload("rs-after-restart", i), i)
        self.case("restart-recreate-starts-at-0", recreate)

        if self.full:
            def update():
                c.update_message_stream(self.update_2())
                eq(c.describe_message_stream("rs-update").as_dict()["definition"], self.stored_view(self.update_2()),
                   "definition after the second update")
            self.case("restart-update-again", update)
        self.dump("STATE-END")

    def check2(self):
        c = self.c
        before = self.dump("STATE-BEGIN")["streams"]

        if self.full:
            def updated():
                eq(c.describe_message_stream("rs-update").as_dict()["definition"], self.stored_view(self.update_2()),
                   "definition after the update and a restart")
            self.case("restart2-update-persisted", updated)

        def continue_seq():
            for name in ("rs-defaults", "rs-deleted", "rs-after-restart", "my stream, v1.log", LONG_A):
                nxt = before[name]["info"]["storageStatus"]["newestSequenceNumber"] + 1
                p = self.payload(name, nxt)
                self.append_expect(name, p, nxt)
                self.check_tail(name, [(nxt, p)])
        self.case("restart2-appends-continue-sequence", continue_seq)

        def memory_gone_again():
            self.raises("ResourceNotFoundException", c.describe_message_stream, "rs-memory")
        self.case("restart2-memory-stream-gone", memory_gone_again)

        def delete_all():
            names = c.list_streams()
            for name in names:
                c.delete_message_stream(name)
            eq(c.list_streams(), [], "list_streams after deleting everything")
            return "{} deleted".format(len(names))
        self.case("restart2-delete-everything", delete_all)
        self.dump("STATE-END")

    def check3(self):
        c = self.c
        self.dump("STATE-BEGIN")

        def nothing_back():
            eq(c.list_streams(), [], "list_streams after deleting everything and a restart")
            d = self.initial_definitions()["my stream, v1.log"]
            c.create_message_stream(d)
            eq(self.status(d.name), (0, -1, 0), "storage status of the recreated stream")
            self.append_expect(d.name, b"again", 0)
        self.case("restart3-deleted-stay-deleted-recreate-at-0", nothing_back)

    # ------------------------------------------------------------ TTL suite

    def ttl_populate(self):
        c = self.c
        defs = self.ttl_definitions()

        def populate():
            for d in defs.values():
                c.create_message_stream(d)
                eq(c.describe_message_stream(d.name).as_dict()["definition"], self.stored_view(d),
                   "definition of " + d.name)
            for i in range(3):
                self.append_expect("ttl-emptied", self.payload("ttl-emptied", i), i)
                self.append_expect("ttl-control", self.payload("ttl-control", i), i)
            for i in range(10):          # a sealed 1024-byte segment and the active one
                self.append_expect("ttl-mixed", self.payload("ttl-mixed", i, 100), i)
            n = self.fill_until_refused("ttl-reject", 0)
            return "ttl-reject full after {} messages".format(n)
        self.case("ttl-populate", populate)
        self.dump("STATE-END")

    def ttl_check1(self):
        """Once TTL has taken every message (weir ran, or was down, meanwhile)."""
        c = self.c
        with open(os.environ["WEIR_RESTART_PREV_STATE"]) as f:
            prev = json.load(f)["streams"]
        newest = dict((n, prev[n]["info"]["storageStatus"]["newestSequenceNumber"]) for n in prev if prev[n])
        expiring = ["ttl-emptied", "ttl-reject", "ttl-mixed"]

        def emptied():
            for name in expiring:
                self.wait_status(name, lambda st: st[2] == 0, "TTL {} ms emptying {}".format(TTL_MS, name))
                eq(self.status(name), (newest[name] + 1, newest[name], 0),
                   "storage status of {} once TTL took every message".format(name))
                self.raises("NotEnoughMessagesException", c.read_messages, name, self.opts(start=0))
            st = prev["ttl-control"]["info"]["storageStatus"]
            eq(self.status("ttl-control"), (0, 2, st["totalBytes"]), "storage status of the stream without TTL")
        self.case("ttl-emptied-streams-keep-sequence-numbers", emptied)

        def continue_seq():
            for name in ("ttl-emptied", "ttl-control"):
                p = self.payload(name, newest[name] + 1)
                self.append_expect(name, p, newest[name] + 1)
                self.check_tail(name, [(newest[name] + 1, p)])
            for i in range(newest["ttl-mixed"] + 1, newest["ttl-mixed"] + 6):
                self.append_expect("ttl-mixed", self.payload("ttl-mixed", i, 100), i)
            m = self.fill_until_refused("ttl-reject", newest["ttl-reject"] + 1)
            need(m > 0, "TTL emptied the RejectNewData stream, but it still refuses appends")
            eq(self.status("ttl-reject")[0], newest["ttl-reject"] + 1, "oldest of ttl-reject")
            return "ttl-reject refilled with {} messages".format(m)
        self.case("ttl-appends-continue-after-ttl", continue_seq)
        self.dump("STATE-END")

    def ttl_check2(self):
        c = self.c
        before = self.dump("STATE-BEGIN")["streams"]

        def continue_seq():
            for name in ("ttl-emptied", "ttl-mixed", "ttl-control"):
                nxt = before[name]["info"]["storageStatus"]["newestSequenceNumber"] + 1
                p = self.payload(name, nxt, 100)
                self.append_expect(name, p, nxt)
                self.check_tail(name, [(nxt, p)])
            self.raises("InvalidRequestException", c.append_message, "ttl-reject", b"x" * 100)
        self.case("ttl-restart-appends-continue", continue_seq)
        self.dump("STATE-END")

    def dump_only(self):
        self.dump("STATE-BEGIN")

    ttl_dump = dump_only

    def run(self, phase):
        try:
            getattr(self, phase)()
        finally:
            try:
                self.c.close()
            except Exception:
                pass
        self.out("SUMMARY pass={PASS} fail={FAIL}".format(**self.counts))
        return 1 if self.counts["FAIL"] else 0


def conformance_main(module):
    """Part 2 client: conformance.py's cases, pausing between every two for a restart of weir.

    Before each pause the streams the program believes exist are described; the
    Memory ones are dropped from its LIVE set once weir has restarted."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.argv = [os.path.join(here, "conformance.py"), module]
    sys.path.insert(0, here)
    conf = importlib.import_module("conformance")

    def restart(next_case):
        memory = set()
        probe = conf.client()
        try:
            for s in sorted(conf.LIVE):
                if probe.describe_message_stream(s).definition.persistence == conf.data.Persistence.Memory:
                    memory.add(s)
        finally:
            probe.close()
        print("RESTART before {}".format(next_case), flush=True)
        if sys.stdin.readline().strip() != "GO":
            print("driver did not say GO", flush=True)
            return False
        conf.LIVE.difference_update(memory)
        return True

    return conf.main(between_cases=restart)


# ================================================================ driver (Python 3.11)

SDKS = [
    # label, venv, module
    ("greengrasssdk-1.5.0 (protocol 1.0.0)", "py37-greengrasssdk-1.5.0", "greengrasssdk.stream_manager"),
    ("greengrasssdk-1.6.1 (protocol 1.1.0)", "py311-greengrasssdk-1.6.1", "greengrasssdk.stream_manager"),
    ("stream-manager-1.1.2 (protocol 1.1.0)", "py311-stream-manager-1.1.2", "stream_manager"),
]
PHASE_DEADLINE_S = 180


def compare_states(report, label, before, after, memory_dropped):
    """after must equal before, except Memory streams (gone) -- one PASS/FAIL per stream."""
    problems = []
    expected_list = [n for n in before["list"] if not (memory_dropped and n in MEMORY_STREAMS)]
    if after["list"] != expected_list:
        problems.append("list_streams {!r}, expected {!r}".format([short(n) for n in after["list"]],
                                                                  [short(n) for n in expected_list]))
    checked = 0
    for name in sorted(before["streams"]):
        b, a = before["streams"][name], after["streams"].get(name, "absent from the dump")
        if memory_dropped and name in MEMORY_STREAMS:
            if a is not None:
                problems.append("Memory stream {} is still there after the restart".format(name))
            continue
        checked += 1
        if b is None:
            if a is not None:
                problems.append("{}: did not exist before the restart, exists after it: {}".format(short(name), a["info"]))
            continue
        if a is None:
            problems.append("{}: existed before the restart ({} messages), gone after it".format(
                short(name), len(b["messages"])))
            continue
        for key in ("definition", "storageStatus", "exportStatuses"):
            if a["info"].get(key) != b["info"].get(key):
                problems.append("{}: {} before the restart {}, after {}".format(
                    short(name), key, b["info"].get(key), a["info"].get(key)))
        if a["messages"] != b["messages"]:
            bm, am = b["messages"], a["messages"]
            diff = next((i for i in range(min(len(bm), len(am))) if bm[i] != am[i]), min(len(bm), len(am)))
            problems.append("{}: messages differ: {} before, {} after; first difference at index {}: before {} after {}"
                            .format(short(name), len(bm), len(am), diff,
                                    (bm[diff][:2] + [bm[diff][2][:40]]) if diff < len(bm) else "-",
                                    (am[diff][:2] + [am[diff][2][:40]]) if diff < len(am) else "-"))
    case = "{} unchanged".format(label)
    if problems:
        report.fail(case, "\n      " + "\n      ".join(problems))
    else:
        report.ok(case, "{} streams: definitions, storage status, every message with its ingest time, list".format(checked))


def run_phase(weir, sdk_label, venv, module, phase, report, prev=None):
    """Runs one client phase; PASS/FAIL lines go to the report; returns its STATE-* dumps."""
    from harness import HERE, indent, run_client, sdk_python
    import re
    env = weir.client_env()
    if prev is not None:
        path = os.path.join(weir.tmp, "prev-state.json")
        with open(path, "w") as f:
            json.dump(prev, f)
        env["WEIR_RESTART_PREV_STATE"] = path
    rc, out, err = run_client([sdk_python(venv), os.path.abspath(__file__), "client", module, phase],
                              env, PHASE_DEADLINE_S, cwd=HERE)
    states = {}
    summary = None
    counts = {"PASS": 0, "FAIL": 0}
    for line in out.splitlines():
        m = re.fullmatch(r"(STATE-BEGIN|STATE-END) (\{.*\})", line)
        if m:
            states[m.group(1)] = json.loads(m.group(2))
            continue
        m = re.fullmatch(r"(PASS|FAIL) (\S+)(.*)", line, re.S)
        if m:
            counts[m.group(1)] += 1
            case = "{} {}".format(sdk_label.split()[0], m.group(2))
            if m.group(1) == "PASS":
                report.ok(case, m.group(3).strip(" ()"))
            else:
                report.fail(case, m.group(3).lstrip(": "))
            continue
        m = re.fullmatch(r"SUMMARY pass=(\d+) fail=(\d+)", line)
        if m and summary is None:
            summary = (int(m.group(1)), int(m.group(2)))
            continue
        report.fail("{} {} output".format(sdk_label.split()[0], phase), "unexpected line {!r}".format(line[:300]))
    if summary is None or summary != (counts["PASS"], counts["FAIL"]) or (rc == 0) != (counts["FAIL"] == 0):
        report.fail("{} {} program".format(sdk_label.split()[0], phase),
                    "exit status {}, summary {}, counted {}\n{}\n{}".format(
                        rc, summary, counts, indent(err[-3000:]), weir.log_tail(30)))
    return states


def loaded_notes(weir):
    """weir's `stream loaded` lines that report cut-off bytes (unexpected after a SIGTERM stop)."""
    import re
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    lines = [ansi.sub("", l) for l in weir.current_log()]
    return [l.strip() for l in lines if "stream loaded" in l and "truncated_bytes=0" not in l]


def part1(report):
    from harness import HarnessError, Weir
    for label, venv, module in SDKS:
        print("-- restart suite with {}".format(label), flush=True)
        tag = label.split()[0]
        weir = Weir("restart")
        try:
            weir.start()
            prev = None
            for n, phase in enumerate(["populate", "check1", "check2", "check3"]):
                if n:
                    weir.restart()
                    loaded = [l for l in weir.current_log() if "stream loaded" in l]
                    print("   restart #{}: weir loaded {} streams".format(n, len(loaded)), flush=True)
                    for l in loaded_notes(weir):
                        report.fail("{} restart-{} clean".format(tag, n),
                                    "after a SIGTERM stop weir cut bytes off a stream: {}".format(l))
                states = run_phase(weir, label, venv, module, phase, report)
                if prev is not None:
                    if "STATE-BEGIN" in states:
                        compare_states(report, "{} restart-{}".format(tag, n), prev, states["STATE-BEGIN"], True)
                    else:
                        report.fail("{} restart-{} unchanged".format(tag, n), "the {} phase printed no state".format(phase))
                prev = states.get("STATE-END")
                if prev is None and phase != "check3":
                    report.fail("{} {}".format(tag, phase), "no final state printed; later phases cannot be compared")
                    break
            weir.stop()
        except HarnessError as e:
            report.fail("{} harness".format(tag), str(e))
            weir.kill()
        except BaseException:
            print("weir log tail:\n" + weir.log_tail(40), flush=True)
            weir.kill()
            raise


def part2(report):
    import re
    import subprocess
    from harness import HERE, HarnessError, Weir, sdk_python
    for label, venv, module in SDKS:
        tag = label.split()[0]
        print("-- conformance.py with {}, weir restarted between every two cases".format(label), flush=True)
        weir = Weir("conformance-restarts")
        proc = None
        try:
            weir.start()
            proc = subprocess.Popen([sdk_python(venv), os.path.abspath(__file__), "conformance", module],
                                    env=weir.client_env(), cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            restarts, counts, summary, problems = 0, {"PASS": 0, "FAIL": 0, "SKIP": 0}, None, []
            deadline = time.monotonic() + PHASE_DEADLINE_S * 2
            for line in proc.stdout:
                line = line.rstrip("\n")
                if time.monotonic() > deadline:
                    problems.append("did not finish within {}s".format(PHASE_DEADLINE_S * 2))
                    break
                if line.startswith("RESTART "):
                    weir.restart(same_port=True)
                    restarts += 1
                    proc.stdin.write("GO\n")
                    proc.stdin.flush()
                    continue
                m = re.fullmatch(r"(PASS|FAIL|SKIP) (\S+)(.*)", line)
                if m:
                    counts[m.group(1)] += 1
                    if m.group(1) == "FAIL":
                        problems.append(line)
                    print("  [{}] {}".format(tag, line), flush=True)
                    continue
                m = re.fullmatch(r"SUMMARY pass=(\d+) fail=(\d+) skip=(\d+)", line)
                if m and summary is None:
                    summary = tuple(int(x) for x in m.groups())
                    continue
                problems.append("unexpected output line {!r}".format(line))
            try:
                rc = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
                problems.append("client did not exit")
            err = proc.stderr.read()
            if summary != (counts["PASS"], counts["FAIL"], counts["SKIP"]):
                problems.append("summary {} disagrees with the case lines {}".format(summary, counts))
            if rc != 0 and not counts["FAIL"]:
                problems.append("exit status {}".format(rc))
            if counts["PASS"] == 0:
                problems.append("no case passed")
            case = "{} conformance-with-restarts".format(tag)
            if problems:
                report.fail(case, "{} restarts; {}\n      client stderr: {}\n{}".format(
                    restarts, "\n      ".join(problems), err[-2000:], weir.log_tail(30)))
            else:
                report.ok(case, "{} passed, {} skipped, weir restarted {} times".format(
                    counts["PASS"], counts["SKIP"], restarts))
            weir.stop()
        except HarnessError as e:
            report.fail("{} conformance-with-restarts harness".format(tag), str(e))
            weir.kill()
        except BaseException:
            print("weir log tail:\n" + weir.log_tail(40), flush=True)
            weir.kill()
            raise
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


TTL_SDKS = [
    # weir stays up while TTL runs out / weir is stopped while it runs out
    ("up", "stream-manager-1.1.2 (protocol 1.1.0)", "py311-stream-manager-1.1.2", "stream_manager"),
    ("down", "greengrasssdk-1.5.0 (protocol 1.0.0)", "py37-greengrasssdk-1.5.0", "greengrasssdk.stream_manager"),
]


class TtlSuite:
    """Part 0: streams that TTL empties, with weir running ("up") or stopped ("down") meanwhile.

    Populated first; parts 1 and 2 run while the minute passes."""

    def __init__(self, report):
        self.report = report
        self.runs = []        # (mode, label, venv, module, weir, populate end state, time populated)

    def populate(self):
        from harness import HarnessError, Weir
        for mode, label, venv, module in TTL_SDKS:
            tag = "{} ttl-{}".format(label.split()[0], mode)
            print("-- TTL suite ({} weir while TTL runs out) with {}".format(
                "running" if mode == "up" else "stopped", label), flush=True)
            weir = Weir("restart-ttl-" + mode)
            try:
                weir.start()
                states = run_phase(weir, tag, venv, module, "ttl_populate", self.report)
                if mode == "down":
                    weir.stop(cleanup=False)
                if "STATE-END" not in states:
                    self.report.fail(tag, "populate printed no state")
                    weir.kill()
                    continue
                self.runs.append((mode, label, venv, module, weir, states["STATE-END"], time.monotonic()))
            except HarnessError as e:
                self.report.fail(tag + " harness", str(e))
                weir.kill()

    def finish(self):
        from harness import HarnessError
        for mode, label, venv, module, weir, prev, populated in self.runs:
            tag = "{} ttl-{}".format(label.split()[0], mode)
            print("-- TTL suite ({} weir while TTL runs out) with {}, continued".format(
                "running" if mode == "up" else "stopped", label), flush=True)
            try:
                if mode == "down":
                    wait = populated + TTL_MS / 1000 + 2 - time.monotonic()
                    if wait > 0:
                        print("   waiting {:.0f}s for TTL to run out while weir is stopped".format(wait), flush=True)
                        time.sleep(wait)
                    weir.start()
                states = run_phase(weir, tag, venv, module, "ttl_check1", self.report, prev=prev)
                for n, phase in enumerate(["ttl_check2", "ttl_dump"], 1):
                    if "STATE-END" not in states:
                        self.report.fail(tag, "no state printed before restart {}".format(n))
                        break
                    weir.restart()
                    for l in loaded_notes(weir):
                        self.report.fail("{} restart-{} clean".format(tag, n),
                                         "after a SIGTERM stop weir cut bytes off a stream: {}".format(l))
                    end = states["STATE-END"]
                    states = run_phase(weir, tag, venv, module, phase, self.report)
                    if "STATE-BEGIN" in states:
                        compare_states(self.report, "{} restart-{}".format(tag, n), end, states["STATE-BEGIN"], True)
                    else:
                        self.report.fail("{} restart-{} unchanged".format(tag, n), "{} printed no state".format(phase))
                weir.stop()
            except HarnessError as e:
                self.report.fail(tag + " harness", str(e))
                weir.kill()
            except BaseException:
                print("weir log tail:\n" + weir.log_tail(40), flush=True)
                weir.kill()
                raise

    def abandon(self):
        for run in self.runs:
            run[4].kill()


def main():
    from harness import Report
    report = Report("restart")
    started = time.monotonic()
    ttl = TtlSuite(report)
    try:
        if not os.environ.get("WEIR_RESTART_SKIP_TTL"):
            ttl.populate()
        part1(report)
        part2(report)
        ttl.finish()
    finally:
        ttl.abandon()
    print("restart test: {:.1f}s".format(time.monotonic() - started), flush=True)
    return report.finish()


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "client":
        sys.exit(Client(sys.argv[2], sys.argv[3]).run(sys.argv[3]))
    elif len(sys.argv) > 2 and sys.argv[1] == "conformance":
        sys.exit(conformance_main(sys.argv[2]))
    else:
        from harness import main_guard
        main_guard(main)
