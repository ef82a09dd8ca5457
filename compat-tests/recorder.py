#!/usr/bin/env python3
"""Records weir's protocol fixtures from the real stream manager client SDKs.

recorder.py is a scripted fake stream manager server. For each SDK it listens
on 127.0.0.1 (port 0), runs one client program (recorder_client.py with the
SDK's own venv, or recorder_client.js with node) that drives a fixed session
(the "plan", built below), logs every client->server frame exactly as received
and answers each request with the bytes weir must send: cbor2.dumps of dicts
built from the rules of weir's behaviour contract (SPEC.md), NOT from weir's
output. A tiny model of the session (sequence numbers, stored payloads, stored
definitions with defaults filled, totalBytes) makes the answers semantically
right, so the client proceeds; the client scripts assert every result and the
recorder fails on any request the plan did not expect.

Usage (any python3; it re-executes itself with the stream-manager 1.1.2 venv's
python, which has cbor2):
  compat-tests/recorder.py --all                 re-record all four fixtures
  compat-tests/recorder.py LABEL [LABEL...]       re-record some
  compat-tests/recorder.py --cross-check [LABEL]  run the clients against the
        real weir binary (WEIR_BIN or target/debug/weir) through a recording
        proxy and diff weir's answers with the recorder's (ingestTime ignored)
  compat-tests/recorder.py --print-plan LABEL     show the session plan
  compat-tests/recorder.py --verify               re-derive every stored response from the
        stored requests (no clients run); fails if a fixture was edited by hand
Options: --out DIR (default protocol-fixtures/), -v (print every exchange).
"""

import argparse
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
RECORDER_VENV = "py311-stream-manager-1.1.2"


def cache_dir():
    return os.path.abspath(os.environ.get("WEIR_COMPAT_CACHE") or os.path.join(REPO, "target", "compat-cache"))


def run_setup_clients():
    script = os.path.join(HERE, "setup-clients.sh")
    out = subprocess.run(["bash", script], check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    if lines:
        os.environ["WEIR_COMPAT_CACHE"] = lines[-1].strip()
    os.environ["RECORDER_SETUP_DONE"] = "1"


def ensure_recorder_python(argv):
    """Re-exec with the stream-manager 1.1.2 venv python (cbor2 5.9) unless already there."""
    venv = os.path.join(cache_dir(), RECORDER_VENV)
    if os.path.realpath(sys.prefix) == os.path.realpath(venv):
        return
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py) or "--all" in argv:
        run_setup_clients()
        venv = os.path.join(cache_dir(), RECORDER_VENV)
        py = os.path.join(venv, "bin", "python")
    os.execv(py, [py, os.path.abspath(__file__)] + argv)


if __name__ == "__main__":
    ensure_recorder_python(sys.argv[1:])

import cbor2  # noqa: E402  (only importable inside the venv)

# --------------------------------------------------------------------------
# Constants of the fixtures
# --------------------------------------------------------------------------
INGEST_TIME = 1700000000000
AUTH_TOKEN = "fixture-token"
SERVER_VERSION = "weir-test"
CLIENT_IDENTIFIER = "client-1"
SUPPORTED_PROTOCOL_VERSIONS = ["1.0.0", "1.1.0"]
DEFAULT_MAX_SIZE = 268435456
DEFAULT_SEGMENT_SIZE = 16777216

# Operations
OP_CONNECT, OP_CREATE, OP_DELETE, OP_APPEND, OP_READ = 1, 2, 3, 4, 5
OP_CONNECT_RESPONSE, OP_CREATE_RESPONSE, OP_DELETE_RESPONSE = 6, 7, 8
OP_APPEND_RESPONSE, OP_READ_RESPONSE, OP_LIST, OP_LIST_RESPONSE = 9, 10, 11, 12
OP_DESCRIBE, OP_DESCRIBE_RESPONSE, OP_UPDATE, OP_UPDATE_RESPONSE = 13, 14, 15, 16
OP_UNKNOWN_OPERATION_ERROR = 17

CALL_OPS = {"create": OP_CREATE, "delete": OP_DELETE, "append": OP_APPEND, "read": OP_READ,
            "list": OP_LIST, "describe": OP_DESCRIBE, "update": OP_UPDATE}

# Status codes
SUCCESS, UNKNOWN_FAILURE, UNAUTHORIZED, INVALID_REQUEST = 0, 1, 2, 3
RESOURCE_NOT_FOUND, NOT_ENOUGH_MESSAGES, UPDATE_NOT_ALLOWED, UNKNOWN_OPERATION = 5, 13, 17, 18

# Model order of every export config (SPEC "Exact response encoding")
EXPORT_TYPES = ["http", "iotAnalytics", "kinesis", "IotSitewise", "s3TaskExecutor"]
CONFIG_KEYS = {
    "http": ["identifier", "uri", "batchSize", "batchIntervalMillis", "priority", "startSequenceNumber",
             "disabled", "exportFormat"],
    "iotAnalytics": ["identifier", "iotChannel", "iotMsgIdPrefix", "batchSize", "batchIntervalMillis",
                     "priority", "startSequenceNumber", "disabled"],
    "kinesis": ["identifier", "kinesisStreamName", "batchSize", "batchIntervalMillis", "priority",
                "startSequenceNumber", "disabled"],
    "IotSitewise": ["identifier", "batchSize", "batchIntervalMillis", "priority", "startSequenceNumber",
                    "disabled"],
    "s3TaskExecutor": ["identifier", "sizeThresholdForMultipartUploadBytes", "priority", "disabled",
                       "statusConfig"],
}
STATUS_CONFIG_KEYS = ["statusLevel", "statusStreamName"]
DEFINITION_KEYS = ["name", "maxSize", "streamSegmentSize", "timeToLiveMillis", "strategyOnFull",
                   "persistence", "flushOnWrite", "exportDefinition"]
READ_OPTION_KEYS = ["desiredStartSequenceNumber", "minMessageCount", "maxMessageCount", "readTimeoutMillis"]

# --------------------------------------------------------------------------
# SDKs
# --------------------------------------------------------------------------
SDKS = {
    "py-greengrasssdk-1.5.0": {"sdk": "greengrasssdk 1.5.0", "protocolVersion": "1.0.0", "kind": "py",
                               "venv": "py37-greengrasssdk-1.5.0", "module": "greengrasssdk.stream_manager"},
    "py-greengrasssdk-1.6.1": {"sdk": "greengrasssdk 1.6.1", "protocolVersion": "1.1.0", "kind": "py",
                               "venv": "py311-greengrasssdk-1.6.1", "module": "greengrasssdk.stream_manager"},
    "py-stream-manager-1.1.2": {"sdk": "stream-manager 1.1.2", "protocolVersion": "1.1.0", "kind": "py",
                                "venv": "py311-stream-manager-1.1.2", "module": "stream_manager"},
    "node-aws-greengrass-core-sdk-1.7.0": {"sdk": "aws-greengrass-core-sdk 1.7.0", "protocolVersion": "1.1.0",
                                           "kind": "node", "dir": "node-core-sdk-1.7.0"},
}


class RecorderError(Exception):
    pass


# --------------------------------------------------------------------------
# The session plan (shared with the client scripts as JSON)
# --------------------------------------------------------------------------
def hexp(b):
    return {"hex": b.hex()}


def build_plan(label):
    """Steps: name, call, args, expect ({"ok": result-as-the-client-sees-it} or {"error", "message"}).

    Expected results are written from the SPEC's rules independently of the Model class below."""
    v110 = SDKS[label]["protocolVersion"] == "1.1.0"
    text_payload = label == "py-greengrasssdk-1.5.0"  # only 1.5.0 lets a str payload through
    steps = []

    def step(name, call, args, expect):
        steps.append({"name": name, "call": call, "op": CALL_OPS[call], "args": args, "expect": expect})

    def not_found(name):
        return {"error": "ResourceNotFoundException", "message": "message stream %s does not exist" % name}

    def export_status(identifier, start=0):
        s = {"exportConfigIdentifier": identifier, "lastExportedSequenceNumber": start - 1}
        if v110:  # 1.0.0 clients do not know (and drop) the two counters
            s.update({"exportedBytesFromStream": 0, "exportedMessagesCount": 0})
        return s

    # -- definitions, as the test program passes them (the SDK adds maxSize/streamSegmentSize defaults)
    status_def = {"name": "StatusStream", "strategyOnFull": 1, "persistence": 1}
    status_stored = {"name": "StatusStream", "maxSize": DEFAULT_MAX_SIZE, "streamSegmentSize": DEFAULT_SEGMENT_SIZE,
                     "strategyOnFull": 1, "persistence": 1, "flushOnWrite": False}
    if v110:
        exports = {
            "http": [{"identifier": "HttpExport", "uri": "http://127.0.0.1:9/ingest", "batchSize": 50,
                      "batchIntervalMillis": 60000, "priority": 3, "startSequenceNumber": 0, "disabled": False,
                      "exportFormat": 1}],
            "iotAnalytics": [{"identifier": "AnalyticsExport", "iotChannel": "weir_channel",
                              "iotMsgIdPrefix": "weir-", "batchSize": 20, "batchIntervalMillis": 120000,
                              "priority": 2, "startSequenceNumber": 1, "disabled": False}],
            "kinesis": [{"identifier": "KinesisExport", "kinesisStreamName": "weir-kinesis", "batchSize": 100,
                         "batchIntervalMillis": 90000, "priority": 1, "startSequenceNumber": 2, "disabled": True},
                        {"identifier": "KinesisMinimal", "kinesisStreamName": "weir-kinesis-2"}],
            "IotSitewise": [{"identifier": "SiteWiseExport", "batchSize": 5, "batchIntervalMillis": 60000,
                             "priority": 4, "startSequenceNumber": 0, "disabled": False}],
            "s3TaskExecutor": [{"identifier": "S3Export", "sizeThresholdForMultipartUploadBytes": 5242880,
                                "priority": 5, "disabled": False,
                                "statusConfig": {"statusLevel": 2, "statusStreamName": "StatusStream"}}],
        }
        export_statuses = [export_status("HttpExport"), export_status("AnalyticsExport", 1),
                           export_status("KinesisExport", 2), export_status("KinesisMinimal"),
                           export_status("SiteWiseExport"), export_status("S3Export")]
    else:
        # greengrasssdk 1.5.0 knows http, iotAnalytics and kinesis with 1.0.0 fields only (its
        # iotMsgIdPrefix validation raises TypeError inside the SDK, so that field cannot be sent)
        exports = {
            "http": [{"identifier": "HttpExport", "uri": "http://127.0.0.1:9/ingest", "batchSize": 50,
                      "batchIntervalMillis": 60000, "priority": 3}],
            "iotAnalytics": [{"identifier": "AnalyticsExport", "iotChannel": "weir_channel", "batchSize": 20,
                              "batchIntervalMillis": 120000, "priority": 2}],
            "kinesis": [{"identifier": "KinesisExport", "kinesisStreamName": "weir-kinesis", "batchSize": 100,
                         "batchIntervalMillis": 90000, "priority": 1},
                        {"identifier": "KinesisMinimal", "kinesisStreamName": "weir-kinesis-2"}],
        }
        export_statuses = [export_status("HttpExport"), export_status("AnalyticsExport"),
                           export_status("KinesisExport"), export_status("KinesisMinimal")]
    export_def = {"name": "ExportStream", "maxSize": 1048576, "streamSegmentSize": 65536,
                  "timeToLiveMillis": 3600000, "strategyOnFull": 0, "persistence": 0, "flushOnWrite": True,
                  "exportDefinition": exports}
    export_stored = dict(export_def)  # every key sent, already in model order
    minimal_def = {"name": "ExportStream", "strategyOnFull": 0}
    minimal_stored = {"name": "ExportStream", "maxSize": DEFAULT_MAX_SIZE, "streamSegmentSize": DEFAULT_SEGMENT_SIZE,
                      "strategyOnFull": 0, "persistence": 0, "flushOnWrite": False}

    payloads = [b"alpha", bytes([0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF]), b'{"temperature": 21.5, "unit": "C"}']
    text = "text-\u00e9\u2713"  # stored as its UTF-8 bytes

    def msg(seq, payload, stream="ExportStream"):
        return {"streamName": stream, "sequenceNumber": seq, "ingestTime": INGEST_TIME, "payload": payload.hex()}

    stored = list(payloads) + ([text.encode("utf-8")] if text_payload else [])
    n = len(stored)
    total = sum(len(p) + 24 for p in stored)

    step("create-memory-stream", "create", {"definition": status_def}, {"ok": None})
    step("create-with-exports", "create", {"definition": export_def}, {"ok": None})
    step("create-existing", "create", {"definition": minimal_def},
         {"error": "InvalidRequestException", "message": "message stream ExportStream already exists"})
    step("describe-empty-stream", "describe", {"stream": "StatusStream"},
         {"ok": {"definition": status_stored,
                 "storageStatus": {"oldestSequenceNumber": 0, "newestSequenceNumber": -1, "totalBytes": 0},
                 "exportStatuses": []}})
    for i, p in enumerate(payloads):
        step("append-%d" % i, "append", {"stream": "ExportStream", "payload": hexp(p)}, {"ok": i})
    if text_payload:
        step("append-text-payload", "append", {"stream": "ExportStream", "payload": {"text": text}}, {"ok": 3})
    step("append-missing", "append", {"stream": "NoSuchStream", "payload": hexp(b"lost")}, not_found("NoSuchStream"))
    step("describe-with-exports", "describe", {"stream": "ExportStream"},
         {"ok": {"definition": export_stored,
                 "storageStatus": {"oldestSequenceNumber": 0, "newestSequenceNumber": n - 1, "totalBytes": total},
                 "exportStatuses": export_statuses}})
    step("describe-missing", "describe", {"stream": "NoSuchStream"}, not_found("NoSuchStream"))
    step("read-full-options", "read",
         {"stream": "ExportStream", "options": {"desiredStartSequenceNumber": 1, "minMessageCount": 1,
                                                "maxMessageCount": 2, "readTimeoutMillis": 1000}},
         {"ok": [msg(1, stored[1]), msg(2, stored[2])]})
    step("read-no-options", "read", {"stream": "ExportStream", "options": None}, {"ok": [msg(0, stored[0])]})
    step("read-min-2-no-max", "read", {"stream": "ExportStream", "options": {"minMessageCount": 2}},
         {"ok": [msg(0, stored[0]), msg(1, stored[1])]})
    if text_payload:
        step("read-text-payload", "read", {"stream": "ExportStream", "options": {"desiredStartSequenceNumber": 3}},
             {"ok": [msg(3, stored[3])]})
    step("read-not-enough-messages", "read",
         {"stream": "ExportStream", "options": {"desiredStartSequenceNumber": 2, "minMessageCount": 5,
                                                "readTimeoutMillis": 0}},
         {"error": "NotEnoughMessagesException",
          "message": "%d messages available from sequence number 2, fewer than minMessageCount 5" % (n - 2)})
    step("read-past-end", "read",
         {"stream": "ExportStream", "options": {"desiredStartSequenceNumber": 10, "minMessageCount": 1,
                                                "maxMessageCount": 3, "readTimeoutMillis": 0}},
         {"error": "NotEnoughMessagesException",
          "message": "0 messages available from sequence number 10, fewer than minMessageCount 1"})
    step("read-missing", "read", {"stream": "NoSuchStream", "options": None}, not_found("NoSuchStream"))
    step("list-streams", "list", {}, {"ok": ["ExportStream", "StatusStream"]})
    if v110:
        update_def = {"name": "ExportStream", "maxSize": 2097152, "streamSegmentSize": 65536,
                      "timeToLiveMillis": 7200000, "strategyOnFull": 0, "persistence": 0, "flushOnWrite": False,
                      "exportDefinition": {
                          "kinesis": [{"identifier": "KinesisExport", "kinesisStreamName": "weir-kinesis",
                                       "batchSize": 100, "batchIntervalMillis": 90000, "priority": 1,
                                       "startSequenceNumber": 2, "disabled": False}],
                          "s3TaskExecutor": exports["s3TaskExecutor"]}}
        step("update-stream", "update", {"definition": update_def}, {"ok": None})
        step("describe-after-update", "describe", {"stream": "ExportStream"},
             {"ok": {"definition": dict(update_def),
                     "storageStatus": {"oldestSequenceNumber": 0, "newestSequenceNumber": n - 1, "totalBytes": total},
                     "exportStatuses": [export_status("KinesisExport", 2), export_status("S3Export")]}})
        step("update-persistence-change", "update",
             {"definition": {"name": "StatusStream", "strategyOnFull": 1, "persistence": 0}},
             {"error": "UpdateNotAllowedException",
              "message": "persistence of message stream StatusStream cannot be changed"})
        step("update-missing", "update", {"definition": {"name": "NoSuchStream", "strategyOnFull": 0}},
             not_found("NoSuchStream"))
    step("delete-stream", "delete", {"stream": "ExportStream"}, {"ok": None})
    step("delete-missing", "delete", {"stream": "ExportStream"}, not_found("ExportStream"))
    step("create-minimal", "create", {"definition": minimal_def}, {"ok": None})
    recreated = b"after-recreate"
    step("append-after-recreate", "append", {"stream": "ExportStream", "payload": hexp(recreated)}, {"ok": 0})
    step("describe-minimal", "describe", {"stream": "ExportStream"},
         {"ok": {"definition": minimal_stored,
                 "storageStatus": {"oldestSequenceNumber": 0, "newestSequenceNumber": 0,
                                   "totalBytes": len(recreated) + 24},
                 "exportStatuses": []}})
    step("delete-recreated", "delete", {"stream": "ExportStream"}, {"ok": None})
    step("delete-memory-stream", "delete", {"stream": "StatusStream"}, {"ok": None})
    step("list-empty", "list", {}, {"ok": []})
    return steps


# --------------------------------------------------------------------------
# The model: what weir must answer (SPEC.md rules)
# --------------------------------------------------------------------------
def _check_keys(what, d, allowed, required=()):
    if not isinstance(d, dict):
        raise RecorderError("%s is not a map: %r" % (what, d))
    extra = [k for k in d if k not in allowed]
    if extra:
        raise RecorderError("%s has unexpected keys %r" % (what, extra))
    missing = [k for k in required if k not in d]
    if missing:
        raise RecorderError("%s lacks keys %r" % (what, missing))


def _int(what, v):
    if isinstance(v, bool) or not isinstance(v, int):
        raise RecorderError("%s is not an integer: %r" % (what, v))
    return v


def _text(what, v):
    if not isinstance(v, str):
        raise RecorderError("%s is not text: %r" % (what, v))
    return v


class Model:
    def __init__(self, server_version=SERVER_VERSION, client_identifier=CLIENT_IDENTIFIER):
        self.streams = {}
        self.protocol = None
        self.server_version = server_version
        self.client_identifier = client_identifier

    # ---- handshake
    def connect(self, op, req):
        if op != OP_CONNECT:
            raise RecorderError("first frame has op %d, not Connect" % op)
        _check_keys("ConnectRequest", req,
                    ["requestId", "protocolVersion", "otherSupportedProtocolVersions", "sdkVersion", "authToken"],
                    ["requestId", "protocolVersion"])
        version = req["protocolVersion"]
        if version not in SUPPORTED_PROTOCOL_VERSIONS:
            raise RecorderError("client asks for protocol %r" % version)
        if req.get("authToken") != AUTH_TOKEN:
            raise RecorderError("client sent authToken %r" % req.get("authToken"))
        self.protocol = version
        return OP_CONNECT_RESPONSE, {
            "requestId": req["requestId"], "status": SUCCESS, "protocolVersion": version,
            "supportedProtocolVersions": list(SUPPORTED_PROTOCOL_VERSIONS),
            "serverVersion": self.server_version, "clientIdentifier": self.client_identifier}

    # ---- helpers
    def _status(self, status):
        if self.protocol == "1.0.0" and status > 14:
            return UNKNOWN_FAILURE
        return status

    def _error(self, op, req, status, message):
        return op, {"requestId": req["requestId"], "status": self._status(status), "errorMessage": message}

    @staticmethod
    def _not_found(name):
        return "message stream %s does not exist" % name

    def _canonical_definition(self, d):
        _check_keys("definition", d, DEFINITION_KEYS, ["name", "strategyOnFull"])
        out = {"name": _text("name", d["name"]),
               "maxSize": _int("maxSize", d.get("maxSize", DEFAULT_MAX_SIZE)),
               "streamSegmentSize": _int("streamSegmentSize", d.get("streamSegmentSize", DEFAULT_SEGMENT_SIZE))}
        if "timeToLiveMillis" in d:
            out["timeToLiveMillis"] = _int("timeToLiveMillis", d["timeToLiveMillis"])
        out["strategyOnFull"] = _int("strategyOnFull", d["strategyOnFull"])
        out["persistence"] = _int("persistence", d.get("persistence", 0))
        flush = d.get("flushOnWrite", False)
        if not isinstance(flush, bool):
            raise RecorderError("flushOnWrite is not a bool: %r" % flush)
        out["flushOnWrite"] = flush
        exports = d.get("exportDefinition")
        if exports is not None:
            _check_keys("exportDefinition", exports, EXPORT_TYPES)
            canon = {}
            for kind in EXPORT_TYPES:
                configs = exports.get(kind) or []
                if not isinstance(configs, list):
                    raise RecorderError("exportDefinition.%s is not a list" % kind)
                if not configs:
                    continue
                canon[kind] = []
                for c in configs:
                    _check_keys(kind + " config", c, CONFIG_KEYS[kind], ["identifier"])
                    cc = {}
                    for k in CONFIG_KEYS[kind]:
                        if k not in c:
                            continue
                        v = c[k]
                        if k == "statusConfig":
                            _check_keys("statusConfig", v, STATUS_CONFIG_KEYS)
                            v = {sk: v[sk] for sk in STATUS_CONFIG_KEYS if sk in v}
                        cc[k] = v
                    canon[kind].append(cc)
            if canon:
                out["exportDefinition"] = canon
        return out

    @staticmethod
    def _export_statuses(definition):
        statuses = []
        for kind in EXPORT_TYPES:
            for c in definition.get("exportDefinition", {}).get(kind, []):
                statuses.append({"exportConfigIdentifier": c["identifier"],
                                 "lastExportedSequenceNumber": c.get("startSequenceNumber", 0) - 1,
                                 "exportedBytesFromStream": 0, "exportedMessagesCount": 0})
        return statuses

    # ---- requests
    def handle(self, op, req):
        if not isinstance(req, dict) or not isinstance(req.get("requestId"), str):
            raise RecorderError("request without a text requestId: %r" % (req,))
        rid = req["requestId"]
        if op == OP_CREATE:
            _check_keys("CreateMessageStreamRequest", req, ["requestId", "definition"], ["definition"])
            d = self._canonical_definition(req["definition"])
            if d["name"] in self.streams:
                return self._error(OP_CREATE_RESPONSE, req, INVALID_REQUEST,
                                   "message stream %s already exists" % d["name"])
            self.streams[d["name"]] = {"definition": d, "messages": [], "next": 0}
            return OP_CREATE_RESPONSE, {"requestId": rid, "status": SUCCESS}
        if op == OP_UPDATE:
            if self.protocol != "1.1.0":
                raise RecorderError("UpdateMessageStream on a 1.0.0 connection")
            _check_keys("UpdateMessageStreamRequest", req, ["requestId", "definition"], ["definition"])
            d = self._canonical_definition(req["definition"])
            s = self.streams.get(d["name"])
            if s is None:
                return self._error(OP_UPDATE_RESPONSE, req, RESOURCE_NOT_FOUND, self._not_found(d["name"]))
            if d["persistence"] != s["definition"]["persistence"]:
                return self._error(OP_UPDATE_RESPONSE, req, UPDATE_NOT_ALLOWED,
                                   "persistence of message stream %s cannot be changed" % d["name"])
            if d["maxSize"] < self._total_bytes(s):
                raise RecorderError("plan does not exercise maxSize below totalBytes (no exact text in SPEC)")
            s["definition"] = d
            return OP_UPDATE_RESPONSE, {"requestId": rid, "status": SUCCESS}
        if op == OP_DELETE:
            _check_keys("DeleteMessageStreamRequest", req, ["requestId", "name"], ["name"])
            name = _text("name", req["name"])
            if name not in self.streams:
                return self._error(OP_DELETE_RESPONSE, req, RESOURCE_NOT_FOUND, self._not_found(name))
            del self.streams[name]
            return OP_DELETE_RESPONSE, {"requestId": rid, "status": SUCCESS}
        if op == OP_APPEND:
            _check_keys("AppendMessageRequest", req, ["requestId", "name", "payload"], ["name", "payload"])
            name = _text("name", req["name"])
            payload = req["payload"]
            if isinstance(payload, str):
                payload = payload.encode("utf-8")
            if not isinstance(payload, bytes) or not payload:
                raise RecorderError("payload is not a non-empty byte/text string: %r" % (payload,))
            s = self.streams.get(name)
            if s is None:
                return self._error(OP_APPEND_RESPONSE, req, RESOURCE_NOT_FOUND, self._not_found(name))
            d = s["definition"]
            if self._total_bytes(s) + len(payload) + 24 > d["maxSize"]:
                raise RecorderError("plan does not fill streams")
            seq = s["next"]
            s["next"] += 1
            s["messages"].append((seq, payload))
            return OP_APPEND_RESPONSE, {"requestId": rid, "status": SUCCESS, "sequenceNumber": seq}
        if op == OP_READ:
            _check_keys("ReadMessagesRequest", req, ["requestId", "streamName", "readMessagesOptions"],
                        ["streamName"])
            name = _text("streamName", req["streamName"])
            opts = req.get("readMessagesOptions") or {}
            _check_keys("readMessagesOptions", opts, READ_OPTION_KEYS)
            for k, v in opts.items():
                _int(k, v)
            s = self.streams.get(name)
            if s is None:
                return self._error(OP_READ_RESPONSE, req, RESOURCE_NOT_FOUND, self._not_found(name))
            oldest = s["messages"][0][0] if s["messages"] else s["next"]
            start = max(opts.get("desiredStartSequenceNumber", 0), oldest)
            lo = opts.get("minMessageCount", 1)
            hi = opts.get("maxMessageCount", lo)
            if hi < lo:
                raise RecorderError("plan does not send max < min")
            available = [m for m in s["messages"] if m[0] >= start]
            if len(available) < lo:
                if opts.get("readTimeoutMillis", 0) > 0:
                    raise RecorderError("plan does not long-poll (read would wait)")
                return self._error(OP_READ_RESPONSE, req, NOT_ENOUGH_MESSAGES,
                                   "%d messages available from sequence number %d, fewer than minMessageCount %d"
                                   % (len(available), start, lo))
            msgs = [{"streamName": name, "sequenceNumber": seq, "ingestTime": INGEST_TIME, "payload": p}
                    for seq, p in available[:hi]]
            return OP_READ_RESPONSE, {"requestId": rid, "messages": msgs, "status": SUCCESS}
        if op == OP_LIST:
            _check_keys("ListStreamsRequest", req, ["requestId"])
            names = sorted(self.streams, key=lambda n: n.encode("utf-8"))
            return OP_LIST_RESPONSE, {"requestId": rid, "status": SUCCESS, "streams": names}
        if op == OP_DESCRIBE:
            _check_keys("DescribeMessageStreamRequest", req, ["requestId", "name"], ["name"])
            name = _text("name", req["name"])
            s = self.streams.get(name)
            if s is None:
                return self._error(OP_DESCRIBE_RESPONSE, req, RESOURCE_NOT_FOUND, self._not_found(name))
            oldest = s["messages"][0][0] if s["messages"] else s["next"]
            newest = s["messages"][-1][0] if s["messages"] else oldest - 1
            info = {"definition": s["definition"],
                    "storageStatus": {"oldestSequenceNumber": oldest, "newestSequenceNumber": newest,
                                      "totalBytes": self._total_bytes(s)},
                    "exportStatuses": self._export_statuses(s["definition"])}
            return OP_DESCRIBE_RESPONSE, {"requestId": rid, "status": SUCCESS, "messageStreamInfo": info}
        raise RecorderError("unexpected operation %d" % op)

    @staticmethod
    def _total_bytes(s):
        return sum(len(p) + 24 for _, p in s["messages"])


def encode_frame(op, obj):
    payload = cbor2.dumps(obj)
    return struct.pack(">i", 1 + len(payload)) + bytes([op]) + payload


# --------------------------------------------------------------------------
# Socket helpers
# --------------------------------------------------------------------------
def recv_exact(sock, n, what):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            if not buf:
                return None
            raise RecorderError("connection closed inside %s (%d of %d bytes)" % (what, len(buf), n))
        buf.extend(chunk)
    return bytes(buf)


def read_frame(sock, what="frame"):
    """Returns (raw bytes, op, payload) or None at a clean EOF."""
    header = recv_exact(sock, 5, what + " header")
    if header is None:
        return None
    (length,) = struct.unpack(">i", header[:4])
    if length < 2 or length > (1 << 30):
        raise RecorderError("bad frame length %d" % length)
    payload = recv_exact(sock, length - 1, what + " payload")
    if payload is None:
        raise RecorderError("connection closed before the payload of a %s" % what)
    return header + payload, header[4], payload


def decode(payload):
    return cbor2.loads(payload)


def diag(obj):
    """Short human-readable rendering (bytes as h'..')."""
    if isinstance(obj, bytes):
        return "h'%s'" % obj.hex()
    if isinstance(obj, dict):
        return "{" + ", ".join("%s: %s" % (json.dumps(k), diag(v)) for k, v in obj.items()) + "}"
    if isinstance(obj, list):
        return "[" + ", ".join(diag(v) for v in obj) + "]"
    return json.dumps(obj, ensure_ascii=False)


# --------------------------------------------------------------------------
# Client processes
# --------------------------------------------------------------------------
def client_command(label, cache):
    sdk = SDKS[label]
    if sdk["kind"] == "py":
        py = os.path.join(cache, sdk["venv"], "bin", "python")
        if not os.path.exists(py):
            raise RecorderError("%s missing: run compat-tests/setup-clients.sh" % py)
        return [py, os.path.join(HERE, "recorder_client.py")], {"RECORDER_SDK_MODULE": sdk["module"]}
    sdk_dir = os.path.join(cache, sdk["dir"], "node_modules", "aws-greengrass-core-sdk", "stream-manager")
    if not os.path.isdir(sdk_dir):
        raise RecorderError("%s missing: run compat-tests/setup-clients.sh" % sdk_dir)
    return ["node", os.path.join(HERE, "recorder_client.js")], {"RECORDER_NODE_SDK": sdk_dir}


def run_client(label, cache, port, plan, extra_env, on_failure):
    cmd, env_add = client_command(label, cache)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="recorder-plan-", delete=False) as f:
        json.dump(plan, f, ensure_ascii=False)
        plan_path = f.name
    env = dict(os.environ)
    for k in ("STREAM_MANAGER_SERVER_HOST", "RECORDER_IGNORE_INGEST_TIME", "RECORDER_KEEP_GOING"):
        env.pop(k, None)
    env.update(env_add)
    env.update({"STREAM_MANAGER_SERVER_PORT": str(port), "AWS_CONTAINER_AUTHORIZATION_TOKEN": AUTH_TOKEN,
                "RECORDER_PLAN": plan_path, "RECORDER_INGEST_TIME": str(INGEST_TIME)})
    env.update(extra_env)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, cwd=HERE)
        on_failure.append(proc)
        try:
            out, _ = proc.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise RecorderError("client timed out; output:\n" + out)
        return proc.returncode, out
    finally:
        os.unlink(plan_path)


# --------------------------------------------------------------------------
# Recording session
# --------------------------------------------------------------------------
class Session:
    """Serves one scripted connection on a listener; a second connection is an error."""

    def __init__(self, label, plan, model, answer):
        self.label = label
        self.plan = plan
        self.model = model
        self.answer = answer  # function(step, op, req, raw) -> (bytes to send, decoded answer)
        self.exchanges = []
        self.errors = []
        self.connections = 0
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.procs = []
        self.conn = None
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def fail(self, msg):
        self.errors.append(msg)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        if self.conn is not None:
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.connections = 1
        self.conn = conn
        threading.Thread(target=self._watch_second_connection, daemon=True).start()
        try:
            self._serve_connection(conn)
        except Exception as e:  # noqa: BLE001 - every failure is reported
            if not self.errors:
                self.fail("%s: %s" % (type(e).__name__, e))
        finally:
            conn.close()

    def _watch_second_connection(self):
        try:
            extra, _ = self.listener.accept()
        except OSError:
            return
        self.connections += 1
        extra.close()
        self.fail("the client opened a second connection (the session must use one)")

    def _serve_connection(self, conn):
        version = recv_exact(conn, 1, "connect version byte")
        if version != b"\x01":
            raise RecorderError("connect version byte %r" % (version,))
        frame = read_frame(conn, "ConnectRequest")
        if frame is None:
            raise RecorderError("EOF before ConnectRequest")
        raw, op, payload = frame
        out, resp = self.answer(None, op, decode(payload), b"\x01" + raw)
        conn.sendall(out)
        self.exchanges.append({"name": "connect", "op": op, "request": (b"\x01" + raw).hex(), "response": out.hex(),
                               "_req": decode(payload), "_resp": resp})
        i = 0
        while True:
            frame = read_frame(conn)
            if frame is None:
                break
            raw, op, payload = frame
            req = decode(payload)
            if i >= len(self.plan):
                raise RecorderError("unexpected extra request op %d: %s" % (op, diag(req)))
            step = self.plan[i]
            check_request_matches(step, op, req)
            out, resp = self.answer(step, op, req, raw)
            conn.sendall(out)
            self.exchanges.append({"name": step["name"], "op": op, "request": raw.hex(), "response": out.hex(),
                                   "_req": req, "_resp": resp})
            i += 1
        if i != len(self.plan):
            raise RecorderError("client closed after %d of %d planned requests" % (i, len(self.plan)))

    def close(self):
        # shutdown() wakes the threads blocked in accept(); close() alone may not
        for f in (lambda: self.listener.shutdown(socket.SHUT_RDWR), self.listener.close):
            try:
                f()
            except OSError:
                pass


def check_request_matches(step, op, req):
    if op != step["op"]:
        raise RecorderError("step %s expects op %d, client sent op %d: %s" % (step["name"], step["op"], op, diag(req)))
    args = step["args"]
    if "definition" in args:
        got = (req.get("definition") or {}).get("name")
        want = args["definition"]["name"]
    elif "stream" in args:
        got = req.get("streamName") if op == OP_READ else req.get("name")
        want = args["stream"]
    else:
        return
    if got != want:
        raise RecorderError("step %s expects stream %r, client sent %r" % (step["name"], want, got))


def record(label, cache, out_dir, verbose=False):
    sdk = SDKS[label]
    plan = build_plan(label)
    model = Model()

    def answer(step, op, req, raw):
        if step is None:
            rop, resp = model.connect(op, req)
            return b"\x01" + encode_frame(rop, resp), resp
        rop, resp = model.handle(op, req)
        return encode_frame(rop, resp), resp

    session = Session(label, plan, model, answer)
    session.thread.start()
    try:
        rc, out = run_client(label, cache, session.port, plan, {}, session.procs)
    finally:
        session.close()
    session.thread.join(10)
    problems = list(session.errors)
    if rc != 0 and not problems:
        problems.append("client exited with %s" % rc)
    if not problems and len(session.exchanges) != len(plan) + 1:
        problems.append("recorded %d exchanges for %d planned requests" % (len(session.exchanges), len(plan)))
    if not problems and model.protocol != sdk["protocolVersion"]:
        problems.append("negotiated %s, expected %s" % (model.protocol, sdk["protocolVersion"]))
    if verbose or problems:
        print_exchanges(session.exchanges)
        print("---- client output (%s)\n%s" % (label, out))
    if problems:
        raise RecorderError("%s: %s" % (label, "; ".join(problems)))
    fixture = {"sdk": sdk["sdk"], "protocolVersion": sdk["protocolVersion"], "authToken": AUTH_TOKEN,
               "ingestTimeMillis": INGEST_TIME, "serverVersion": SERVER_VERSION,
               "clientIdentifier": CLIENT_IDENTIFIER,
               "exchanges": [{k: e[k] for k in ("name", "op", "request", "response")} for e in session.exchanges]}
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, label + ".json")
    with open(path + ".tmp", "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)
    print("recorder: %s: %d exchanges -> %s" % (label, len(session.exchanges), os.path.relpath(path, REPO)))
    return fixture


def print_exchanges(exchanges):
    for e in exchanges:
        print("== %s (op %d)" % (e["name"], e["op"]))
        print("  C->S %s" % diag(e.get("_req")))
        print("  S->C %s" % diag(e.get("_resp")))


# --------------------------------------------------------------------------
# Cross-check against the real weir binary
# --------------------------------------------------------------------------
INGEST_KEY = b"\x6aingestTime\x1b"


def mask_ingest_times(frame):
    """Overwrite the 8-byte value of every `ingestTime` (uint64 head 1b) with INGEST_TIME."""
    out = bytearray(frame)
    i = out.find(INGEST_KEY)
    while i >= 0:
        j = i + len(INGEST_KEY)
        out[j:j + 8] = struct.pack(">Q", INGEST_TIME)
        i = out.find(INGEST_KEY, j + 8)
    return bytes(out)


def start_weir(weir_bin, workdir):
    store = os.path.join(workdir, "store")
    os.makedirs(store)
    token_file = os.path.join(workdir, "tokens")
    with open(token_file, "w") as f:
        f.write(AUTH_TOKEN + "\n")
    # Exports off: the fixtures are protocol sessions, and with no cloud here an
    # export's errorMessage would appear in describe at an unpredictable moment.
    env = dict(os.environ, STREAM_MANAGER_SERVER_PORT="0", STREAM_MANAGER_STORE_ROOT_DIR=store,
               WEIR_AUTH_TOKEN_FILE=token_file, WEIR_EXPORTS_ENABLED="false")
    log = open(os.path.join(workdir, "weir.log"), "w+")
    proc = subprocess.Popen([weir_bin], env=env, stdout=log, stderr=log)
    deadline = time.time() + 30
    while time.time() < deadline:
        log.seek(0)
        m = re.search(r"listening on ([0-9.]+):([0-9]+)", log.read())
        if m:
            return proc, int(m.group(2)), log
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    log.seek(0)
    raise RecorderError("weir did not start:\n" + log.read())


def cross_check(label, cache, weir_bin, verbose=False):
    """Runs the client through a frame-level proxy to weir; compares weir's answers with the model's."""
    plan = build_plan(label)
    workdir = tempfile.mkdtemp(prefix="recorder-weir-")
    weir, weir_port, log = start_weir(weir_bin, workdir)
    model = Model()
    diffs = []
    upstream = {}

    def answer(step, op, req, raw):
        if step is None:
            up = socket.create_connection(("127.0.0.1", weir_port))
            upstream["sock"] = up
            up.sendall(raw)
            v = recv_exact(up, 1, "weir connect version byte")
            frame = read_frame(up, "weir ConnectResponse")
            if v != b"\x01" or frame is None:
                raise RecorderError("weir's handshake answer is broken: %r %r" % (v, frame))
            wraw, wop, wpayload = frame
            wresp = decode(wpayload)
            model.server_version = wresp.get("serverVersion", SERVER_VERSION)  # weir-<crate version>
            mop, mresp = model.connect(op, req)
            compare("connect", b"\x01" + encode_frame(mop, mresp), b"\x01" + wraw)
            return b"\x01" + wraw, wresp
        up = upstream["sock"]
        up.sendall(raw)
        frame = read_frame(up, "weir response")
        if frame is None:
            raise RecorderError("weir closed the connection at step %s" % step["name"])
        wraw, wop, wpayload = frame
        mop, mresp = model.handle(op, req)
        compare(step["name"], encode_frame(mop, mresp), wraw)
        return wraw, decode(wpayload)

    def compare(name, mine, weirs):
        if mask_ingest_times(weirs) != mine:
            diffs.append({"name": name, "fixture": mine.hex(), "weir": weirs.hex(),
                          "fixtureDecoded": diag(decode(mine[5 + (name == "connect"):])),
                          "weirDecoded": diag(decode(weirs[5 + (name == "connect"):]))})

    session = Session(label, plan, model, answer)
    session.thread.start()
    try:
        rc, out = run_client(label, cache, session.port, plan, {"RECORDER_IGNORE_INGEST_TIME": "1", "RECORDER_KEEP_GOING": "1"}, session.procs)
    finally:
        session.close()
        session.thread.join(10)
        if "sock" in upstream:
            upstream["sock"].close()
        weir.terminate()
        try:
            weir.wait(10)
        except subprocess.TimeoutExpired:
            weir.kill()
        log.seek(0)
        weir_log = log.read()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    if verbose:
        print_exchanges(session.exchanges)
    print("==== cross-check %s: client rc=%s, %d exchanges, %d differences" % (
        label, rc, len(session.exchanges), len(diffs)))
    for e in session.errors:
        print("  session error: %s" % e)
    if rc != 0 or session.errors:
        print("---- client output\n%s---- weir log (tail)\n%s" % (out, weir_log[-3000:]))
    for d in diffs:
        print("  DIFF %s\n    fixture: %s\n    weir:    %s\n    fixture hex: %s\n    weir hex:    %s" % (
            d["name"], d["fixtureDecoded"], d["weirDecoded"], d["fixture"], d["weir"]))
    return rc == 0 and not session.errors and not diffs


# --------------------------------------------------------------------------
# Offline check of fixture files (no clients needed)
# --------------------------------------------------------------------------
def verify(label, out_dir):
    """Replays a fixture's requests into a fresh Model and checks every stored response byte."""
    path = os.path.join(out_dir, label + ".json")
    with open(path) as f:
        fx = json.load(f)
    sdk = SDKS[label]
    header = {"sdk": sdk["sdk"], "protocolVersion": sdk["protocolVersion"], "authToken": AUTH_TOKEN,
              "ingestTimeMillis": INGEST_TIME, "serverVersion": SERVER_VERSION,
              "clientIdentifier": CLIENT_IDENTIFIER}
    for k, v in header.items():
        if fx.get(k) != v:
            raise RecorderError("%s: %s is %r, expected %r" % (path, k, fx.get(k), v))
    plan = build_plan(label)
    names = ["connect"] + [s["name"] for s in plan]
    if [e["name"] for e in fx["exchanges"]] != names:
        raise RecorderError("%s: exchange names differ from the plan" % path)
    model = Model()
    for i, e in enumerate(fx["exchanges"]):
        req = bytes.fromhex(e["request"])
        if i == 0:
            if req[:1] != b"\x01":
                raise RecorderError("%s: connect request lacks the version byte" % path)
            req = req[1:]
        (length,) = struct.unpack(">i", req[:4])
        if length != len(req) - 4 or req[4] != e["op"]:
            raise RecorderError("%s: %s: bad request framing" % (path, e["name"]))
        if i == 0:
            rop, resp = model.connect(req[4], decode(req[5:]))
            want = b"\x01" + encode_frame(rop, resp)
        else:
            check_request_matches(plan[i - 1], req[4], decode(req[5:]))
            rop, resp = model.handle(req[4], decode(req[5:]))
            want = encode_frame(rop, resp)
        if want.hex() != e["response"]:
            raise RecorderError("%s: %s: stored response differs from the rules" % (path, e["name"]))
    print("recorder: %s: %d exchanges verified" % (os.path.relpath(path, REPO), len(fx["exchanges"])))


# --------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("labels", nargs="*", help="SDK labels: " + ", ".join(SDKS))
    ap.add_argument("--all", action="store_true", help="record all four fixtures")
    ap.add_argument("--out", default=os.path.join(REPO, "protocol-fixtures"))
    ap.add_argument("--cross-check", action="store_true", help="diff the real weir binary against the recorder")
    ap.add_argument("--weir-bin", default=os.environ.get("WEIR_BIN") or os.path.join(REPO, "target", "debug", "weir"))
    ap.add_argument("--print-plan", action="store_true")
    ap.add_argument("--verify", action="store_true",
                    help="check the stored fixtures against the response rules (no clients run)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    labels = list(SDKS) if args.all or not args.labels else args.labels
    for label in labels:
        if label not in SDKS:
            ap.error("unknown SDK label %r (known: %s)" % (label, ", ".join(SDKS)))
    if args.print_plan:
        for label in labels:
            print(json.dumps({"label": label, "plan": build_plan(label)}, indent=1, ensure_ascii=False))
        return 0
    if args.verify:
        for label in labels:
            verify(label, args.out)
        return 0
    if not args.all and not args.labels and not args.cross_check:
        ap.error("name SDK labels or pass --all")
    if args.all and not os.environ.get("RECORDER_SETUP_DONE"):
        run_setup_clients()
    cache = cache_dir()
    if args.cross_check:
        ok = True
        for label in labels:
            ok = cross_check(label, cache, args.weir_bin, args.verbose) and ok
        return 0 if ok else 1
    failed = []
    for label in labels:
        try:
            record(label, cache, args.out, args.verbose)
        except RecorderError as e:
            print("recorder: FAILED %s" % e, file=sys.stderr)
            failed.append(label)
    if failed:
        print("recorder: %d of %d failed: %s" % (len(failed), len(labels), ", ".join(failed)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
