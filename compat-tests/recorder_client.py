"""Client side of compat-tests/recorder.py for the Python SDKs (greengrasssdk 1.5.0 / 1.6.1,
stream-manager 1.1.2). Runs under the SDK's own venv (Python 3.7 or 3.11).

Environment:
  RECORDER_PLAN               path of the JSON session plan written by recorder.py
  RECORDER_SDK_MODULE         "greengrasssdk.stream_manager" or "stream_manager"
  STREAM_MANAGER_SERVER_PORT / AWS_CONTAINER_AUTHORIZATION_TOKEN   read by the SDK itself
  RECORDER_IGNORE_INGEST_TIME=1   do not check message ingestTime (runs against a real server)
  RECORDER_KEEP_GOING=1           run every step even after a mismatch (still exits non-zero)

Executes every step of the plan through the SDK's public API on one StreamManagerClient,
compares each result (or exception class + message) with the plan's expectation and exits
non-zero at the first mismatch (or at the end with RECORDER_KEEP_GOING=1).
"""

import importlib
import json
import logging
import os
import sys


def normalize(v):
    """SDK result -> plain JSON-like value (objects via as_dict, bytes as hex)."""
    if hasattr(v, "as_dict"):
        v = v.as_dict()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    if isinstance(v, dict):
        return {k: normalize(x) for k, x in v.items()}
    if isinstance(v, list):
        return [normalize(x) for x in v]
    return v


def strip_ingest_time(v):
    if isinstance(v, dict):
        return {k: strip_ingest_time(x) for k, x in v.items() if k != "ingestTime"}
    if isinstance(v, list):
        return [strip_ingest_time(x) for x in v]
    return v


def same(a, b):
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, (dict, list)) or isinstance(b, (dict, list)):
        return False
    return type(a) is type(b) and a == b


def main():
    module = os.environ["RECORDER_SDK_MODULE"]
    with open(os.environ["RECORDER_PLAN"], encoding="utf-8") as f:
        plan = json.load(f)
    ignore_ingest = os.environ.get("RECORDER_IGNORE_INGEST_TIME") == "1"
    keep_going = os.environ.get("RECORDER_KEEP_GOING") == "1"
    sm = importlib.import_module(module)
    data = importlib.import_module(module + ".data")
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)

    client = sm.StreamManagerClient()
    failures = 0
    for step in plan:
        name, call, args, expect = step["name"], step["call"], step["args"], step["expect"]
        try:
            if call in ("create", "update"):
                definition = data.MessageStreamDefinition.from_dict(args["definition"])
                getattr(client, call + "_message_stream")(definition)
                result = None
            elif call == "append":
                p = args["payload"]
                payload = bytes.fromhex(p["hex"]) if "hex" in p else p["text"]
                result = client.append_message(args["stream"], payload)
            elif call == "read":
                if args["options"] is None:
                    result = client.read_messages(args["stream"])
                else:
                    result = client.read_messages(args["stream"], data.ReadMessagesOptions.from_dict(args["options"]))
            elif call == "list":
                result = client.list_streams()
            elif call == "describe":
                result = client.describe_message_stream(args["stream"])
            elif call == "delete":
                client.delete_message_stream(args["stream"])
                result = None
            else:
                raise RuntimeError("unknown call " + call)
            got = {"ok": normalize(result)}
        except sm.StreamManagerException as e:
            got = {"error": type(e).__name__, "message": e.message}
        want = expect
        if ignore_ingest:
            got, want = strip_ingest_time(got), strip_ingest_time(want)
        if same(got, want):
            print("ok   %s" % name)
        else:
            failures += 1
            print("FAIL %s\n  expected %s\n  got      %s" % (name, json.dumps(want), json.dumps(got)))
            if not keep_going:
                break
    client.close()
    if failures:
        print("%d step(s) not as expected" % failures)
        sys.exit(1)
    print("all %d steps as expected" % len(plan))


if __name__ == "__main__":
    main()
