"""The cloud stand-ins of cloud.py, checked so that the export tests can trust them.

For moto and for kinesalite, through a FaultProxy, with the real boto3 (the
py311-moto venv's, retries off: total_max_attempts=1) running as a worker
subprocess that this driver feeds one JSON request per line:
  - PutRecords passes through: 200, one SequenceNumber/ShardId per record, and
    read_all() returns exactly what was put (per shard in put order, with those
    sequence numbers);
  - every fault as boto3 sees it: throttle (400 ProvisionedThroughputExceededException),
    server_error 500 InternalFailure / 503 ServiceUnavailable, drop_connection before
    and after forwarding, partial_failure (entries in request order, only the
    survivors upstream, re-sending the failed ones stores them), reject_record
    (400 ValidationException with the same code, status and wording as the stand-in's
    own answer to a record over 1 MiB), pause (held, nothing upstream until resume,
    then stored) and blackhole (held, then the connection closes unanswered);
  - the proxy's counts and records match what boto3 sent, and boto3's keep-alive
    connections were reused through the proxy.
IotAnalyticsStandIn with cloud.py's raw restJson1 client (boto3 no longer knows
the service): accepts and stores valid batches; refuses a bad channel name, a bad
or repeated messageId, more than 100 messages (400 InvalidRequestException) and an
unknown channel (404 ResourceNotFoundException), each with the x-amzn-ErrorType
header and a {"__type", "message"} body; and the same faults through a FaultProxy.
"""
import base64
import http.client
import json
import os
import queue
import subprocess
import sys
import threading

from checks import CaseFailure, eq, need
from harness import HERE, HarnessError, Report, _die_with_parent, main_guard, sdk_python
import cloud

BOTO3_PY = sdk_python(cloud.MOTO_VENV)
WORKER_DEADLINE_S = 30
ONE_MIB = 1048576


# -- the boto3 worker (runs inside the moto venv) -------------------------


def boto3_worker():
    import boto3
    import botocore.config
    import botocore.exceptions
    clients = {}
    config = botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=10, read_timeout=30)
    for line in sys.stdin:
        req = json.loads(line)
        try:
            c = clients.get(req["endpoint"])
            if c is None:
                c = clients[req["endpoint"]] = boto3.client(
                    "kinesis", endpoint_url=req["endpoint"], region_name=cloud.REGION, config=config,
                    aws_access_key_id="AKIDWEIRCOMPAT", aws_secret_access_key="weir-compat-secret")
            recs = [{"Data": base64.b64decode(d), "PartitionKey": pk} for d, pk in req["records"]]
            out = c.put_records(StreamName=req["stream"], Records=recs)
            out.pop("ResponseMetadata", None)
            resp = {"ok": out}
        except botocore.exceptions.ClientError as e:
            resp = {"error": {"kind": "ClientError", "code": e.response["Error"].get("Code"),
                              "status": e.response["ResponseMetadata"].get("HTTPStatusCode"),
                              "message": e.response["Error"].get("Message", "")}}
        except Exception as e:  # noqa: BLE001 - every other failure is reported to the driver as is
            resp = {"error": {"kind": type(e).__name__, "message": str(e)}}
        print(json.dumps(resp), flush=True)


class Boto3:
    """The driver's handle on the worker: send() a PutRecords, receive() its outcome."""

    def __init__(self):
        env = dict(os.environ, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
                   AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull,
                   AWS_EC2_METADATA_DISABLED="true", PYTHONUNBUFFERED="1")
        for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KINESIS", "AWS_SESSION_TOKEN"):
            env.pop(k, None)
        self.proc = subprocess.Popen([BOTO3_PY, os.path.join(HERE, "test_cloud_standins.py"), "--boto3-worker"],
                                     env=env, cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
        self.q = queue.Queue()
        self.err = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self.err.append(self.proc.stderr.read()), daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.q.put(json.loads(line))
        self.q.put(None)

    def send(self, endpoint, stream, records):
        self.proc.stdin.write(json.dumps({"endpoint": endpoint, "stream": stream, "records": [
            [base64.b64encode(d).decode(), pk] for d, pk in records]}) + "\n")
        self.proc.stdin.flush()

    def receive(self):
        try:
            out = self.q.get(timeout=WORKER_DEADLINE_S)
        except queue.Empty:
            raise HarnessError(f"the boto3 worker gave no answer within {WORKER_DEADLINE_S}s")
        if out is None:
            self.proc.wait(5)
            raise HarnessError(f"the boto3 worker exited ({self.proc.returncode}):\n{''.join(self.err)[-3000:]}")
        return out

    def put_records(self, endpoint, stream, records):
        self.send(endpoint, stream, records)
        return self.receive()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- Kinesis through the proxy --------------------------------------------


def ok_of(out, what):
    need("ok" in out, f"{what}: expected success, boto3 got {out.get('error')}")
    return out["ok"]


def error_of(out, what):
    need("error" in out, f"{what}: expected an error, boto3 got success {out.get('ok')}")
    return out["error"]


def client_error(out, what, status, code):
    e = error_of(out, what)
    eq((e["kind"], e.get("status"), e.get("code")), ("ClientError", status, code), f"{what}: boto3 error")
    return e


def connection_error(out, what):
    e = error_of(out, what)
    need(e["kind"] != "ClientError", f"{what}: expected a connection error, boto3 got an HTTP answer {e}")
    return e


class KinesisCases:
    """One Kinesis stand-in behind one FaultProxy; `stored` is what should be upstream."""

    def __init__(self, label, standin, boto):
        self.label, self.standin, self.boto = label, standin, boto
        self.raw = standin.kinesis()
        self.stream = f"weir_standins_{label}"
        self.raw.create_stream(self.stream, shards=2)
        self.proxy = cloud.FaultProxy(standin)
        self.stored = {}          # data -> (partition key, sequence number, shard) as boto3 was told
        self.n = 0
        self.sent = []            # every PutRecords batch boto3 sent, in order

    def batch(self, k, prefix="r"):
        out = []
        for _ in range(k):
            self.n += 1
            out.append((f"{self.label}-{prefix}-{self.n:04d}".encode(), f"pk{self.n % 7}"))
        return out

    def put(self, records):
        self.sent.append(records)
        return self.boto.put_records(self.proxy.endpoint, self.stream, records)

    def remember(self, records, answer, what):
        entries = answer["Records"]
        eq(len(entries), len(records), f"{what}: number of result entries")
        for (d, pk), e in zip(records, entries):
            if "ErrorCode" not in e:
                need(e.get("SequenceNumber") and e.get("ShardId"), f"{what}: success entry without SequenceNumber/ShardId: {e}")
                self.stored[d] = (pk, e["SequenceNumber"], e["ShardId"])

    def check_upstream(self, what):
        """read_all() is exactly `stored`, each shard in the order the records were put."""
        got = self.raw.read_all(self.stream)
        by_data = {r.data: r for r in got}
        eq(len(by_data), len(got), f"{what}: distinct records upstream")
        eq(sorted(by_data), sorted(self.stored), f"{what}: records upstream")
        for d, (pk, seq, shard) in self.stored.items():
            r = by_data[d]
            eq((r.partition_key, r.sequence_number, r.shard_id), (pk, seq, shard), f"{what}: record {d!r}")
        order = {d: i for i, d in enumerate(d for batch in self.sent for d, _ in batch)}
        for shard in {r.shard_id for r in got}:
            datas = [r.data for r in got if r.shard_id == shard]
            eq(datas, sorted(datas, key=order.__getitem__), f"{what}: order of {shard}")
        return got

    # each case raises CaseFailure on a mismatch

    def pass_through(self):
        recs = self.batch(6)
        ans = ok_of(self.put(recs), "plain PutRecords")
        eq(ans.get("FailedRecordCount", 0), 0, "FailedRecordCount")
        self.remember(recs, ans, "plain PutRecords")
        got = self.check_upstream("after a plain PutRecords")
        return f"6 records, {len({r.shard_id for r in got})} shards, read_all matches"

    def throttle(self):
        self.proxy.throttle("PutRecords", 2)
        for i in range(2):
            client_error(self.put(self.batch(2)), f"throttled call {i + 1}", 400, cloud.PTEE)
        eq(self.proxy.pending_faults("PutRecords"), 0, "throttles left")
        recs = self.batch(2)
        self.remember(recs, ok_of(self.put(recs), "call after the throttles"), "after throttles")
        self.check_upstream("after throttles")
        return "400 ProvisionedThroughputExceededException twice, then through; nothing stored by refused calls"

    def server_errors(self):
        self.proxy.server_error("PutRecords", 1, status=500)
        self.proxy.server_error("PutRecords", 1, status=503)
        client_error(self.put(self.batch(1)), "server_error 500", 500, "InternalFailure")
        client_error(self.put(self.batch(1)), "server_error 503", 503, "ServiceUnavailable")
        self.check_upstream("after server errors")
        return "500 InternalFailure, 503 ServiceUnavailable"

    def drops(self):
        self.proxy.drop_connection("PutRecords", 1)
        e = connection_error(self.put(self.batch(2)), "drop_connection")
        self.check_upstream("after a dropped call")
        self.proxy.drop_connection("PutRecords", 1, after_forward=True)
        recs = self.batch(2)
        e2 = connection_error(self.put(recs), "drop_connection(after_forward)")
        got = {r.data for r in self.raw.read_all(self.stream)}
        need(all(d in got for d, _ in recs), "drop_connection(after_forward): the records are not upstream")
        for r in self.raw.read_all(self.stream):
            if r.data in dict(recs):
                self.stored[r.data] = (r.partition_key, r.sequence_number, r.shard_id)
        recs = self.batch(1)
        self.remember(recs, ok_of(self.put(recs), "call after the drops"), "after drops")
        self.check_upstream("after drops")
        return f"boto3 {e['kind']} / {e2['kind']}; after_forward stored the records; the next call works"

    def partial(self):
        recs = self.batch(5)
        fails = {1: cloud.PTEE, 3: cloud.INTERNAL_FAILURE}
        self.proxy.partial_failure(fail_indexes=fails)
        ans = ok_of(self.put(recs), "partial failure")
        eq(ans.get("FailedRecordCount"), 2, "FailedRecordCount")
        for i, e in enumerate(ans["Records"]):
            if i in fails:
                eq(e.get("ErrorCode"), fails[i], f"entry {i} ErrorCode")
                need(e.get("ErrorMessage"), f"entry {i}: no ErrorMessage")
                need("SequenceNumber" not in e, f"entry {i}: a failed entry has a SequenceNumber")
            else:
                need("ErrorCode" not in e, f"entry {i}: unexpected ErrorCode {e}")
        need(ans["Records"][1]["ErrorMessage"].startswith("Rate exceeded for shard "), "PTEE ErrorMessage wording")
        eq(ans["Records"][3]["ErrorMessage"], "Internal service failure.", "InternalFailure ErrorMessage")
        eq(self.proxy.forwarded_records()[-1], [recs[i] for i in (0, 2, 4)], "records forwarded upstream")
        self.remember(recs, ans, "partial failure")
        self.check_upstream("after a partial failure")
        retry = [recs[i] for i in fails]
        self.remember(retry, ok_of(self.put(retry), "re-send of the failed records"), "re-send")
        eq(self.proxy.sent_records()[-1], retry, "the re-send carried only the failed records")
        self.check_upstream("after re-sending the failed records")
        return "FailedRecordCount 2, entries in request order, survivors stored, re-send stored the rest"

    def reject(self):
        self.proxy.reject_record(lambda d: d.startswith(b"poison"))
        recs = self.batch(1) + [(b"poison-" + self.label.encode(), "pk")] + self.batch(1)
        e = client_error(self.put(recs), "reject_record", 400, "ValidationException")
        need("'records.2.member.data'" in e["message"] and "less than or equal to 1048576" in e["message"],
             f"reject_record message: {e['message']!r}")
        self.proxy.clear()
        big = [(b"x" * (ONE_MIB + 1), "pk")]
        real = client_error(self.put(big), f"{self.label} itself, a record of 1 MiB + 1", 400, "ValidationException")
        need("'records.1.member.data' failed to satisfy constraint: Member must have length less than or equal to 1048576"
             in real["message"], f"{self.label}'s own message: {real['message'][:300]!r}")
        self.check_upstream("after refused records")
        return f"400 ValidationException like {self.label}'s own for a record over 1 MiB"

    def hold(self):
        self.proxy.pause()
        recs = self.batch(2)
        self.sent.append(recs)
        self.boto.send(self.proxy.endpoint, self.stream, recs)
        self.proxy.wait_held(1)
        self.check_upstream("while paused")
        self.proxy.resume()
        self.remember(recs, ok_of(self.boto.receive(), "paused call after resume"), "after pause")
        self.check_upstream("after resume")
        self.proxy.blackhole()
        recs = self.batch(2)
        self.sent.append(recs)
        self.boto.send(self.proxy.endpoint, self.stream, recs)
        self.proxy.wait_held(1)
        self.proxy.resume()
        e = connection_error(self.boto.receive(), "blackholed call after resume")
        self.check_upstream("after a blackhole")
        return f"pause held the call until resume, then stored; blackhole -> boto3 {e['kind']}"

    def bookkeeping(self):
        calls = self.proxy.calls("PutRecords")
        eq(len(calls), len(self.sent), "requests the proxy counted")
        eq(self.proxy.count("PutRecords"), len(self.sent), "count()")
        eq([c.sent for c in calls], self.sent, "records the proxy recorded per request")
        self.proxy.wait_count("PutRecords", len(self.sent))
        conns = self.proxy.server.connections
        need(conns < len(calls), f"{conns} connections for {len(calls)} requests: boto3's keep-alive was not reused")
        return f"{len(calls)} requests on {conns} connections, each recorded as sent"

    def run(self, report):
        for name in ("pass_through", "throttle", "server_errors", "drops", "partial", "reject", "hold", "bookkeeping"):
            case = f"{self.label}-{name.replace('_', '-')}"
            try:
                report.ok(case, getattr(self, name)())
            except CaseFailure as e:
                report.fail(case, str(e))
            finally:
                self.proxy.clear()
                self.proxy.resume()


# -- IoT Analytics ---------------------------------------------------------


def iota_error(fn, status, code, what):
    try:
        out = fn()
    except cloud.AwsError as e:
        eq((e.status, e.code), (status, code), f"{what}: error")
        eq(e.headers.get("x-amzn-errortype"), code, f"{what}: x-amzn-ErrorType header")
        return e
    raise CaseFailure(f"{what}: expected {status} {code}, got 200 {out}")


def iota_cases(report, iota):
    c = cloud.IotAnalyticsClient(iota.endpoint)
    iota.add_channel("weir_channel")
    cases = []

    def accepts():
        msgs = [(f"m{i}", f"payload {i}".encode()) for i in range(3)] + [("m-bin", bytes(range(256)))]
        eq(c.batch_put_message("weir_channel", msgs), {"batchPutMessageErrorEntries": []}, "answer")
        eq(iota.received("weir_channel"), msgs, "what the stand-in stored")
        full = [(f"id{i:03d}" + "x" * 123, b"p") for i in range(100)]
        eq(len(full[0][0]), 128, "a 128-character id")
        eq(c.batch_put_message("weir_channel", full)["batchPutMessageErrorEntries"], [], "100 messages")
        name = "c" * 128
        iota.add_channel(name)
        c.batch_put_message(name, [("m", b"p")])
        eq(iota.messages(name), {"m": b"p"}, "a 128-character channel name")
        return "valid batches stored, 100 messages, 128-character ids and channel names"
    cases.append(("iota-accepts", accepts))

    def refuses():
        before = iota.received("weir_channel")
        e = iota_error(lambda: c.batch_put_message("no_such_channel", [("m", b"p")]), 404,
                       "ResourceNotFoundException", "unknown channel")
        doc = {"channelName": "weir_channel", "messages": [{"messageId": "m", "payload": "cA=="}]}
        refusals = [
            ("bad-name", [("m", b"p")], "channel name with '-'"),
            ("c" * 129, [("m", b"p")], "129-character channel name"),
            ("", [("m", b"p")], "empty channel name"),
            ("weir_channel", [("", b"p")], "empty messageId"),
            ("weir_channel", [("x" * 129, b"p")], "129-character messageId"),
            ("weir_channel", [("same", b"a"), ("same", b"b")], "messageId twice in a batch"),
            ("weir_channel", [(f"m{i}", b"p") for i in range(101)], "101 messages"),
        ]
        for ch, msgs, what in refusals:
            iota_error(lambda: c.batch_put_message(ch, msgs), 400, "InvalidRequestException", what)
        iota_error(lambda: c.raw(dict(doc, messages=[{"messageId": "m", "payload": "not base64!"}])), 400,
                   "InvalidRequestException", "payload not base64")
        iota_error(lambda: c.raw(b"{not json"), 400, "InvalidRequestException", "body not JSON")
        iota_error(lambda: c.raw(doc, path="/messages/other"), 404, "UnknownOperationException", "unknown path")
        iota.add_channel("gone")
        iota.remove_channel("gone")
        iota_error(lambda: c.batch_put_message("gone", [("m", b"p")]), 404, "ResourceNotFoundException", "removed channel")
        eq(iota.received("weir_channel"), before, "nothing stored by refused batches")
        return f"404 ResourceNotFoundException ({e.message!r}), {len(refusals) + 2} kinds of 400 InvalidRequestException"
    cases.append(("iota-refuses", refuses))

    proxy = cloud.FaultProxy(iota, service="iotanalytics")
    pc = cloud.IotAnalyticsClient(proxy.endpoint)

    def faults():
        before = iota.received("weir_channel")
        proxy.throttle("BatchPutMessage", 1)
        iota_error(lambda: pc.batch_put_message("weir_channel", [("t", b"p")]), 429, "ThrottlingException", "throttle")
        proxy.server_error("/messages/batch", 1, 500)
        proxy.server_error("BatchPutMessage", 1, 503)
        iota_error(lambda: pc.batch_put_message("weir_channel", [("t", b"p")]), 500, "InternalFailureException", "500")
        iota_error(lambda: pc.batch_put_message("weir_channel", [("t", b"p")]), 503, "ServiceUnavailableException", "503")
        proxy.reject_record(lambda p: p == b"poison")
        iota_error(lambda: pc.batch_put_message("weir_channel", [("a", b"ok"), ("b", b"poison")]), 400,
                   "InvalidRequestException", "reject_record")
        proxy.clear()
        proxy.drop_connection("BatchPutMessage", 1)
        try:
            pc.batch_put_message("weir_channel", [("t", b"p")])
            raise CaseFailure("drop_connection: the call got an answer")
        except (OSError, http.client.HTTPException):
            pass
        eq(iota.received("weir_channel"), before, "nothing stored by faulted calls")
        proxy.pause()
        result = []
        t = threading.Thread(target=lambda: result.append(pc.batch_put_message("weir_channel", [("held", b"h")])),
                             daemon=True)
        t.start()
        proxy.wait_held(1)
        eq(iota.received("weir_channel"), before, "nothing upstream while paused")
        proxy.resume()
        t.join(cloud.WAIT_DEADLINE_S)
        eq(result, [{"batchPutMessageErrorEntries": []}], "paused call after resume")
        eq(iota.received("weir_channel"), before + [("held", b"h")], "stored after resume")
        eq(proxy.count("BatchPutMessage"), 6, "requests counted")
        eq(proxy.sent_records("BatchPutMessage")[-1], [("held", b"h")], "records recorded")
        gone = cloud.IotAnalyticsStandIn()
        gone.stop()
        with cloud.FaultProxy(gone, service="iotanalytics") as orphan:
            try:
                cloud.IotAnalyticsClient(orphan.endpoint).batch_put_message("weir_channel", [("m", b"p")])
                raise CaseFailure("a proxy whose upstream is gone answered 200")
            except cloud.AwsError as e:
                eq(e.status, 502, "a proxy whose upstream is gone")
        return "429 ThrottlingException, 500/503, reject 400, drop, pause/resume; each with x-amzn-ErrorType; 502 without upstream"
    cases.append(("iota-through-proxy", faults))

    try:
        for name, fn in cases:
            try:
                report.ok(name, fn())
            except CaseFailure as e:
                report.fail(name, str(e))
    finally:
        proxy.stop()


def main():
    report = Report("cloud stand-ins (moto, kinesalite, IoT Analytics, fault proxy) with boto3")
    boto = Boto3()
    try:
        for cls in (cloud.Moto, cloud.Kinesalite):
            with cls() as standin:
                cases = KinesisCases(standin.name, standin, boto)
                try:
                    cases.run(report)
                finally:
                    cases.proxy.stop()
        with cloud.IotAnalyticsStandIn() as iota:
            iota_cases(report, iota)
    finally:
        boto.stop()
    return report.finish()


if __name__ == "__main__":
    if sys.argv[1:] == ["--boto3-worker"]:
        boto3_worker()
    else:
        main_guard(main)
