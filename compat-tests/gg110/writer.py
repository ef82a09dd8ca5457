"""Greengrass 1.10 getting-started style stream writer (greengrasssdk 1.5.0, Python 3.7).

Written the way the GG 1.10 stream manager sample Lambda uses the API: recreate
`SomeStream` (OverwriteOldestData, Kinesis export), append two messages, read them
back, then append a random 4-byte big-endian integer every second.

Unlike the Lambda it is bounded (--count) and prints one line per event so the
test can check every value exactly:
    delete SomeStream: ResourceNotFoundException | delete SomeStream: deleted
    create SomeStream
    append seq=<n> payload=<hex>
    readback count=<k>
    readback seq=<n> payload=<hex>
    random seq=<n> value=<int> payload=<hex>
    describe <json of MessageStreamInfo.as_dict()>
    done
--hold-after K (test_export.py) adds, after the K-th random append, the line
    hold
and waits for a line on stdin before going on (the test restarts weir there;
the client reconnects by itself on its next request).
"""
import argparse
import json
import random
import sys
import time

from greengrasssdk.stream_manager import (
    ExportDefinition,
    KinesisConfig,
    MessageStreamDefinition,
    ReadMessagesOptions,
    ResourceNotFoundException,
    StrategyOnFull,
    StreamManagerClient,
)

STREAM_NAME = "SomeStream"
KINESIS_STREAM_NAME = "MyKinesisStream"


def say(line):
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=5, help="number of random integers to append")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between random appends")
    parser.add_argument("--hold-after", type=int, default=None,
                        help="after this many random appends print 'hold' and wait for a line on stdin")
    args = parser.parse_args()

    client = StreamManagerClient()
    try:
        # Start from a clean stream; a missing stream is reported as ResourceNotFoundException.
        try:
            client.delete_message_stream(stream_name=STREAM_NAME)
            say("delete {}: deleted".format(STREAM_NAME))
        except ResourceNotFoundException:
            say("delete {}: ResourceNotFoundException".format(STREAM_NAME))

        exports = ExportDefinition(
            kinesis=[KinesisConfig(identifier="KinesisExport" + STREAM_NAME, kinesis_stream_name=KINESIS_STREAM_NAME)]
        )
        client.create_message_stream(
            MessageStreamDefinition(
                name=STREAM_NAME, strategy_on_full=StrategyOnFull.OverwriteOldestData, export_definition=exports
            )
        )
        say("create {}".format(STREAM_NAME))

        for text in ("ABCDEFGHIJKLMNO", "PQRSTUVWXYZ"):
            payload = text.encode("utf-8")
            seq = client.append_message(STREAM_NAME, payload)
            say("append seq={} payload={}".format(seq, payload.hex()))

        # No max_message_count: the sample expects exactly min_message_count (2) messages.
        messages = client.read_messages(STREAM_NAME, ReadMessagesOptions(min_message_count=2, read_timeout_millis=1000))
        say("readback count={}".format(len(messages)))
        for m in messages:
            say("readback seq={} payload={}".format(m.sequence_number, m.payload.hex()))

        # Emulate a sensor: random integers as 4-byte big-endian signed values.
        for i in range(args.count):
            value = random.randint(0, 1000)
            payload = value.to_bytes(length=4, signed=True, byteorder="big")
            seq = client.append_message(STREAM_NAME, payload)
            say("random seq={} value={} payload={}".format(seq, value, payload.hex()))
            if args.hold_after is not None and i + 1 == args.hold_after:
                say("hold")
                sys.stdin.readline()
            if i + 1 < args.count:
                time.sleep(args.interval)  # pacing like the sample, not synchronisation

        info = client.describe_message_stream(STREAM_NAME)
        say("describe " + json.dumps(info.as_dict(), sort_keys=True))
        say("done")
    finally:
        client.close()


if __name__ == "__main__":
    main()
