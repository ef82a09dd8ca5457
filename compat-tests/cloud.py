"""Cloud stand-ins for the exporter tests (Python 3.11 standard library only).

Everything listens on 127.0.0.1, on a port the kernel picked (port 0), and every
process started here is stopped by its PID and dies with the driver.  Facts cited
as "CLOUD.md <section>" are from shared/docs/CLOUD.md.

Stand-ins
---------
`Moto`        moto server 5.2.5 (py311-moto-5.2.5 venv of setup-clients.sh):
              `moto_server -H 127.0.0.1 -p 0`; werkzeug binds port 0 and prints
              ` * Running on http://127.0.0.1:PORT` (the real port) once it listens.
`Kinesalite`  kinesalite 3.3.3 (node-kinesalite-3.3.3): its CLI binds every
              interface, so a tiny node script runs
              `require('kinesalite')({createStreamMs: 0, ...}).listen(0, '127.0.0.1')`
              and prints `kinesalite listening on 127.0.0.1:PORT` (CLOUD.md
              "Stand-ins on loopback").  Its shard limit is raised from 10 (real
              Kinesis's old default account limit, which kinesalite enforces with
              LimitExceededException on CreateStream) to 1000, so one driver can
              create a stream per case.
Both are ready when that line has appeared AND a ListStreams call answers 200,
within START_DEADLINE_S.  stop(): SIGTERM, SIGKILL after STOP_DEADLINE_S.

`KinesisClient`  awsJson1.1 over raw HTTP: POST /, `X-Amz-Target:
              Kinesis_20131202.<Op>`, `Content-Type: application/x-amz-json-1.1`, a
              well-formed but unsigned SigV4 `Authorization` header and `X-Amz-Date`
              (kinesalite refuses a request without them; neither stand-in checks
              the signature).  Errors raise `AwsError(status, code, message)`, the
              code from `x-amzn-ErrorType` if present, else the body's `__type`
              (namespace before `#` and anything after `:` removed, as smithy-rs
              does).

`IotAnalyticsStandIn`  BatchPutMessage, restJson1, in-process (CLOUD.md "IoT
              Analytics BatchPutMessage"):
    POST /messages/batch  {"channelName": c, "messages": [{"messageId": id, "payload": base64}]}
    200 {"batchPutMessageErrorEntries": []}          accepted (stored per channel)
    400 InvalidRequestException                       channelName not ^[a-zA-Z0-9_]+$ / 1-128,
                                                      messageId not 1-128 characters, a messageId
                                                      twice in one batch, > 100 messages, payload
                                                      missing or not base64, body not JSON
    404 ResourceNotFoundException                     channel not created with add_channel()
    404 UnknownOperationException                     any other method/path
  Every error sets the header `x-amzn-ErrorType: <Code>` (which the restJson1
  parsers of the AWS SDKs read first; smithy-rs falls back to the body's
  `__type`/`code`) and the body `{"__type": <Code>, "message": <text>}`, with
  `Content-Type: application/json`.  An empty `messages` list is accepted.

`FaultProxy`  HTTP/1.1 keep-alive proxy in front of one upstream (a Kinesis
stand-in, or the IoT Analytics stand-in).  The operation is the `X-Amz-Target`
suffix for Kinesis, and for IoT Analytics the path (`POST /messages/batch` is
`BatchPutMessage`).  Each request is handled in this order:
  1. hold: while pause()/blackhole() is on, the request waits (counted by
     held()).  After resume(): a paused request goes on to step 2; a blackholed
     one gets its connection closed without an answer (an outage).
  2. reject_record(pred): Kinesis PutRecords/PutRecord whose record data matches
     pred -> the whole call is refused as Kinesis refuses a record it can never
     accept, an over-long one (CLOUD.md "Whole-call errors": ValidationException,
     "request can never succeed as is"; moto answers exactly this for a record
     over 1 MiB, and so does real Kinesis):
       400 {"__type": "ValidationException", "message": "1 validation error detected:
            Value 'java.nio.HeapByteBuffer[pos=0 lim=L cap=L]' at 'records.N.member.data'
            failed to satisfy constraint: Member must have length less than or equal to
            1048576"}     (N 1-based, L the record's length, one clause per matching record,
                           "; "-joined; the wording kinesalite uses, which mimics Kinesis;
                           moto says the same without the Value '...' part)
     IoT Analytics BatchPutMessage with a matching payload ->
       400 InvalidRequestException (header + body as above).
     Nothing is forwarded; the queued faults are not consumed (validation comes first).
  3. the next queued fault of the operation, if any (each fault applies n times):
     throttle(op, n)
       Kinesis: 400 {"__type": "ProvisionedThroughputExceededException",
                     "message": "Rate exceeded for stream S under account 123456789012."}
       IoT Analytics: 429, x-amzn-ErrorType: ThrottlingException, {"__type", "message"}
       (CLOUD.md "Whole-call errors" / "IoT Analytics BatchPutMessage")
     server_error(op, n, status=500|503)
       Kinesis: 500 InternalFailure / 503 ServiceUnavailable ({"__type", "message"})
       IoT Analytics: 500 InternalFailureException / 503 ServiceUnavailableException
     drop_connection(op, n, after_forward=False)
       the request is read whole, then the socket is shut down without a byte of
       answer (the client sees the connection closed).  after_forward=True first
       forwards it (the upstream stores the records) and drops the answer.
     partial_failure(op="PutRecords", n, fail_indexes, error_code=PTEE)
       only the surviving records go upstream; the answer is 200 with
       `FailedRecordCount` and `Records` in the request's order: survivors carry
       the upstream's `SequenceNumber`/`ShardId`, failed ones `ErrorCode`
       (ProvisionedThroughputExceededException, message "Rate exceeded for shard
       <shard> in stream S under account 123456789012.", or InternalFailure,
       message "Internal service failure.") and `ErrorMessage` (CLOUD.md
       "Kinesis Data Streams, PutRecords").  fail_indexes: indexes, or a dict
       index -> error code; indexes past a request's last record are ignored.
       If every record fails nothing is forwarded.
  4. otherwise forwarded as is (one fresh upstream connection per request), and
     the upstream's answer relayed (hop-by-hop headers dropped).
Every request is recorded (`calls()`): operation, fault applied, status answered,
the records the client sent and the records that went upstream.  Thread-safe.
A request the proxy cannot carry out (upstream unreachable, a partial_failure on a
body it cannot read) is answered 502 text/plain, which no AWS client mistakes for
a service answer.

The SDKs this is meant for: aws-sdk-kinesis 1.130 speaks awsJson1.1 by default
(`AwsJsonRpcProtocol::aws_json_1_1` in its config.rs); aws-sdk-iotanalytics 1.94
reads an error's code from `x-amzn-ErrorType`, else the body's `code`/`__type`, and
its message from `message`/`Message`/`errorMessage` (its json_errors.rs).
"""

import base64
import collections
import datetime
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import HarnessError, _die_with_parent, cache_dir

START_DEADLINE_S = 30
STOP_DEADLINE_S = 10
WAIT_DEADLINE_S = 10
ACCOUNT = "123456789012"
REGION = "us-east-1"

MOTO_VENV = "py311-moto-5.2.5"
KINESALITE_DIR = "node-kinesalite-3.3.3"

KINESIS_TARGET_PREFIX = "Kinesis_20131202."
AMZ_JSON = "application/x-amz-json-1.1"
PTEE = "ProvisionedThroughputExceededException"
INTERNAL_FAILURE = "InternalFailure"
MAX_RECORD_DATA = 1048576
CHANNEL_RE = re.compile(r"^[a-zA-Z0-9_]+$")
MAX_BATCH_MESSAGES = 100
IOTA_PATHS = {("POST", "/messages/batch"): "BatchPutMessage"}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade",
              "content-length", "server", "date"}

KinesisRecord = collections.namedtuple("KinesisRecord", "data partition_key sequence_number shard_id")


class AwsError(Exception):
    """An AWS-style error answer: HTTP status, error code, message."""

    def __init__(self, status, code, message, headers=None):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _deadline_wait(cond_fn, what, timeout=WAIT_DEADLINE_S, interval=0.02):
    """Poll cond_fn until it returns a true value (returned) or the deadline passes."""
    end = time.monotonic() + timeout
    while True:
        v = cond_fn()
        if v:
            return v
        if time.monotonic() > end:
            raise HarnessError(f"{what}: not reached within {timeout}s")
        time.sleep(interval)


def _sanitize_code(code):
    code = code.split(":", 1)[0]
    return code.rsplit("#", 1)[-1]


def _error_from(status, headers, body):
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    code = headers.get("x-amzn-errortype") or doc.get("__type") or doc.get("code") or f"HTTP{status}"
    msg = doc.get("message") or doc.get("Message") or doc.get("errorMessage") or body[:200].decode("utf-8", "replace")
    return AwsError(status, _sanitize_code(code), msg, headers)


def _http(endpoint, method, path, headers, body, timeout=30):
    """One request on a fresh connection: (status, {lower-case header: value}, body)."""
    host, port = endpoint.removeprefix("http://").rstrip("/").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _unsigned_sigv4_headers(service, region=REGION):
    now = datetime.datetime.now(datetime.timezone.utc)
    date = now.strftime("%Y%m%dT%H%M%SZ")
    return {
        "X-Amz-Date": date,
        "Authorization": (f"AWS4-HMAC-SHA256 Credential=AKIDWEIRCOMPAT/{date[:8]}/{region}/{service}/aws4_request, "
                          f"SignedHeaders=content-type;host;x-amz-date, Signature={'0' * 64}"),
    }


# -- processes -----------------------------------------------------------


class _StandInProcess:
    """A stand-in server process: started, found ready, stopped by PID."""

    name = "stand-in"
    ready_re = None

    def __init__(self):
        self.proc = None
        self.port = None
        self.endpoint = None
        self.output = collections.deque(maxlen=200)
        self._ready = threading.Event()

    def argv(self):
        raise NotImplementedError

    def env(self):
        return dict(os.environ)

    def start(self):
        self.proc = subprocess.Popen(
            self.argv(), env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", preexec_fn=_die_with_parent)
        threading.Thread(target=self._drain, daemon=True).start()
        end = time.monotonic() + START_DEADLINE_S
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                raise HarnessError(f"{self.name} exited with {self.proc.returncode} before printing its port:\n{self.tail()}")
            if time.monotonic() > end:
                self.kill()
                raise HarnessError(f"{self.name} printed no port within {START_DEADLINE_S}s:\n{self.tail()}")
        self.endpoint = f"http://127.0.0.1:{self.port}"
        client = KinesisClient(self.endpoint)
        last = []

        def answers():
            try:
                client.call("ListStreams", {})
                return True
            except (OSError, http.client.HTTPException, AwsError) as e:
                last[:] = [e]
                return False
        try:
            _deadline_wait(answers, f"{self.name} answering ListStreams", max(0.1, end - time.monotonic()), 0.05)
        except HarnessError as e:
            self.kill()
            raise HarnessError(f"{e} (last error {last}):\n{self.tail()}")
        return self

    def _drain(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.output.append(line)
            if not self._ready.is_set():
                m = self.ready_re.search(line)
                if m:
                    self.port = int(m.group(1))
                    self._ready.set()

    def tail(self, n=30):
        return "\n".join(f"    {self.name}: {l}" for l in list(self.output)[-n:])

    def stop(self):
        """SIGTERM, then SIGKILL if it has not exited within STOP_DEADLINE_S."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def kinesis(self):
        return KinesisClient(self.endpoint)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


class Moto(_StandInProcess):
    """moto server (Kinesis): sequence numbers "1", "2", ...; never throttles (CLOUD.md)."""

    name = "moto"
    ready_re = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")

    def argv(self):
        return [os.path.join(cache_dir(), MOTO_VENV, "bin", "moto_server"), "-H", "127.0.0.1", "-p", "0"]


KINESALITE_JS = """
const server = require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000});
server.listen(0, '127.0.0.1', () => {
  console.log('kinesalite listening on 127.0.0.1:' + server.address().port);
});
process.on('SIGTERM', () => process.exit(0));
"""


class Kinesalite(_StandInProcess):
    """kinesalite (Kinesis) from its JS API, on 127.0.0.1 only; realistic sequence numbers."""

    name = "kinesalite"
    ready_re = re.compile(r"kinesalite listening on 127\.0\.0\.1:(\d+)")

    def argv(self):
        return ["node", "-e", KINESALITE_JS]

    def env(self):
        env = dict(os.environ)
        env["NODE_PATH"] = os.path.join(cache_dir(), KINESALITE_DIR, "node_modules")
        return env


# -- a raw Kinesis client ------------------------------------------------


class KinesisClient:
    """awsJson1.1 Kinesis over raw HTTP (one connection per call)."""

    def __init__(self, endpoint, timeout=30):
        self.endpoint = endpoint
        self.timeout = timeout

    def call(self, op, body):
        headers = {"Content-Type": AMZ_JSON, "X-Amz-Target": KINESIS_TARGET_PREFIX + op}
        headers.update(_unsigned_sigv4_headers("kinesis"))
        status, hdrs, data = _http(self.endpoint, "POST", "/", headers, json.dumps(body).encode(), self.timeout)
        if status != 200:
            raise _error_from(status, hdrs, data)
        return json.loads(data) if data else {}

    def create_stream(self, name, shards=1, timeout=WAIT_DEADLINE_S):
        """CreateStream, then wait (bounded) until DescribeStreamSummary says ACTIVE."""
        self.call("CreateStream", {"StreamName": name, "ShardCount": shards})
        _deadline_wait(lambda: self.call("DescribeStreamSummary", {"StreamName": name})
                       ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE",
                       f"stream {name} ACTIVE", timeout)

    def shard_ids(self, name):
        shards, token = [], None
        while True:
            body = {"NextToken": token} if token else {"StreamName": name}
            out = self.call("ListShards", body)
            shards += [s["ShardId"] for s in out.get("Shards", [])]
            token = out.get("NextToken")
            if not token:
                return sorted(shards)

    def put_records(self, name, records):
        """records: [(data bytes, partition key)]; returns the PutRecords answer."""
        return self.call("PutRecords", {"StreamName": name, "Records": [
            {"Data": base64.b64encode(d).decode(), "PartitionKey": pk} for d, pk in records]})

    def read_all(self, name, max_calls=10000):
        """Every record of every shard (shards in id order, each shard's records in
        order): GetShardIterator(TRIM_HORIZON), then GetRecords until a call returns
        no record and MillisBehindLatest is 0 (or the shard is closed)."""
        out = []
        for shard in self.shard_ids(name):
            it = self.call("GetShardIterator", {"StreamName": name, "ShardId": shard,
                                                "ShardIteratorType": "TRIM_HORIZON"})["ShardIterator"]
            for _ in range(max_calls):
                page = self.call("GetRecords", {"ShardIterator": it, "Limit": 10000})
                recs = page.get("Records", [])
                out += [KinesisRecord(base64.b64decode(r["Data"]), r["PartitionKey"], r["SequenceNumber"], shard)
                        for r in recs]
                it = page.get("NextShardIterator")
                if not it or (not recs and page.get("MillisBehindLatest", 0) == 0):
                    break
            else:
                raise HarnessError(f"read_all({name}): shard {shard} not caught up after {max_calls} GetRecords")
        return out


class IotAnalyticsClient:
    """BatchPutMessage over raw HTTP (restJson1); boto3 no longer knows the service."""

    def __init__(self, endpoint, timeout=30):
        self.endpoint = endpoint
        self.timeout = timeout

    def batch_put_message(self, channel, messages):
        """messages: [(message id, payload bytes)]; returns the answer's JSON."""
        return self.raw({"channelName": channel, "messages": [
            {"messageId": i, "payload": base64.b64encode(p).decode()} for i, p in messages]})

    def raw(self, doc, path="/messages/batch"):
        headers = {"Content-Type": "application/json"}
        headers.update(_unsigned_sigv4_headers("iotanalytics"))
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        status, hdrs, data = _http(self.endpoint, "POST", path, headers, body, self.timeout)
        if status != 200:
            raise _error_from(status, hdrs, data)
        return json.loads(data)


# -- in-process HTTP servers ---------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, handler, owner):
        self.owner = owner
        self.conns = set()
        self.conns_lock = threading.Lock()
        self.connections = 0     # connections accepted so far (keep-alive shows as fewer than requests)
        super().__init__(("127.0.0.1", 0), handler)

    def handle_error(self, request, client_address):
        pass  # a client that went away mid-request is not the server's failure

    def close_all(self):
        with self.conns_lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        with self.server.conns_lock:
            self.server.conns.add(self.connection)
            self.server.connections += 1

    def finish(self):
        try:
            super().finish()
        finally:
            with self.server.conns_lock:
                self.server.conns.discard(self.connection)

    def log_message(self, format, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def answer(self, status, body, headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def drop(self):
        """Close the connection without a byte of answer."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_POST(self):
        self.server.owner._handle(self)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST


class _InProcessServer:
    def __init__(self):
        self.server = _Server(_Handler, self)
        self.port = self.server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.close_all()
        self.server.server_close()
        self._thread.join(STOP_DEADLINE_S)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


def _restjson_error(handler, status, code, message):
    handler.answer(status, json.dumps({"__type": code, "message": message}).encode(), [
        ("Content-Type", "application/json"), ("x-amzn-ErrorType", code),
        ("x-amzn-RequestId", str(uuid.uuid4()))])


def _awsjson_error(handler, status, code, message):
    handler.answer(status, json.dumps({"__type": code, "message": message}).encode(), [
        ("Content-Type", AMZ_JSON), ("x-amzn-RequestId", str(uuid.uuid4()))])


# -- IoT Analytics -------------------------------------------------------


class IotAnalyticsStandIn(_InProcessServer):
    """BatchPutMessage (see the module docstring); channels come from add_channel()."""

    def __init__(self):
        self._lock = threading.Lock()
        self._channels = {}      # name -> [(message id, payload bytes)] in arrival order
        self.requests = 0
        super().__init__()

    def add_channel(self, name):
        with self._lock:
            self._channels.setdefault(name, [])

    def remove_channel(self, name):
        """From now on BatchPutMessage to it answers 404 ResourceNotFoundException."""
        with self._lock:
            del self._channels[name]

    def received(self, channel):
        """[(message id, payload bytes)] of every accepted message, in arrival order."""
        with self._lock:
            return list(self._channels[channel])

    def messages(self, channel):
        """{message id: payload bytes} (a re-sent id keeps its last payload)."""
        return dict(self.received(channel))

    def _handle(self, h):
        body = h.read_body()
        with self._lock:
            self.requests += 1
        if (h.command, h.path.split("?", 1)[0]) not in IOTA_PATHS:
            return _restjson_error(h, 404, "UnknownOperationException", f"no operation {h.command} {h.path}")
        try:
            channel, msgs = self._validate(body)
        except ValueError as e:
            return _restjson_error(h, 400, "InvalidRequestException", str(e))
        with self._lock:
            if channel not in self._channels:
                known = False
            else:
                known = True
                self._channels[channel] += msgs
        if not known:
            return _restjson_error(h, 404, "ResourceNotFoundException", f"Channel {channel} not found.")
        h.answer(200, json.dumps({"batchPutMessageErrorEntries": []}).encode(), [
            ("Content-Type", "application/json"), ("x-amzn-RequestId", str(uuid.uuid4()))])

    @staticmethod
    def _validate(body):
        try:
            doc = json.loads(body)
        except ValueError:
            raise ValueError("request body is not JSON")
        if not isinstance(doc, dict):
            raise ValueError("request body is not a JSON object")
        channel = doc.get("channelName")
        if not isinstance(channel, str) or not 1 <= len(channel) <= 128 or not CHANNEL_RE.match(channel):
            raise ValueError(f"1 validation error detected: Value {channel!r} at 'channelName' failed to satisfy "
                             "constraint: Member must satisfy regular expression pattern: ^[a-zA-Z0-9_]+$ "
                             "and have length between 1 and 128")
        msgs = doc.get("messages")
        if not isinstance(msgs, list):
            raise ValueError("messages is required and must be a list")
        if len(msgs) > MAX_BATCH_MESSAGES:
            raise ValueError(f"1 validation error detected: Value at 'messages' failed to satisfy constraint: "
                             f"Member must have length less than or equal to {MAX_BATCH_MESSAGES} (got {len(msgs)})")
        out, seen = [], set()
        for i, m in enumerate(msgs):
            mid = m.get("messageId") if isinstance(m, dict) else None
            if not isinstance(mid, str) or not 1 <= len(mid) <= 128:
                raise ValueError(f"messages[{i}].messageId must be 1-128 characters")
            if mid in seen:
                raise ValueError(f"messageId {mid!r} appears twice in the batch; it must be unique within a batch")
            seen.add(mid)
            payload = m.get("payload")
            try:
                data = base64.b64decode(payload, validate=True) if isinstance(payload, str) else None
            except ValueError:
                data = None
            if data is None:
                raise ValueError(f"messages[{i}].payload is required (base64)")
            out.append((mid, data))
        return channel, out


# -- the fault proxy -----------------------------------------------------


Call = collections.namedtuple("Call", "op fault status sent forwarded")
"""One request through the FaultProxy: operation, fault applied (None, "throttle",
"server_error:500", "drop", "drop_after_forward", "partial", "reject",
"blackhole"; "pending" while it is being held or handled), status answered (None
when dropped), the records the client sent
([(data, partition key)] for PutRecords/PutRecord, [(message id, payload)] for
BatchPutMessage, None otherwise) and those that went upstream (None if nothing)."""


class FaultProxy(_InProcessServer):
    """See the module docstring.  service: "kinesis" or "iotanalytics"."""

    def __init__(self, upstream, service="kinesis"):
        if service not in ("kinesis", "iotanalytics"):
            raise ValueError(f"service must be kinesis or iotanalytics, not {service!r}")
        self.upstream = upstream if isinstance(upstream, str) else upstream.endpoint
        self.service = service
        self._cond = threading.Condition()
        self._faults = collections.defaultdict(collections.deque)   # op -> deque of [kind, n, args]
        self._rejects = []                                           # predicates on record data
        self._hold_mode = None                                       # None, "pause", "blackhole"
        self._hold_gen = 0
        self._held = 0
        self._calls = []
        super().__init__()

    # -- programming ----------------------------------------------------

    def _op(self, op):
        return IOTA_PATHS.get(("POST", op), op)

    def _queue(self, op, kind, n, args):
        if n < 1:
            raise ValueError("n must be at least 1")
        with self._cond:
            self._faults[self._op(op)].append([kind, n, args])

    def throttle(self, op, n=1):
        self._queue(op, "throttle", n, {})

    def server_error(self, op, n=1, status=500):
        if status not in (500, 503):
            raise ValueError("status must be 500 or 503")
        self._queue(op, "server_error", n, {"status": status})

    def drop_connection(self, op, n=1, after_forward=False):
        self._queue(op, "drop", n, {"after_forward": after_forward})

    def partial_failure(self, op="PutRecords", n=1, fail_indexes=(), error_code=PTEE):
        if self.service != "kinesis" or self._op(op) != "PutRecords":
            raise ValueError("partial_failure is for Kinesis PutRecords")
        fails = dict(fail_indexes) if isinstance(fail_indexes, dict) else {i: error_code for i in fail_indexes}
        bad = {c for c in fails.values() if c not in (PTEE, INTERNAL_FAILURE)}
        if bad or not fails:
            raise ValueError(f"fail_indexes must name at least one record; codes {PTEE} or {INTERNAL_FAILURE}, not {bad}")
        self._queue(op, "partial", n, {"fails": fails})

    def reject_record(self, predicate):
        """Refuse (until clear()) every call carrying a record whose data matches."""
        with self._cond:
            self._rejects.append(predicate)

    def pause(self):
        """Hold every request from now on; resume() forwards them."""
        self._set_hold("pause")

    def blackhole(self):
        """Hold every request from now on; resume() closes their connections unanswered."""
        self._set_hold("blackhole")

    def _set_hold(self, mode):
        with self._cond:
            self._hold_mode = mode

    def resume(self):
        with self._cond:
            self._hold_mode = None
            self._hold_gen += 1
            self._cond.notify_all()

    def clear(self):
        """Forget the queued faults and reject predicates (holds stay until resume())."""
        with self._cond:
            self._faults.clear()
            self._rejects.clear()

    def stop(self):
        self.resume()
        super().stop()

    # -- observing -------------------------------------------------------

    def calls(self, op=None):
        with self._cond:
            return [c for c in self._calls if op is None or c.op == self._op(op)]

    def count(self, op=None):
        return len(self.calls(op))

    def sent_records(self, op="PutRecords"):
        """Per request of op, the records the client sent (retries show here)."""
        return [c.sent for c in self.calls(op)]

    def forwarded_records(self, op="PutRecords"):
        """Per request of op that reached the upstream, the records it carried there."""
        return [c.forwarded for c in self.calls(op) if c.forwarded is not None]

    def pending_faults(self, op):
        with self._cond:
            return sum(f[1] for f in self._faults.get(self._op(op), ()))

    def held(self):
        with self._cond:
            return self._held

    def wait_count(self, op, n, timeout=WAIT_DEADLINE_S):
        """Block until at least n requests of op have been answered (or dropped)."""
        return self._wait(lambda: sum(1 for c in self._calls if c.op == self._op(op) and c.fault != "pending") >= n,
                          f"{n} {op} requests through the proxy", timeout)

    def wait_held(self, n, timeout=WAIT_DEADLINE_S):
        """Block until at least n requests are being held by pause()/blackhole()."""
        return self._wait(lambda: self._held >= n, f"{n} held requests", timeout)

    def _wait(self, pred, what, timeout):
        end = time.monotonic() + timeout
        with self._cond:
            while not pred():
                left = end - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{what}: not reached within {timeout}s")
                self._cond.wait(left)
        return True

    # -- handling ---------------------------------------------------------

    def _operation(self, h):
        if self.service == "kinesis":
            return h.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1] or "?"
        path = h.path.split("?", 1)[0]
        return IOTA_PATHS.get((h.command, path), path)

    def _records(self, op, body):
        """(records the request carries, parsed JSON) for the operations faults understand."""
        try:
            doc = json.loads(body)
            if op == "PutRecords":
                return [(base64.b64decode(r["Data"]), r["PartitionKey"]) for r in doc["Records"]], doc
            if op == "PutRecord":
                return [(base64.b64decode(doc["Data"]), doc["PartitionKey"])], doc
            if op == "BatchPutMessage":
                return [(m["messageId"], base64.b64decode(m["payload"])) for m in doc["messages"]], doc
        except (ValueError, KeyError, TypeError):
            pass
        return None, None

    def _record(self, idx, **kw):
        with self._cond:
            self._calls[idx] = self._calls[idx]._replace(**kw)
            self._cond.notify_all()

    def _handle(self, h):
        body = h.read_body()
        op = self._operation(h)
        sent, doc = self._records(op, body)
        with self._cond:
            idx = len(self._calls)
            self._calls.append(Call(op, "pending", None, sent, None))
            self._cond.notify_all()
            mode = self._hold_mode
            if mode:
                gen = self._hold_gen
                self._held += 1
                self._cond.notify_all()
                while self._hold_gen == gen:
                    self._cond.wait()
                self._held -= 1
            if mode == "blackhole":
                kind, args = "blackhole", {}
            elif sent is not None and any(p(d) for p in self._rejects for d in self._data(op, sent)):
                kind, args = "reject", {}
            else:
                q = self._faults.get(op)
                if q:
                    kind, n, args = q[0]
                    q[0][1] -= 1
                    if q[0][1] == 0:
                        q.popleft()
                else:
                    kind, args = None, {}
        try:
            self._apply(h, idx, op, kind, args, body, sent, doc)
        except (OSError, http.client.HTTPException, HarnessError) as e:
            # the upstream could not be reached, or the fault could not be applied:
            # say so with a 502 the test will see
            self._record(idx, fault=kind, status=502)
            try:
                h.answer(502, f"fault proxy: upstream {self.upstream}: {e}".encode(), [("Content-Type", "text/plain")])
            except OSError:
                pass

    @staticmethod
    def _data(op, sent):
        return [p for _, p in sent] if op == "BatchPutMessage" else [d for d, _ in sent]

    def _stream(self, doc):
        return (doc or {}).get("StreamName", "?")

    def _apply(self, h, idx, op, kind, args, body, sent, doc):
        if kind == "blackhole":
            self._record(idx, fault=kind)
            return h.drop()
        if kind == "reject":
            self._record(idx, fault=kind, status=400)
            if self.service == "iotanalytics":
                return _restjson_error(h, 400, "InvalidRequestException", "message payload refused by the test")
            where = [i + 1 for i, d in enumerate(self._data(op, sent)) if any(p(d) for p in self._rejects)]
            field = "records.{}.member.data" if op == "PutRecords" else "data"
            sizes = [len(d) for d in self._data(op, sent)]
            clauses = [f"Value 'java.nio.HeapByteBuffer[pos=0 lim={sizes[i - 1]} cap={sizes[i - 1]}]' at "
                       f"'{field.format(i)}' failed to satisfy constraint: Member must have length "
                       f"less than or equal to {MAX_RECORD_DATA}" for i in where]
            n = len(clauses)
            msg = f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(clauses)
            return _awsjson_error(h, 400, "ValidationException", msg)
        if kind == "throttle":
            self._record(idx, fault=kind, status=400 if self.service == "kinesis" else 429)
            if self.service == "kinesis":
                return _awsjson_error(h, 400, PTEE, f"Rate exceeded for stream {self._stream(doc)} under account {ACCOUNT}.")
            return _restjson_error(h, 429, "ThrottlingException", "Rate exceeded")
        if kind == "server_error":
            status = args["status"]
            self._record(idx, fault=f"server_error:{status}", status=status)
            if self.service == "kinesis":
                code = "InternalFailure" if status == 500 else "ServiceUnavailable"
                return _awsjson_error(h, status, code, "Internal service failure." if status == 500 else "Service unavailable.")
            code = "InternalFailureException" if status == 500 else "ServiceUnavailableException"
            return _restjson_error(h, status, code, "Internal failure." if status == 500 else "Service unavailable.")
        if kind == "drop" and not args["after_forward"]:
            self._record(idx, fault="drop")
            return h.drop()
        if kind == "partial":
            return self._partial(h, idx, args["fails"], body, sent, doc)
        status, headers, rbody = self._forward(h, body)
        if kind == "drop":
            self._record(idx, fault="drop_after_forward", forwarded=sent if sent is not None else [])
            return h.drop()
        self._record(idx, fault=None, status=status, forwarded=sent if sent is not None else [])
        h.answer(status, rbody, headers)

    def _forward(self, h, body):
        headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_BY_HOP}
        status, rheaders, rbody = _http(self.upstream, h.command, h.path, headers, body)
        return status, [(k, v) for k, v in rheaders.items() if k not in HOP_BY_HOP], rbody

    def _partial(self, h, idx, fails, body, sent, doc):
        if sent is None:
            raise HarnessError("partial_failure: the PutRecords body could not be read")
        survivors = [i for i in range(len(sent)) if i not in fails]
        upstream_entries, status, headers, shard = [], 200, [("Content-Type", AMZ_JSON)], "shardId-000000000000"
        if survivors:
            sub = dict(doc, Records=[doc["Records"][i] for i in survivors])
            status, headers, rbody = self._forward(h, json.dumps(sub).encode())
            if status != 200:
                # the upstream refused the surviving records: its answer stands
                self._record(idx, fault="partial", status=status, forwarded=[sent[i] for i in survivors])
                return h.answer(status, rbody, headers)
            answer = json.loads(rbody)
            upstream_entries = answer["Records"]
            shard = next((e["ShardId"] for e in upstream_entries if "ShardId" in e), shard)
        it = iter(upstream_entries)
        entries = []
        for i in range(len(sent)):
            code = fails.get(i)
            if code == PTEE:
                entries.append({"ErrorCode": PTEE, "ErrorMessage":
                                f"Rate exceeded for shard {shard} in stream {self._stream(doc)} under account {ACCOUNT}."})
            elif code:
                entries.append({"ErrorCode": code, "ErrorMessage": "Internal service failure."})
            else:
                entries.append(next(it))
        out = {"FailedRecordCount": sum(1 for e in entries if "ErrorCode" in e), "Records": entries}
        if survivors and "EncryptionType" in answer:
            out["EncryptionType"] = answer["EncryptionType"]
        self._record(idx, fault="partial", status=200,
                     forwarded=[sent[i] for i in survivors] if survivors else None)
        h.answer(200, json.dumps(out).encode(), [(k, v) for k, v in headers if k.lower() != "content-length"])

