"""Runs inside the greengrasssdk 1.5.0 venv (Python 3.7): measures what the real
client achieves against whatever server STREAM_MANAGER_SERVER_PORT points at.

Prints one JSON line: {"append_per_s": ..., "read_msgs_per_s": ..., "appended": N, "read": M}.
"""
import json
import sys
import time

from greengrasssdk.stream_manager import (
    MessageStreamDefinition,
    ReadMessagesOptions,
    ResourceNotFoundException,
    StrategyOnFull,
    StreamManagerClient,
)

APPENDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
PAYLOAD = b"x" * 100
STREAM = "BenchStream"

client = StreamManagerClient()
try:
    client.delete_message_stream(STREAM)
except ResourceNotFoundException:
    pass
client.create_message_stream(MessageStreamDefinition(name=STREAM, strategy_on_full=StrategyOnFull.OverwriteOldestData))

started = time.perf_counter()
for _ in range(APPENDS):
    client.append_message(STREAM, PAYLOAD)
append_s = time.perf_counter() - started

# Three passes over everything appended; the median pass is reported, so a
# cold first pass (Python warming up its decoder) does not decide the figure.
pass_rates = []
for _ in range(3):
    read = 0
    started = time.perf_counter()
    while read < APPENDS:
        messages = client.read_messages(
            STREAM, ReadMessagesOptions(desired_start_sequence_number=read, min_message_count=1, max_message_count=100)
        )
        read += len(messages)
    pass_rates.append(read / (time.perf_counter() - started))
client.close()
print(json.dumps({"append_per_s": APPENDS / append_s, "read_msgs_per_s": sorted(pass_rates)[1], "appended": APPENDS, "read": read}))
