"""Hostile input against one running weir (raw sockets, handshake written from PROTOCOL.md).

While a real SDK client (stream-manager 1.1.2) stays connected holding a stream
with data, and an idle raw connection stays open, we send:
  bad connect bytes, absurd/negative/too-small frame lengths, undecodable CBOR,
  an unknown op on 1.1.0 and on 1.0.0 connections, wrong/missing/empty tokens,
  well-formed requests with bad field values, a frame dribbled byte by byte and
  two frames in one write, hundreds of sockets that never handshake, a frame
  that declares the largest allowed length and stalls, and a client that
  pipelines reads and never reads its answers.
Afterwards the SDK client and the idle connection must still work and every
stored message must be readable, intact.  weir is then stopped with SIGTERM while
those connections (the one that does not read included) are still open and
must exit 0.

Runs with the py311 stream-manager venv's Python (for cbor2 and the SDK).
"""
import os
import re
import socket
import uuid

import cbor2

from harness import HarnessError, Report, Weir, main_guard

SOCKET_DEADLINE_S = 10     # bound on every raw socket wait; a hang is a failure
STREAM = "hostile-data"


# ---------------------------------------------------------------- raw protocol

def frame(op, payload):
    """PROTOCOL 3: int32 BE length (= 1 + payload length), op byte, CBOR payload."""
    return (1 + len(payload)).to_bytes(4, "big", signed=True) + bytes([op]) + payload


def recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf.extend(chunk)
    return bytes(buf)


def read_frame(sock):
    length = int.from_bytes(recv_exact(sock, 4), "big", signed=True)
    if length < 2:
        raise AssertionError(f"server sent a frame with length {length}")
    op = recv_exact(sock, 1)[0]
    return op, cbor2.loads(recv_exact(sock, length - 1))


def open_socket(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=SOCKET_DEADLINE_S)
    sock.settimeout(SOCKET_DEADLINE_S)
    return sock


def handshake(port, token, version="1.1.0", request_id=None):
    """PROTOCOL 2: connect byte 01 + Connect frame; returns (sock, connect response payload)."""
    sock = open_socket(port)
    req = {"requestId": request_id or str(uuid.uuid4()), "protocolVersion": version}
    if version == "1.1.0":
        req["otherSupportedProtocolVersions"] = ["1.0.0"]
    req["sdkVersion"] = "hostile-test"
    if token is not None:
        req["authToken"] = token
    sock.sendall(b"\x01" + frame(1, cbor2.dumps(req)))
    first = recv_exact(sock, 1)
    if first != b"\x01":
        raise AssertionError(f"connect-version byte {first.hex()}, expected 01")
    op, resp = read_frame(sock)
    if op != 6:
        raise AssertionError(f"handshake answer op {op}, expected 6")
    return sock, resp


def request(sock, op, payload):
    sock.sendall(frame(op, cbor2.dumps(payload)))
    return read_frame(sock)


def wait_closed(sock):
    """'closed' if the server closed (EOF or reset) without sending anything else,
    otherwise a description of what happened within the deadline."""
    got = bytearray()
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    except socket.timeout:
        return f"still open after {SOCKET_DEADLINE_S}s" + (f" (received {bytes(got[:40]).hex()})" if got else "")
    finally:
        sock.close()
    return "closed" if not got else f"closed, but first sent {len(got)} bytes: {bytes(got[:40]).hex()}"


# ---------------------------------------------------------------- the test

class Hostile:
    def __init__(self, weir, report, sdk):
        self.weir, self.report, self.sdk = weir, report, sdk
        self.port, self.token = weir.port, weir.token
        self.payloads = []         # everything stored in STREAM, by sequence number
        self.hoarder = None        # the socket of the client that does not read

    def case(self, name, fn):
        try:
            detail = fn()
            self.report.ok(name, detail or "")
        except Exception as e:  # any exception is this case's failure, the next case still runs
            self.report.fail(name, f"{type(e).__name__}: {e}")

    # -- (setup) a real client with data
    def setup(self):
        sm = self.sdk
        self.client = sm.StreamManagerClient(port=self.port, request_timeout=30)
        self.client.create_message_stream(sm.MessageStreamDefinition(name=STREAM, strategy_on_full=sm.StrategyOnFull.RejectNewData))
        for i in range(20):
            p = os.urandom(1 + i * 37)
            assert self.client.append_message(STREAM, p) == i
            self.payloads.append(p)
        self.idle, resp = handshake(self.port, self.token)
        assert resp.get("status") == 0, f"idle connection refused: {resp!r}"

    # -- handshake shape (the reference every hostile case is compared to)
    def good_handshake_shape(self):
        for version in ("1.1.0", "1.0.0"):
            rid = f"shape-{version}"
            sock, resp = handshake(self.port, self.token, version, request_id=rid)
            sock.close()
            keys = list(resp)
            assert keys == ["requestId", "status", "protocolVersion", "supportedProtocolVersions", "serverVersion",
                            "clientIdentifier"], f"{version}: ConnectResponse keys {keys}"
            assert resp["requestId"] == rid and resp["status"] == 0, f"{version}: {resp!r}"
            assert resp["protocolVersion"] == version, f"{version}: negotiated {resp['protocolVersion']!r}"
            assert resp["supportedProtocolVersions"] == ["1.0.0", "1.1.0"], f"{version}: {resp!r}"
            assert re.fullmatch(r"weir-\S+", resp["serverVersion"]), f"serverVersion {resp['serverVersion']!r}"
            assert re.fullmatch(r"client-[1-9][0-9]*", resp["clientIdentifier"]), f"clientIdentifier {resp['clientIdentifier']!r}"

    # -- (a) bad connect byte
    def bad_connect_byte(self):
        for byte in (b"\x02", b"\x00", b"\xff"):
            sock = open_socket(self.port)
            sock.sendall(byte)     # only this byte, so the server closes with nothing unread
            first = recv_exact(sock, 1)
            assert first == b"\x01", f"connect byte {byte.hex()}: answer starts {first.hex()}, expected 01"
            op, resp = read_frame(sock)
            assert op == 6, f"connect byte {byte.hex()}: answer op {op}, expected 6"
            assert resp.get("status") == 8, f"connect byte {byte.hex()}: status {resp.get('status')!r}, expected 8 ({resp!r})"
            state = wait_closed(sock)
            assert state == "closed", f"connect byte {byte.hex()}: after the status 8 answer the connection is {state}"

    # -- (b) absurd frame lengths after a good handshake
    def bad_lengths(self):
        cases = {
            "0x7fffffff": b"\x7f\xff\xff\xff\x04",
            "2^30+1": (2**30 + 1).to_bytes(4, "big") + b"\x04",
            "-1": b"\xff\xff\xff\xff\x04",
            "-2^31": b"\x80\x00\x00\x00\x04",
            "0": b"\x00\x00\x00\x00",
            "1 (op only, empty payload)": b"\x00\x00\x00\x01\x0b",
        }
        for label, raw in cases.items():
            sock, resp = handshake(self.port, self.token)
            assert resp.get("status") == 0, resp
            sock.sendall(raw)
            state = wait_closed(sock)
            assert state == "closed", f"frame length {label}: connection {state}"

    # -- (c) undecodable CBOR
    def garbage_cbor(self):
        cases = {
            "reserved initial bytes": b"\x1c\xff\xfe",
            "truncated map": b"\xa2\x69requ",
            "lone break": b"\xff",
        }
        for label, payload in cases.items():
            sock, resp = handshake(self.port, self.token)
            assert resp.get("status") == 0, resp
            sock.sendall(frame(4, payload))
            state = wait_closed(sock)
            assert state == "closed", f"{label} payload: connection {state}"

    # -- (d) unknown operation
    def unknown_op_v110(self):
        sock, resp = handshake(self.port, self.token, "1.1.0")
        try:
            sock.sendall(frame(99, cbor2.dumps({"requestId": "hostile-op99"})))
            op, body = read_frame(sock)
            assert op == 17, f"answer op {op}, expected 17 (UnknownOperationError): {body!r}"
            assert list(body) == ["requestId", "status", "errorMessage"], f"op 17 keys {list(body)}"
            assert body["requestId"] == "hostile-op99" and body["status"] == 18, f"op 17 payload {body!r}"
            assert isinstance(body["errorMessage"], str) and body["errorMessage"], f"errorMessage {body['errorMessage']!r}"
            self.expect_list(sock, "after-op99")
        finally:
            sock.close()

    def unknown_op_v100(self):
        sock, resp = handshake(self.port, self.token, "1.0.0")
        try:
            assert resp.get("protocolVersion") == "1.0.0", f"negotiated {resp.get('protocolVersion')!r}"
            sock.sendall(frame(99, cbor2.dumps({"requestId": "hostile-op99-v1"})))
            # No answer for op 99; the next frame must be the answer to this list request,
            # and the one after that the answer to a second one (nothing in between).
            self.expect_list(sock, "after-op99-v1")
            self.expect_list(sock, "after-op99-v1-b")
        finally:
            sock.close()

    def expect_list(self, sock, rid):
        op, body = request(sock, 11, {"requestId": rid})
        assert op == 12 and body.get("requestId") == rid, f"expected the ListStreams answer to {rid}, got op {op}: {body!r}"
        assert body.get("status") == 0 and STREAM in body.get("streams", []), f"ListStreams answer {body!r}"

    # -- (e) bad tokens
    def bad_tokens(self):
        for label, token in (("wrong", "0" * 64), ("missing", None), ("empty", ""), ("token + suffix", self.token + "x")):
            sock, resp = handshake(self.port, token, request_id=f"tok-{label.replace(' ', '')}")
            assert resp.get("status") == 2, f"{label} token: status {resp.get('status')!r}, expected 2 ({resp!r})"
            assert resp.get("requestId") == f"tok-{label.replace(' ', '')}", f"{label} token: requestId not echoed: {resp!r}"
            state = wait_closed(sock)
            assert state == "closed", f"{label} token: after status 2 the connection is {state}"

    # -- decodable requests with bad fields => status 3 with an errorMessage, connection stays usable
    def bad_fields(self):
        sock, _ = handshake(self.port, self.token)
        try:
            cases = [
                ("append with int payload", 4, 9, {"requestId": "bf-1", "name": STREAM, "payload": 123}),
                ("append with empty payload", 4, 9, {"requestId": "bf-2", "name": STREAM, "payload": b""}),
                ("append without payload", 4, 9, {"requestId": "bf-3", "name": STREAM}),
                ("read with minMessageCount 0", 5, 10, {"requestId": "bf-4", "streamName": STREAM,
                                                         "readMessagesOptions": {"minMessageCount": 0}}),
                ("read with min > max", 5, 10, {"requestId": "bf-5", "streamName": STREAM,
                                                 "readMessagesOptions": {"minMessageCount": 5, "maxMessageCount": 2}}),
                ("create with strategyOnFull 7", 2, 7, {"requestId": "bf-6", "definition": {"name": "hostile-bad", "strategyOnFull": 7}}),
                ("create with invalid name", 2, 7, {"requestId": "bf-7", "definition": {"name": "bad/name!", "strategyOnFull": 0}}),
                ("create with maxSize 10", 2, 7, {"requestId": "bf-8", "definition": {"name": "hostile-bad", "maxSize": 10, "strategyOnFull": 0}}),
            ]
            for label, op, reply_op, payload in cases:
                got_op, body = request(sock, op, payload)
                assert got_op == reply_op, f"{label}: answer op {got_op}, expected {reply_op}: {body!r}"
                assert body.get("requestId") == payload["requestId"], f"{label}: requestId {body.get('requestId')!r}"
                assert body.get("status") == 3, f"{label}: status {body.get('status')!r}, expected 3 ({body!r})"
                assert list(body) == ["requestId", "status", "errorMessage"], f"{label}: answer keys {list(body)}"
                assert isinstance(body["errorMessage"], str) and body["errorMessage"], f"{label}: errorMessage {body.get('errorMessage')!r}"
            self.expect_list(sock, "after-bad-fields")
            op, body = request(sock, 13, {"requestId": "bf-describe", "name": "hostile-bad"})
            assert op == 14 and body.get("status") == 5, f"a refused create left a stream behind: {body!r}"
        finally:
            sock.close()

    # -- a frame in 1-byte writes (Java style) and two frames in one write
    def fragmented_and_pipelined(self):
        sock, _ = handshake(self.port, self.token)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            p = b"dribbled"
            for b in frame(4, cbor2.dumps({"requestId": "drip", "name": STREAM, "payload": p})):
                sock.send(bytes([b]))
            op, body = read_frame(sock)
            assert op == 9 and body == {"requestId": "drip", "status": 0, "sequenceNumber": len(self.payloads)}, f"dribbled append answer op {op}: {body!r}"
            self.payloads.append(p)
            two = (frame(4, cbor2.dumps({"requestId": "pipe-1", "name": STREAM, "payload": b"pipe-1"}))
                   + frame(4, cbor2.dumps({"requestId": "pipe-2", "name": STREAM, "payload": b"pipe-2"})))
            sock.sendall(two)
            answers = {}
            for _ in range(2):
                op, body = read_frame(sock)
                assert op == 9 and body.get("status") == 0, f"pipelined append answer op {op}: {body!r}"
                answers[body["requestId"]] = body["sequenceNumber"]
            n = len(self.payloads)
            # The two appends were sent in order on one connection; accept either
            # assignment of sequence numbers but require both and record them.
            assert sorted(answers.values()) == [n, n + 1] and set(answers) == {"pipe-1", "pipe-2"}, f"pipelined answers {answers}"
            by_seq = {v: k.encode() for k, v in answers.items()}
            self.payloads.extend([by_seq[n], by_seq[n + 1]])
        finally:
            sock.close()

    # -- ops 15/16 do not exist in protocol 1.0.0: whatever weir does with an update
    #    request there, a 1.0.0 connection must never see status > 14 or op 17
    def update_on_v100(self):
        sock, resp = handshake(self.port, self.token, "1.0.0")
        try:
            # Changing persistence would be status 17 on a 1.1.0 connection.
            upd = {"requestId": "v1-update", "definition": {"name": STREAM, "strategyOnFull": 0, "persistence": 1}}
            sock.sendall(frame(15, cbor2.dumps(upd)) + frame(11, cbor2.dumps({"requestId": "v1-sentinel-1"})))
            sock.sendall(frame(11, cbor2.dumps({"requestId": "v1-sentinel-2"})))
            seen = []
            while "v1-sentinel-2" not in [b.get("requestId") for _, b in seen]:
                seen.append(read_frame(sock))
            for op, body in seen:
                assert op in (12, 16), f"1.0.0 connection received op {op}: {body!r}"
                assert isinstance(body.get("status"), int) and 0 <= body["status"] <= 14, f"1.0.0 connection received {body!r}"
            answered = [b for op, b in seen if op == 16]
            return f"update answered with status {answered[0]['status']}" if answered else "update not answered"
        finally:
            sock.close()

    # -- a client that half-closes (Node's close() is socket.end()) must see the server close
    def half_close(self):
        sock, _ = handshake(self.port, self.token)
        sock.shutdown(socket.SHUT_WR)
        state = wait_closed(sock)
        assert state == "closed", f"after the client's FIN the connection is {state}"

    # -- a connection that goes away while its long-poll read is pending
    def abandoned_long_poll(self):
        for _ in range(3):
            sock, _ = handshake(self.port, self.token)
            sock.sendall(frame(5, cbor2.dumps({"requestId": "abandoned", "streamName": STREAM, "readMessagesOptions": {
                "desiredStartSequenceNumber": 10**6, "minMessageCount": 1, "readTimeoutMillis": 30000}})))
            sock.close()
        # The server carries on; appends still wake other readers normally.
        sock, _ = handshake(self.port, self.token)
        try:
            n = len(self.payloads)
            sock.sendall(frame(5, cbor2.dumps({"requestId": "waiter", "streamName": STREAM, "readMessagesOptions": {
                "desiredStartSequenceNumber": n, "minMessageCount": 1, "maxMessageCount": 1, "readTimeoutMillis": 30000}})))
            seq = self.client.append_message(STREAM, b"wake-up")
            assert seq == n, f"append got sequence number {seq}, expected {n}"
            self.payloads.append(b"wake-up")
            op, body = read_frame(sock)
            assert op == 10 and body.get("status") == 0 and [m["payload"] for m in body.get("messages", [])] == [b"wake-up"], \
                f"waiting read answer op {op}: {body!r}"
        finally:
            sock.close()

    # -- sockets that never send their Connect, and a frame that declares the largest
    #    allowed length (16 MiB by default) and stalls: a real client still gets in
    def hoarded_sockets(self):
        silent = [open_socket(self.port) for _ in range(300)]
        staller, resp = handshake(self.port, self.token)
        assert resp.get("status") == 0, resp
        staller.sendall((16 << 20).to_bytes(4, "big") + b"\x04" + b"\xa0" * 100_000)
        try:
            sock, resp = handshake(self.port, self.token)
            assert resp.get("status") == 0, f"a real client was refused: {resp!r}"
            self.expect_list(sock, "among-hoarders")
            sock.close()
            seq = self.client.append_message(STREAM, b"among hoarders")
            assert seq == len(self.payloads), f"append got {seq}"
            self.payloads.append(b"among hoarders")
        finally:
            for s in silent:
                s.close()
            staller.close()
        return "300 silent sockets and a stalled 16 MiB frame; a new client served"

    # -- an append above weir's frame limit (16 MiB by default; clients allow up to
    #    2^30): the SDK gets RequestPayloadTooLargeException and its connection goes on
    def append_above_the_frame_limit(self):
        try:
            self.client.append_message(STREAM, b"\x00" * (17 << 20))
        except self.sdk.exceptions.RequestPayloadTooLargeException as e:
            detail = str(e)
        else:
            raise AssertionError("a 17 MiB append was accepted")
        seq = self.client.append_message(STREAM, b"after the big one")
        assert seq == len(self.payloads), f"append got {seq}"
        self.payloads.append(b"after the big one")
        return detail[:80]

    # -- a client that pipelines reads and never reads the answers: the server stops
    #    reading it (bounded memory) and serves everyone else; it stays open until the
    #    SIGTERM at the end, which must still exit 0
    def client_that_does_not_read(self):
        sock, resp = handshake(self.port, self.token)
        assert resp.get("status") == 0, resp
        sock.setblocking(False)
        req = frame(5, cbor2.dumps({"requestId": "hoard", "streamName": STREAM, "readMessagesOptions": {
            "desiredStartSequenceNumber": 0, "minMessageCount": 1, "maxMessageCount": 20}}))
        sent = 0
        wire = req * 4000
        # Send what the server takes; once it stops reading, the send buffer fills.
        try:
            while sent < len(wire):
                sent += sock.send(wire[sent:sent + 65536])
        except BlockingIOError:
            pass
        self.hoarder = sock
        self.expect_list(self.idle, "beside-the-hoarder")
        seq = self.client.append_message(STREAM, b"beside the hoarder")
        assert seq == len(self.payloads), f"append got {seq}"
        self.payloads.append(b"beside the hoarder")
        return f"{sent} request bytes sent by a client that does not read; others served"

    # -- afterwards: everything still works and nothing was lost
    def survivors(self):
        sm = self.sdk
        seq = self.client.append_message(STREAM, b"after the storm")
        assert seq == len(self.payloads), f"SDK client append got sequence number {seq}, expected {len(self.payloads)}"
        self.payloads.append(b"after the storm")
        n = len(self.payloads)
        msgs = self.client.read_messages(STREAM, sm.ReadMessagesOptions(desired_start_sequence_number=0, min_message_count=n,
                                                                       max_message_count=n))
        got = [(m.sequence_number, m.payload) for m in msgs]
        assert got == list(enumerate(self.payloads)), f"stored messages differ: got {len(got)} messages, first mismatch at " + str(
            next((i for i, (a, b) in enumerate(zip(got, enumerate(self.payloads))) if a != b), min(len(got), n)))
        info = self.client.describe_message_stream(STREAM).storage_status
        assert (info.oldest_sequence_number, info.newest_sequence_number, info.total_bytes) == (
            0, n - 1, sum(len(p) + 24 for p in self.payloads)), f"storage status {info!r}"
        self.expect_list(self.idle, "idle-still-alive")
        return f"{n} messages intact, SDK client and idle connection still answer"


def main():
    import stream_manager as sdk
    import stream_manager.exceptions  # noqa: F401  (sdk.exceptions)
    report = Report("hostile input (raw sockets + stream-manager 1.1.2)")
    weir = Weir("hostile").start()
    try:
        os.environ["AWS_CONTAINER_AUTHORIZATION_TOKEN"] = weir.token
        h = Hostile(weir, report, sdk)
        h.setup()
        h.case("handshake-response-shape", h.good_handshake_shape)
        h.case("a-bad-connect-byte-status-8-then-close", h.bad_connect_byte)
        h.case("b-absurd-frame-length-closes", h.bad_lengths)
        h.case("c-garbage-cbor-closes", h.garbage_cbor)
        h.case("d-unknown-op-1.1.0-gets-op17-status18", h.unknown_op_v110)
        h.case("d-unknown-op-1.0.0-no-answer-connection-usable", h.unknown_op_v100)
        h.case("e-bad-token-status-2-then-close", h.bad_tokens)
        h.case("bad-fields-status-3-connection-usable", h.bad_fields)
        h.case("fragmented-and-pipelined-frames", h.fragmented_and_pipelined)
        h.case("update-on-1.0.0-never-status-above-14", h.update_on_v100)
        h.case("client-half-close-is-closed", h.half_close)
        h.case("abandoned-long-polls-harmless", h.abandoned_long_poll)
        h.case("silent-sockets-and-stalled-frame-do-not-lock-out-clients", h.hoarded_sockets)
        h.case("append-above-the-frame-limit-gets-status-4", h.append_above_the_frame_limit)
        h.case("a-client-that-does-not-read-holds-up-no-one", h.client_that_does_not_read)
        h.case("sdk-client-and-data-survive", h.survivors)
    except BaseException:
        weir.kill()
        raise
    # weir is stopped (SIGTERM, must exit 0) while the SDK client and the idle raw
    # connection are still connected: idle clients must not block shutdown.
    print("(stopping weir with clients still connected; SDK reconnect errors on stderr are expected)", flush=True)
    try:
        weir.stop()
        report.ok("sigterm-with-open-connections-exits-0")
    except HarnessError as e:
        report.fail("sigterm-with-open-connections-exits-0", str(e))
    h.idle.close()
    if h.hoarder is not None:
        h.hoarder.close()
    if report.failed:
        print("weir log tail:\n" + weir.log_tail(60), flush=True)
    return report.finish()


if __name__ == "__main__":
    main_guard(main)
