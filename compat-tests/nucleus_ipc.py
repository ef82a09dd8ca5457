"""A stand-in of the Greengrass v2 nucleus IPC socket, the project's own (Python 3.11 standard library).

It serves what weir asks of a nucleus: the event-stream RPC CONNECT handshake and the
operation `aws.greengrass#ValidateAuthorizationToken`, the way shared/docs GREENGRASS.md 2.3-2.6
and 3 describe the classic nucleus and nucleus lite:

* framing: AWS event-stream messages (prelude: total length, headers length, CRC-32;
  headers; payload; message CRC-32), every header type decoded;
* RPC: `:message-type`, `:message-flags`, `:stream-id`; operation stream ids must be the
  previous one + 1 (else PROTOCOL_ERROR and the connection closes); a message before the
  CONNECT is a protocol error; PING is answered with PING_RESPONSE;
* CONNECT: `:version` must be `0.1.0` and the payload's `authToken` a known SVCUID, else
  CONNECT_ACK without the accepted flag and the connection closes (classic) or the
  connection closes without an ACK (lite);
* ValidateAuthorizationToken: only the component `aws.greengrass.StreamManager` may call it
  (others get `UnauthorizedError`); a token that is some component's SVCUID gives
  `{"isValid": true}`, anything else `InvalidTokenError` (never isValid false; lite also
  refuses a token that is not 16 characters of base64);
* UpdateState (`{"state": ...}`, any component): answered `UpdateStateResponse` `{}`; with
  `--probe-port PORT` the stand-in first tries a TCP connect to 127.0.0.1:PORT and logs whether
  it was accepted (`update_state component=... state=RUNNING port_open=True`);
* PutComponentMetric (classic only: nucleus lite has no handler for it, GREENGRASS.md 3): the
  caller must be named `aws.*` (else UnauthorizedError); each metric needs a name of 1-32
  bytes, a known unit and a value >= 0 (else InvalidArgumentsError); every metric is logged
  (`metric component=... name=... unit=... value=...`), answered `PutComponentMetricResponse`;
* replies: classic sets TERMINATE_STREAM on them and writes errors as `{"message": ...}`;
  lite sets no flag on a response, and writes errors (flagged TERMINATE_STREAM) as
  `{"_message": ..., "_errorCode": ...}`; unknown operations get the classic "Unsupported
  Operation" error, or in lite mode what ggipcd answers an operation it has no handler for
  (ipc_dispatch.c GG_ERR_NOENTRY, then ipc_server.c send_stream_error): ServiceError with an
  empty `_message`.

test_ipc_auth.py checks this stand-in with the real awsiotsdk IPC client before it trusts it
to test weir.

Modes besides `classic` and `lite`: `silent` accepts connections and CONNECTs but never
answers a validation.  In every mode a validation of a token starting `HOLD` is held
until the process gets SIGUSR1, then answered as for the rest of the token.

Run: nucleus_ipc.py --socket PATH [--mode classic|lite|silent] [--probe-port PORT] --component NAME=SVCUID ...
Prints `nucleus_ipc listening on PATH` once clients can connect, one line per event after
that (`connect accepted component=...`, `validate stream=N valid=...`, `holding stream=N`,
`update_state ...`, `metric ...`, `unsupported operation NAME`),
and runs until SIGTERM/SIGINT (then removes the socket and exits 0).
"""

import argparse
import base64
import binascii
import json
import os
import signal
import socket
import struct
import sys
import threading
import zlib

# :message-type
APPLICATION_MESSAGE, APPLICATION_ERROR, PING, PING_RESPONSE = 0, 1, 2, 3
CONNECT, CONNECT_ACK, PROTOCOL_ERROR, INTERNAL_ERROR = 4, 5, 6, 7
# :message-flags
CONNECTION_ACCEPTED, TERMINATE_STREAM = 1, 2

STREAM_MANAGER = "aws.greengrass.StreamManager"
OPERATION = "aws.greengrass#ValidateAuthorizationToken"
RESPONSE_MODEL = "aws.greengrass#ValidateAuthorizationTokenResponse"
UPDATE_STATE = "aws.greengrass#UpdateState"
PUT_COMPONENT_METRIC = "aws.greengrass#PutComponentMetric"
METRIC_UNITS = ("BYTES", "BYTES_PER_SECOND", "COUNT", "COUNT_PER_SECOND", "MEGABYTES", "SECONDS")
MAX_MESSAGE = 24 << 20   # aws-c-event-stream's cap (lite: 10 000 bytes)

# header value types
T_TRUE, T_FALSE, T_BYTE, T_INT16, T_INT32, T_INT64, T_BYTES, T_STRING, T_TIMESTAMP, T_UUID = range(10)


class FrameError(Exception):
    pass


def _crc(data, value=0):
    return zlib.crc32(data, value) & 0xFFFFFFFF


def encode_headers(headers):
    """headers: [(name, type, value)]."""
    out = bytearray()
    for name, kind, value in headers:
        raw = name.encode()
        out += bytes([len(raw)]) + raw + bytes([kind])
        if kind in (T_TRUE, T_FALSE):
            pass
        elif kind == T_BYTE:
            out += struct.pack(">b", value)
        elif kind == T_INT16:
            out += struct.pack(">h", value)
        elif kind == T_INT32:
            out += struct.pack(">i", value)
        elif kind in (T_INT64, T_TIMESTAMP):
            out += struct.pack(">q", value)
        elif kind in (T_BYTES, T_STRING):
            data = value.encode() if kind == T_STRING else value
            out += struct.pack(">H", len(data)) + data
        elif kind == T_UUID:
            out += value
        else:
            raise ValueError(kind)
    return bytes(out)


def encode(headers, payload=b""):
    hdrs = encode_headers(headers)
    total = 16 + len(hdrs) + len(payload)
    prelude = struct.pack(">II", total, len(hdrs))
    prelude += struct.pack(">I", _crc(prelude))
    body = prelude + hdrs + payload
    return body + struct.pack(">I", _crc(body))


def decode_headers(data):
    headers, i = [], 0
    while i < len(data):
        n = data[i]
        name = data[i + 1:i + 1 + n].decode()
        i += 1 + n
        kind = data[i]
        i += 1
        if kind == T_TRUE:
            value = True
        elif kind == T_FALSE:
            value = False
        elif kind == T_BYTE:
            value = struct.unpack_from(">b", data, i)[0]; i += 1
        elif kind == T_INT16:
            value = struct.unpack_from(">h", data, i)[0]; i += 2
        elif kind == T_INT32:
            value = struct.unpack_from(">i", data, i)[0]; i += 4
        elif kind in (T_INT64, T_TIMESTAMP):
            value = struct.unpack_from(">q", data, i)[0]; i += 8
        elif kind in (T_BYTES, T_STRING):
            (length,) = struct.unpack_from(">H", data, i)
            raw = data[i + 2:i + 2 + length]
            if len(raw) != length:
                raise FrameError("a header value past the header block")
            value = raw.decode() if kind == T_STRING else bytes(raw)
            i += 2 + length
        elif kind == T_UUID:
            value = bytes(data[i:i + 16]); i += 16
        else:
            raise FrameError(f"header type {kind}")
        if i > len(data):
            raise FrameError("a header past the header block")
        headers.append((name, kind, value))
    return headers


def decode(buf):
    """One message off the front of `buf` (a bytearray, consumed): (headers, payload), or None
    while incomplete. Raises FrameError on a bad length or CRC."""
    if len(buf) < 12:
        return None
    total, hlen, pcrc = struct.unpack_from(">III", buf, 0)
    if _crc(bytes(buf[:8])) != pcrc:
        raise FrameError("prelude CRC")
    if total < 16 or total > MAX_MESSAGE or hlen > total - 16:
        raise FrameError(f"lengths total={total} headers={hlen}")
    if len(buf) < total:
        return None
    msg = bytes(buf[:total])
    del buf[:total]
    if _crc(msg[:-4]) != struct.unpack_from(">I", msg, total - 4)[0]:
        raise FrameError("message CRC")
    try:
        headers = decode_headers(msg[12:12 + hlen])
    except (IndexError, struct.error, UnicodeDecodeError) as e:
        raise FrameError(f"headers: {e}")
    return headers, msg[12 + hlen:total - 4]


def header(headers, name, kind=None):
    for n, k, v in headers:
        if n.lower() == name.lower() and (kind is None or k == kind):
            return v
    return None


def rpc(kind, flags, stream, headers=(), payload=b""):
    return encode(list(headers) + [(":message-type", T_INT32, kind), (":message-flags", T_INT32, flags),
                                   (":stream-id", T_INT32, stream)], payload)


def json_headers(model):
    return [(":content-type", T_STRING, "application/json"), ("service-model-type", T_STRING, model)]


def lite_token_ok(token):
    """Lite's check: 16 characters of base64 (12 bytes)."""
    if not isinstance(token, str) or len(token) != 16:
        return False
    try:
        return len(base64.b64decode(token, validate=True)) == 12
    except (binascii.Error, ValueError):
        return False


class Nucleus:
    def __init__(self, path, components, mode="classic", out=sys.stdout, probe_port=None):
        self.path = path
        self.probe_port = probe_port
        self.components = dict(components)   # svcuid -> component name
        self.mode = mode
        self.out = out
        self.lock = threading.Lock()
        self.held = []                        # (send, stream, token)
        self.released = False
        self.listener = None

    def log(self, line):
        with self.lock:
            print(line, file=self.out, flush=True)

    def listen(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o666)
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()
        self.log(f"nucleus_ipc listening on {self.path}")

    def close(self):
        if self.listener is not None:
            self.listener.close()
            if os.path.exists(self.path):
                os.unlink(self.path)

    def release(self):
        """Answer the validations held so far (and those still to come)."""
        with self.lock:
            held, self.held, self.released = self.held, [], True
        for send, stream, token in held:
            self.log(f"released stream={stream}")
            self._answer(send, stream, token[len("HOLD"):])

    def _accept(self):
        n = 0
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            n += 1
            self.log(f"connection {n}")
            threading.Thread(target=self._serve, args=(conn, n), daemon=True).start()

    def _serve(self, conn, n):
        buf = bytearray()
        write_lock = threading.Lock()

        def send(data):
            with write_lock:
                try:
                    conn.sendall(data)
                except OSError:
                    pass

        def close_with(kind, message):
            self.log(f"connection {n}: {message}")
            send(rpc(kind, 0, 0, [(":content-type", T_STRING, "application/json")],
                     json.dumps({"message": message}).encode()))
            conn.close()

        def messages():
            while True:
                msg = decode(buf)
                if msg is not None:
                    yield msg
                    continue
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf.extend(chunk)

        component = None
        max_stream = 0
        open_streams = set()
        try:
            for headers, payload in messages():
                kind = header(headers, ":message-type", T_INT32)
                flags = header(headers, ":message-flags", T_INT32) or 0
                stream = header(headers, ":stream-id", T_INT32)
                if kind is None or stream is None:
                    return close_with(PROTOCOL_ERROR, "missing :message-type or :stream-id")
                if component is None:
                    if kind != CONNECT or stream != 0:
                        return close_with(PROTOCOL_ERROR, "a message before CONNECT")
                    try:
                        token = json.loads(payload.decode()).get("authToken")
                    except (ValueError, AttributeError):
                        token = None
                    name = self.components.get(token)
                    if header(headers, ":version", T_STRING) != "0.1.0" or name is None:
                        self.log(f"connection {n}: connect refused")
                        if self.mode != "lite":
                            send(rpc(CONNECT_ACK, 0, 0))
                        return conn.close()
                    component = name
                    send(rpc(CONNECT_ACK, CONNECTION_ACCEPTED, 0))
                    self.log(f"connect accepted component={name}")
                    continue
                if stream == 0:
                    if kind == PING:
                        echo = [h for h in headers if not h[0].startswith(":")]
                        send(rpc(PING_RESPONSE, 0, 0, echo, payload))
                        continue
                    if kind == PING_RESPONSE:
                        continue
                    return close_with(PROTOCOL_ERROR, f"message type {kind} on stream 0")
                if kind not in (APPLICATION_MESSAGE, APPLICATION_ERROR):
                    return close_with(PROTOCOL_ERROR, f"message type {kind} on stream {stream}")
                if stream in open_streams or stream <= max_stream:
                    # A message on a stream already open (or closed): a TERMINATE from the
                    # client ends it (the Python client sends one); nothing else is expected.
                    if flags & TERMINATE_STREAM:
                        open_streams.discard(stream)
                    continue
                if stream != max_stream + 1:
                    return close_with(PROTOCOL_ERROR, f"stream id {stream} after {max_stream}")
                max_stream = stream
                operation = header(headers, "operation", T_STRING)
                if operation == UPDATE_STATE:
                    self._update_state(send, stream, component, payload)
                    continue
                if operation == PUT_COMPONENT_METRIC and self.mode != "lite":
                    self._put_component_metric(send, stream, component, payload)
                    continue
                if operation != OPERATION:
                    self.log(f"unsupported operation {operation}")
                    if self.mode == "lite":
                        self._error(send, stream, "ServiceError", "")
                        continue
                    send(rpc(APPLICATION_ERROR, TERMINATE_STREAM, stream,
                             [(":content-type", T_STRING, "application/json")],
                             json.dumps({"error": "Unsupported Operation",
                                         "message": f"{operation} is an unsupported operation."}).encode()))
                    continue
                if self.mode == "lite":
                    open_streams.add(stream)
                if component != STREAM_MANAGER:
                    self._error(send, stream, "UnauthorizedError",
                                f"Principal {component} is not authorized to perform {OPERATION}")
                    continue
                try:
                    token = json.loads(payload.decode()).get("token")
                except (ValueError, AttributeError):
                    token = None
                if token is None or not isinstance(token, str):
                    self._error(send, stream, "ServiceError", "token is required")
                    continue
                if self.mode == "silent":
                    self.log(f"silent stream={stream}")
                    continue
                if token.startswith("HOLD"):
                    with self.lock:
                        if not self.released:
                            self.held.append((send, stream, token))
                            print(f"holding stream={stream}", file=self.out, flush=True)
                            continue
                    token = token[len("HOLD"):]
                self._answer(send, stream, token)
        except FrameError as e:
            close_with(PROTOCOL_ERROR, f"bad frame: {e}")
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass
            self.log(f"connection {n} closed")

    def _answer(self, send, stream, token):
        valid = token in self.components and (self.mode != "lite" or lite_token_ok(token))
        self.log(f"validate stream={stream} valid={valid}")
        if not valid:
            return self._error(send, stream, "InvalidTokenError",
                               "Invalid token used when trying to authorize")
        flags = 0 if self.mode == "lite" else TERMINATE_STREAM
        send(rpc(APPLICATION_MESSAGE, flags, stream, json_headers(RESPONSE_MODEL), b'{"isValid":true}'))

    def _respond(self, send, stream, model, body):
        flags = 0 if self.mode == "lite" else TERMINATE_STREAM
        send(rpc(APPLICATION_MESSAGE, flags, stream, json_headers(model), json.dumps(body).encode()))

    def _update_state(self, send, stream, component, payload):
        try:
            state = json.loads(payload.decode()).get("state")
        except (ValueError, AttributeError):
            state = None
        if not isinstance(state, str):
            return self._error(send, stream, "ServiceError", "Received invalid parameters.")
        probe = "-"
        if self.probe_port:
            try:
                socket.create_connection(("127.0.0.1", self.probe_port), timeout=5).close()
                probe = "True"
            except OSError:
                probe = "False"
        self.log(f"update_state component={component} state={state} port_open={probe}")
        self._respond(send, stream, "aws.greengrass#UpdateStateResponse", {})

    def _put_component_metric(self, send, stream, component, payload):
        if not component.startswith("aws."):
            return self._error(send, stream, "UnauthorizedError",
                               f"{component} may not publish component metrics")
        try:
            metrics = json.loads(payload.decode()).get("metrics")
        except (ValueError, AttributeError):
            metrics = None
        ok = isinstance(metrics, list) and all(
            isinstance(m, dict) and isinstance(m.get("name"), str) and 1 <= len(m["name"].encode()) <= 32
            and m.get("unit") in METRIC_UNITS and isinstance(m.get("value"), (int, float))
            and not isinstance(m.get("value"), bool) and m["value"] >= 0 for m in metrics)
        if not ok:
            self.log(f"metric refused {payload!r}")
            return self._error(send, stream, "InvalidArgumentsError", "invalid metrics")
        for m in metrics:
            value = m["value"]
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            self.log(f"metric component={component} name={m['name']} unit={m['unit']} value={value}")
        self._respond(send, stream, "aws.greengrass#PutComponentMetricResponse", {})

    def _error(self, send, stream, code, message):
        if self.mode == "lite":
            # ggipcd's send_stream_error flags its errors TERMINATE_STREAM (its responses not).
            flags, body = TERMINATE_STREAM, {"_message": message, "_errorCode": code}
        else:
            flags, body = TERMINATE_STREAM, {"message": message}
        send(rpc(APPLICATION_ERROR, flags, stream, json_headers("aws.greengrass#" + code),
                 json.dumps(body).encode()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--mode", choices=["classic", "lite", "silent"], default="classic")
    parser.add_argument("--component", action="append", default=[], metavar="NAME=SVCUID")
    parser.add_argument("--probe-port", type=int, default=None)
    args = parser.parse_args()
    components = {}
    for item in args.component:
        name, _, svcuid = item.partition("=")
        components[svcuid] = name
    nucleus = Nucleus(args.socket, components, args.mode, probe_port=args.probe_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: threading.Thread(target=nucleus.release, daemon=True).start())
    nucleus.listen()
    while not stop.wait(3600):
        pass
    nucleus.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
