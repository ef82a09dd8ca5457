"""Conformance cases for the real Python stream manager SDKs (item 7b).

Runs inside an SDK venv against a fresh weir (port and token come from
STREAM_MANAGER_SERVER_PORT / AWS_CONTAINER_AUTHORIZATION_TOKEN):

    python conformance.py greengrasssdk.stream_manager   # greengrasssdk 1.5.0 (protocol 1.0.0) or 1.6.1
    python conformance.py stream_manager                 # stream-manager 1.1.2

Output, one line per case: `PASS <case>`, `FAIL <case>: <reason>` or
`SKIP <case>: <reason>`, then `SUMMARY pass=<n> fail=<n> skip=<n>`. No case
skips now: those an SDK cannot send are left out of its run (named on stderr);
under CI=true test_conformance.py fails any skip.
Exit status 0 only if no case failed.  Must stay Python 3.7 compatible.

Expected values come from SPEC.md / PROTOCOL.md (sections 5, 6, 8).  Describe
results are compared through the SDK's own model: the expected wire map is
turned into the SDK's MessageStreamInfo with from_dict() and back with
as_dict(), so each SDK is checked on exactly the fields it can see.
"""
import importlib
import os
import sys
import threading
import time
import traceback

MODULE = sys.argv[1]
sm = importlib.import_module(MODULE)
data = importlib.import_module(MODULE + ".data")
exc = importlib.import_module(MODULE + ".exceptions")

# 1.5.0 has no update_message_stream and negotiates protocol 1.0.0.
HAS_UPDATE = hasattr(sm.StreamManagerClient, "update_message_stream")
IS_150 = not HAS_UPDATE
REQUEST_TIMEOUT = 30          # seconds; bounds a hung request, long-polls below stay under it
LONG_POLL_MS = 20000          # a wait that a correct server ends early (satisfied by an append)

LIVE = set()                  # streams this program believes exist on the server
DEFAULT_MAX_SIZE = 268435456
DEFAULT_SEGMENT = 16777216


from checks import CaseFailure, eq, every_export, need  # noqa: E402  (shared with the other client programs)


def client():
    return sm.StreamManagerClient(request_timeout=REQUEST_TIMEOUT)


def raises(exc_name, fn, *args, message=None, **kwargs):
    """Call fn and require the SDK exception `exc_name` (by class name), optionally with exact message."""
    cls = getattr(exc, exc_name)
    try:
        result = fn(*args, **kwargs)
    except cls as e:
        if type(e).__name__ != exc_name:
            raise CaseFailure("expected {}, got subclass {}: {}".format(exc_name, type(e).__name__, e))
        if message is not None and e.message != message:
            raise CaseFailure("{} message {!r}, expected {!r}".format(exc_name, e.message, message))
        return e
    except Exception as e:  # noqa: B902 - any other outcome is the failure being reported
        raise CaseFailure("expected {}, got {}: {}".format(exc_name, type(e).__name__, e))
    raise CaseFailure("expected {}, but the call succeeded and returned {!r}".format(exc_name, result))


def opts(start=None, min_count=1, max_count=None, timeout=0):
    return data.ReadMessagesOptions(desired_start_sequence_number=start, min_message_count=min_count,
                                    max_message_count=max_count, read_timeout_millis=timeout)


def definition(name, strategy=0, **kw):
    return data.MessageStreamDefinition(name=name, strategy_on_full=data.StrategyOnFull(strategy), **kw)


def create(c, d):
    c.create_message_stream(d)
    LIVE.add(d.name)


def delete(c, name):
    c.delete_message_stream(name)
    LIVE.discard(name)


def info_view(wire):
    """The SDK's view of a describe answer whose wire map is `wire`."""
    return data.MessageStreamInfo.from_dict(wire).as_dict()


def stored_definition(d):
    """Wire definition weir must echo: what the client sent, with SPEC defaults filled."""
    w = d.as_dict()
    w.setdefault("maxSize", DEFAULT_MAX_SIZE)
    w.setdefault("streamSegmentSize", DEFAULT_SEGMENT)
    w.setdefault("persistence", 0)
    w.setdefault("flushOnWrite", False)
    return w


def export_status(identifier, start=None):
    return {"exportConfigIdentifier": identifier,
            "lastExportedSequenceNumber": (start if start is not None else 0) - 1,
            "exportedBytesFromStream": 0, "exportedMessagesCount": 0}


def storage(oldest, newest, total):
    return {"oldestSequenceNumber": oldest, "newestSequenceNumber": newest, "totalBytes": total}


def check_describe(c, name, wire_definition, wire_storage, wire_statuses):
    got = c.describe_message_stream(name).as_dict()
    want = info_view({"definition": wire_definition, "storageStatus": wire_storage, "exportStatuses": wire_statuses})
    for key in ("definition", "storageStatus", "exportStatuses"):
        eq(got.get(key), want.get(key), "describe({}).{}".format(name, key))


def check_messages(msgs, name, expected):
    """expected: list of (sequence number, payload)."""
    need(isinstance(msgs, list), "read returned {!r}, expected a list".format(msgs))
    eq([(m.sequence_number, m.payload) for m in msgs], expected, "messages (seq, payload) read from " + name)
    for m in msgs:
        eq(m.stream_name, name, "message.stream_name")
        need(isinstance(m.ingest_time, int) and m.ingest_time > 1500000000000,
             "ingest_time {!r} is not a millisecond epoch".format(m.ingest_time))
    times = [m.ingest_time for m in msgs]
    eq(times, sorted(times), "ingest times in sequence order")


def total(payloads):
    return sum(len(p) + 24 for p in payloads)


def nem_message(available, start, min_count):
    return "{} messages available from sequence number {}, fewer than minMessageCount {}".format(available, start, min_count)


# ---------------------------------------------------------------- cases

CASES = []


def case(name, update=False, only_150=False):
    def deco(fn):
        CASES.append((name, fn, update, only_150))
        return fn
    return deco


@case("list-streams-empty")
def _(c):
    eq(c.list_streams(), [], "list_streams on a fresh store")


@case("create-describe-defaults")
def _(c):
    d = definition("cf-defaults", strategy=0)
    create(c, d)
    check_describe(c, "cf-defaults", stored_definition(d), storage(0, -1, 0), [])


@case("create-describe-exports")
def _(c):
    if HAS_UPDATE:
        status_stream = definition("cf-status", strategy=1, persistence=data.Persistence.Memory)
        create(c, status_stream)
        exports = every_export(data, True, "cf-status")
        statuses = [export_status("HttpExport", 3), export_status("IotAExport"), export_status("KinesisA"),
                    export_status("KinesisB", 7), export_status("SiteWiseExport"), export_status("S3Export")]
    else:
        exports = every_export(data, False, None)
        statuses = [export_status("HttpExport"), export_status("IotAExport"), export_status("KinesisA"),
                    export_status("KinesisB")]
    d = definition("cf-exports", strategy=1, max_size=1048576, stream_segment_size=65536, time_to_live_millis=3600000,
                   persistence=data.Persistence.File, flush_on_write=True, export_definition=exports)
    create(c, d)
    check_describe(c, "cf-exports", stored_definition(d), storage(0, -1, 0), statuses)


@case("create-existing-stream")
def _(c):
    raises("InvalidRequestException", c.create_message_stream, definition("cf-defaults", strategy=1),
           message="message stream cf-defaults already exists")
    # The original definition (RejectNewData) is untouched.
    check_describe(c, "cf-defaults", stored_definition(definition("cf-defaults", strategy=0)), storage(0, -1, 0), [])


SEQ_PAYLOADS = [b"first", b"second", b"\x00\x01\x02", b"fourth message", b"5"]


@case("append-sequence-numbers")
def _(c):
    d = definition("cf-seq")
    create(c, d)
    got = [c.append_message("cf-seq", p) for p in SEQ_PAYLOADS]
    eq(got, [0, 1, 2, 3, 4], "sequence numbers returned by append")
    check_describe(c, "cf-seq", stored_definition(d), storage(0, 4, total(SEQ_PAYLOADS)), [])


@case("read-exact-range")
def _(c):
    msgs = c.read_messages("cf-seq", opts(start=0, min_count=5, max_count=5))
    check_messages(msgs, "cf-seq", list(enumerate(SEQ_PAYLOADS)))


@case("read-absent-max-means-min")
def _(c):
    msgs = c.read_messages("cf-seq", opts(start=1, min_count=2))
    check_messages(msgs, "cf-seq", [(1, SEQ_PAYLOADS[1]), (2, SEQ_PAYLOADS[2])])


@case("read-between-min-and-max")
def _(c):
    msgs = c.read_messages("cf-seq", opts(start=0, min_count=1, max_count=3))
    need(1 <= len(msgs) <= 3, "min 1 max 3 returned {} messages".format(len(msgs)))
    check_messages(msgs, "cf-seq", list(enumerate(SEQ_PAYLOADS))[:len(msgs)])
    # Only 2 messages exist from 3 on: never more than available, never a gap.
    msgs = c.read_messages("cf-seq", opts(start=3, min_count=1, max_count=100))
    need(1 <= len(msgs) <= 2, "start 3, min 1, max 100 returned {} messages (2 exist)".format(len(msgs)))
    check_messages(msgs, "cf-seq", [(3, SEQ_PAYLOADS[3]), (4, SEQ_PAYLOADS[4])][:len(msgs)])


@case("read-without-options")
def _(c):
    msgs = c.read_messages("cf-seq")
    check_messages(msgs, "cf-seq", [(0, SEQ_PAYLOADS[0])])


@case("read-timeout0-not-enough")
def _(c):
    raises("NotEnoughMessagesException", c.read_messages, "cf-seq", opts(start=5, min_count=1),
           message=nem_message(0, 5, 1))
    raises("NotEnoughMessagesException", c.read_messages, "cf-seq", opts(start=0, min_count=6, max_count=10),
           message=nem_message(5, 0, 6))
    raises("NotEnoughMessagesException", c.read_messages, "cf-seq", opts(start=1000, min_count=1),
           message=nem_message(0, 1000, 1))


@case("long-poll-satisfied-by-append-on-same-client")
def _(c):
    create(c, definition("cf-longpoll"))
    eq(c.append_message("cf-longpoll", b"before"), 0, "first append")
    result = {}

    def reader():
        try:
            result["msgs"] = c.read_messages("cf-longpoll", opts(start=1, min_count=2, max_count=2, timeout=LONG_POLL_MS))
        except Exception as e:  # reported below
            result["error"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    # Wait until the read request is registered in the client (i.e. its frame was
    # written on the socket) so the appends below really are sent after it.
    pending = c._StreamManagerClient__requests
    deadline = time.monotonic() + 10
    while len(pending) == 0 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.005)
    need(len(pending) == 1 or not t.is_alive(), "read request never became pending in the client")
    eq(c.append_message("cf-longpoll", b"during-1"), 1, "append while the read waits")
    # min 2 is not reached yet: the read must still be waiting.
    if not t.is_alive():
        if "error" in result:
            raise CaseFailure("the long-poll read ended with {}: {} before the append sent while it waited was answered "
                              "(requests on one connection not handled concurrently?)".format(
                                  type(result["error"]).__name__, result["error"]))
        raise CaseFailure("read returned after one append although min_message_count is 2: {!r}".format(result))
    eq(c.append_message("cf-longpoll", b"during-2"), 2, "second append while the read waits")
    t.join(LONG_POLL_MS / 1000 + REQUEST_TIMEOUT)
    need(not t.is_alive(), "read never returned")
    if "error" in result:
        raise CaseFailure("long-poll read failed instead of being satisfied by the appends: {}: {}".format(
            type(result["error"]).__name__, result["error"]))
    check_messages(result["msgs"], "cf-longpoll", [(1, b"during-1"), (2, b"during-2")])


@case("long-poll-times-out")
def _(c):
    started = time.monotonic()
    raises("NotEnoughMessagesException", c.read_messages, "cf-longpoll", opts(start=3, min_count=1, timeout=1000),
           message=nem_message(0, 3, 1))
    return "answered after {:.2f}s".format(time.monotonic() - started)


@case("missing-stream-not-found")
def _(c):
    msg = "message stream cf-missing does not exist"
    raises("ResourceNotFoundException", c.describe_message_stream, "cf-missing", message=msg)
    raises("ResourceNotFoundException", c.append_message, "cf-missing", b"x", message=msg)
    raises("ResourceNotFoundException", c.read_messages, "cf-missing", opts(start=0), message=msg)
    raises("ResourceNotFoundException", c.read_messages, "cf-missing", message=msg)
    raises("ResourceNotFoundException", c.delete_message_stream, "cf-missing", message=msg)
    if HAS_UPDATE:
        raises("ResourceNotFoundException", c.update_message_stream, definition("cf-missing"), message=msg)


@case("update-ttl-strategy-exports", update=True)
def _(c):
    d = definition("cf-update", strategy=0,
                   export_definition=data.ExportDefinition(kinesis=[data.KinesisConfig(identifier="K1", kinesis_stream_name="s1")]))
    create(c, d)
    payloads = [b"u1", b"u2"]
    for p in payloads:
        c.append_message("cf-update", p)
    new = definition("cf-update", strategy=1, max_size=10485760, time_to_live_millis=120000,
                     persistence=data.Persistence.File, flush_on_write=True,
                     export_definition=data.ExportDefinition(
                         iot_analytics=[data.IoTAnalyticsConfig(identifier="IotA1", iot_channel="ch")],
                         kinesis=[data.KinesisConfig(identifier="K1", kinesis_stream_name="s1", batch_size=50, disabled=True)]))
    c.update_message_stream(new)
    check_describe(c, "cf-update", stored_definition(new), storage(0, 1, total(payloads)),
                   [export_status("IotA1"), export_status("K1")])
    check_messages(c.read_messages("cf-update", opts(start=0, min_count=2)), "cf-update", list(enumerate(payloads)))


@case("update-persistence-not-allowed", update=True)
def _(c):
    before = c.describe_message_stream("cf-update").as_dict()
    changed = definition("cf-update", strategy=1, max_size=10485760, time_to_live_millis=120000,
                         persistence=data.Persistence.Memory)
    e = raises("UpdateNotAllowedException", c.update_message_stream, changed,
               message="persistence of message stream cf-update cannot be changed")
    need(isinstance(e, exc.InvalidRequestException), "UpdateNotAllowedException is an InvalidRequestException")
    eq(c.describe_message_stream("cf-update").as_dict(), before, "describe after the refused update")


@case("update-max-size-below-current-bytes", update=True)
def _(c):
    d = definition("cf-update-size")
    create(c, d)
    payloads = [bytes([i]) * 600 for i in range(3)]          # 3 * 624 = 1872 bytes stored
    for p in payloads:
        c.append_message("cf-update-size", p)
    raises("UpdateNotAllowedException", c.update_message_stream, definition("cf-update-size", max_size=1024))
    check_describe(c, "cf-update-size", stored_definition(d), storage(0, 2, total(payloads)), [])
    # maxSize at or above the stored bytes is an allowed change.
    bigger = definition("cf-update-size", max_size=4096)
    c.update_message_stream(bigger)
    check_describe(c, "cf-update-size", stored_definition(bigger), storage(0, 2, total(payloads)), [])
    check_messages(c.read_messages("cf-update-size", opts(start=0, min_count=3)), "cf-update-size", list(enumerate(payloads)))


@case("reject-new-data-when-full")
def _(c):
    d = definition("cf-reject", strategy=0, max_size=1024, stream_segment_size=1024)
    create(c, d)
    accepted = []
    rejected = None
    for i in range(20):                                       # 20 * 124 bytes is well over 1024
        p = bytes([65 + i]) * 100
        try:
            seq = c.append_message("cf-reject", p)
        except exc.InvalidRequestException as e:
            rejected = e
            break
        eq(seq, i, "append #{} sequence number".format(i))
        accepted.append(p)
    need(rejected is not None, "20 appends of 124 bytes into a 1024-byte RejectNewData stream were all accepted")
    eq(type(rejected).__name__, "InvalidRequestException", "exception type of the refused append")
    need(accepted, "the very first 100-byte append into an empty 1024-byte stream was refused")
    need(total(accepted) <= 1024, "stream holds {} bytes, above maxSize 1024".format(total(accepted)))
    # Still full: the same 100-byte append is refused again.
    raises("InvalidRequestException", c.append_message, "cf-reject", b"Z" * 100)
    check_describe(c, "cf-reject", stored_definition(d), storage(0, len(accepted) - 1, total(accepted)), [])
    msgs = c.read_messages("cf-reject", opts(start=0, min_count=len(accepted), max_count=len(accepted)))
    check_messages(msgs, "cf-reject", list(enumerate(accepted)))
    return "{} messages accepted".format(len(accepted))


@case("overwrite-oldest-data")
def _(c):
    d = definition("cf-overwrite", strategy=1, max_size=4096, stream_segment_size=1024)
    create(c, d)
    payloads = [("{:03d}".format(i) * 34)[:100].encode() for i in range(60)]    # 124 bytes each, 7440 total
    oldest_seen = []
    for i, p in enumerate(payloads):
        eq(c.append_message("cf-overwrite", p), i, "append #{} sequence number".format(i))
        st = c.describe_message_stream("cf-overwrite").storage_status
        oldest_seen.append(st.oldest_sequence_number)
        eq(st.newest_sequence_number, i, "newest sequence number after append #{}".format(i))
        need(st.total_bytes <= 4096, "totalBytes {} above maxSize 4096 after append #{}".format(st.total_bytes, i))
        eq(st.total_bytes, total(payloads[st.oldest_sequence_number:i + 1]), "totalBytes after append #{}".format(i))
    eq(oldest_seen, sorted(oldest_seen), "oldestSequenceNumber over time (must never go back)")
    oldest = oldest_seen[-1]
    need(oldest > 0, "oldestSequenceNumber stayed 0 after writing 7440 bytes into a 4096-byte stream")
    # Start below the oldest retained message is clamped to the oldest.
    check_messages(c.read_messages("cf-overwrite", opts(start=0, min_count=1, max_count=1)), "cf-overwrite",
                   [(oldest, payloads[oldest])])
    n = 60 - oldest
    msgs = c.read_messages("cf-overwrite", opts(start=oldest, min_count=n, max_count=n))
    check_messages(msgs, "cf-overwrite", [(i, payloads[i]) for i in range(oldest, 60)])
    return "oldest went 0 -> {}".format(oldest)


@case("payload-1-byte-and-1-MiB")
def _(c):
    d = definition("cf-payloads", strategy=1)
    create(c, d)
    big = os.urandom(1 << 20)
    payloads = [b"\x00", b"\xff", big]
    for i, p in enumerate(payloads):
        eq(c.append_message("cf-payloads", p), i, "append sequence number")
    msgs = c.read_messages("cf-payloads", opts(start=0, min_count=3, max_count=3))
    need(len(msgs) == 3 and msgs[2].payload == big,
         "1 MiB payload did not round-trip byte for byte (got {} messages)".format(len(msgs)))
    check_messages(msgs, "cf-payloads", list(enumerate(payloads)))
    check_describe(c, "cf-payloads", stored_definition(d), storage(0, 2, total(payloads)), [])


@case("memory-persistence")
def _(c):
    d = definition("cf-memory", strategy=1, persistence=data.Persistence.Memory)
    create(c, d)
    payloads = [b"m0", b"m1", b"m2"]
    eq([c.append_message("cf-memory", p) for p in payloads], [0, 1, 2], "sequence numbers")
    check_messages(c.read_messages("cf-memory", opts(start=0, min_count=3)), "cf-memory", list(enumerate(payloads)))
    check_describe(c, "cf-memory", stored_definition(d), storage(0, 2, total(payloads)), [])


@case("delete-then-recreate-restarts-at-0")
def _(c):
    d = definition("cf-recreate")
    create(c, d)
    for p in (b"old0", b"old1", b"old2"):
        c.append_message("cf-recreate", p)
    delete(c, "cf-recreate")
    raises("ResourceNotFoundException", c.describe_message_stream, "cf-recreate")
    raises("ResourceNotFoundException", c.delete_message_stream, "cf-recreate")
    create(c, d)
    check_describe(c, "cf-recreate", stored_definition(d), storage(0, -1, 0), [])
    eq(c.append_message("cf-recreate", b"new0"), 0, "first sequence number after recreate")
    check_messages(c.read_messages("cf-recreate", opts(start=0, min_count=1, max_count=10)), "cf-recreate", [(0, b"new0")])


@case("text-payload-stored-as-utf8", only_150=True)
def _(c):
    # greengrasssdk 1.5.0 does not type-check, so a str goes out as a CBOR text string.
    create(c, definition("cf-text"))
    eq(c.append_message("cf-text", "h\u00e9llo w\u00f6rld"), 0, "sequence number")
    check_messages(c.read_messages("cf-text", opts(start=0)), "cf-text", [(0, "h\u00e9llo w\u00f6rld".encode("utf-8"))])


@case("invalid-field-value-rejected", only_150=True)
def _(c):
    # 1.5.0 only checks "required", so an out-of-range enum reaches the server: status 3.
    bad = data.MessageStreamDefinition(name="cf-badenum", strategy_on_full=7)
    raises("InvalidRequestException", c.create_message_stream, bad)
    raises("ResourceNotFoundException", c.describe_message_stream, "cf-badenum")


@case("wrong-or-missing-token-refused")
def _(c):
    good = os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
    try:
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = "not-the-token"
        raises("ConnectFailedException", client)
        del os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"]
        raises("ConnectFailedException", client)
    finally:
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = good
    # The server is fine afterwards.
    eq(c.list_streams(), sorted(LIVE), "list_streams after refused connections")


@case("multiple-clients-share-streams")
def _(c):
    a, b = c, client()
    try:
        create(a, definition("cf-multi"))
        need("cf-multi" in b.list_streams(), "client B does not list the stream client A created")
        eq(b.append_message("cf-multi", b"from-b"), 0, "append by client B")
        eq(a.append_message("cf-multi", b"from-a"), 1, "append by client A")
        check_messages(a.read_messages("cf-multi", opts(start=0, min_count=2)), "cf-multi", [(0, b"from-b"), (1, b"from-a")])
        eq(b.describe_message_stream("cf-multi").storage_status.newest_sequence_number, 1, "newest seen by client B")
    finally:
        b.close()


@case("list-streams-sorted")
def _(c):
    eq(c.list_streams(), sorted(LIVE), "list_streams (all streams, ascending)")


@case("delete-streams")
def _(c):
    for name in sorted(LIVE):
        delete(c, name)
    eq(c.list_streams(), [], "list_streams after deleting everything")


def main(between_cases=None):
    """Runs every case. `between_cases(next_name)`, if given (test_restart.py
    restarts weir there), runs between two cases; it returns False to stop."""
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}

    def out(kind, name, text=""):
        counts[kind] += 1
        print("{} {}{}".format(kind, name, text), flush=True)

    first = True
    for name, fn, update, only_150 in CASES:
        # Cases this SDK cannot send are not part of its run (not skips: there is
        # nothing here they could test), named on stderr only.
        if update and not HAS_UPDATE:
            print("n/a {}: SDK has no update_message_stream (protocol 1.0.0)".format(name), file=sys.stderr)
            continue
        if only_150 and not IS_150:
            print("n/a {}: only greengrasssdk 1.5.0 sends it (no client-side type checks)".format(name),
                  file=sys.stderr)
            continue
        if between_cases is not None and not first and not between_cases(name):
            return 2
        first = False
        c = None
        try:
            c = client()      # a fresh connection per case keeps one failure from cascading
            detail = fn(c)
            out("PASS", name, " ({})".format(detail) if detail else "")
        except CaseFailure as e:
            out("FAIL", name, ": {}".format(e))
        except Exception as e:  # an SDK error nobody expected
            tb = traceback.format_exc().strip().splitlines()
            out("FAIL", name, ": unexpected {}: {} [{}]".format(type(e).__name__, e, " | ".join(tb[-3:])))
        finally:
            if c is not None:
                try:
                    c.close()
                except Exception:
                    pass
    print("SUMMARY pass={PASS} fail={FAIL} skip={SKIP}".format(**counts), flush=True)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
