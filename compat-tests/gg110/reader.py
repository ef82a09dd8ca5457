"""Greengrass 1.10 style stream reader (greengrasssdk 1.5.0, Python 3.7).

Repeatedly long-polls `SomeStream` from the last sequence number seen + 1
(min 1, max 100, read timeout 5000 ms) and prints what it gets:
    read seq=<n> payload=<hex>
    wait NotEnoughMessagesException      (a 5 s long-poll ended without data)
    done
It stops after seeing sequence number --until-seq, or fails after --deadline seconds.
"""
import argparse
import sys
import time

from greengrasssdk.stream_manager import (
    NotEnoughMessagesException,
    ReadMessagesOptions,
    StreamManagerClient,
)

STREAM_NAME = "SomeStream"


def say(line):
    print(line, flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--until-seq", type=int, required=True)
    parser.add_argument("--deadline", type=float, default=60.0, help="give up after this many seconds")
    args = parser.parse_args()

    give_up_at = time.monotonic() + args.deadline
    client = StreamManagerClient()
    try:
        last_seq_no = -1
        while last_seq_no < args.until_seq:
            if time.monotonic() > give_up_at:
                say("gave up at last_seq_no={}".format(last_seq_no))
                return 1
            try:
                messages = client.read_messages(
                    STREAM_NAME,
                    ReadMessagesOptions(
                        desired_start_sequence_number=last_seq_no + 1,
                        min_message_count=1,
                        max_message_count=100,
                        read_timeout_millis=5000,
                    ),
                )
            except NotEnoughMessagesException:
                say("wait NotEnoughMessagesException")
                continue
            for m in messages:
                say("read seq={} payload={}".format(m.sequence_number, m.payload.hex()))
                last_seq_no = m.sequence_number
        say("done")
        return 0
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
