"""SIGKILL esm at seeded random moments while it consumes a Kinesis stream, a DynamoDB
stream and an SQS queue; restart it each time. Nothing may be skipped, and duplicates may
only come from batches that were in flight at a kill."""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import boto3
from conftest import HANDLERS, free_port, make_table_with_stream, wait_for_http, wait_until

SEED = 20261124
KILLS = 20
BATCH_SIZE = 10
PARALLELIZATION = 2
KINESIS_SHARDS = 2


def write_config(
    path: Path, endpoint: str, port: int, record_path: Path, arns: dict[str, str]
) -> None:
    path.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
[state]
path = "{path.parent / "state.sqlite3"}"
[functions.w]
handler = "fault_handlers.write_ids"
code_path = "{HANDLERS}"
timeout = 1
environment = {{ RECORD_PATH = "{record_path}", HANDLER_SLEEP = "0.02" }}
[[mappings]]
name = "kinesis"
function = "w"
event_source_arn = "{arns["kinesis"]}"
starting_position = "TRIM_HORIZON"
batch_size = {BATCH_SIZE}
parallelization_factor = {PARALLELIZATION}
[[mappings]]
name = "dynamodb"
function = "w"
event_source_arn = "{arns["dynamodb"]}"
starting_position = "TRIM_HORIZON"
batch_size = {BATCH_SIZE}
[[mappings]]
name = "sqs"
function = "w"
event_source_arn = "{arns["sqs"]}"
batch_size = {BATCH_SIZE}
scaling_config = {{ maximum_concurrency = 2 }}
"""
    )


def produce(endpoint: str, unique: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    stream = f"crash-{unique}"
    kinesis.create_stream(StreamName=stream, ShardCount=KINESIS_SHARDS)
    kinesis_arn = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamARN"]
    sent: dict[str, list[str]] = {"kinesis": [f"k{i}" for i in range(1200)]}
    for start in range(0, len(sent["kinesis"]), 500):
        chunk = sent["kinesis"][start : start + 500]
        kinesis.put_records(
            StreamName=stream,
            Records=[{"PartitionKey": f"p{d[1:]}", "Data": d.encode()} for d in chunk],
        )
    table_stream_arn = make_table_with_stream(ddb, f"crash-{unique}")
    sent["dynamodb"] = [f"d{i}" for i in range(300)]
    for item in sent["dynamodb"]:
        ddb.put_item(TableName=f"crash-{unique}", Item={"id": {"S": item}})
    url = sqs.create_queue(QueueName=f"crash-{unique}", Attributes={"VisibilityTimeout": "2"})[
        "QueueUrl"
    ]
    sqs_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sent["sqs"] = [f"s{i}" for i in range(400)]
    for start in range(0, len(sent["sqs"]), 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": b}
                for i, b in enumerate(sent["sqs"][start : start + 10])
            ],
        )
    return {"kinesis": kinesis_arn, "dynamodb": table_stream_arn, "sqs": sqs_arn}, sent


def test_sigkill_at_random_moments_loses_nothing(endpoint, unique, tmp_path):  # type: ignore[no-untyped-def]
    arns, sent = produce(endpoint, unique)
    record_path = tmp_path / "handled.txt"
    config = tmp_path / "esm.toml"
    port = free_port()
    write_config(config, endpoint, port, record_path, arns)
    rng = random.Random(SEED)

    def handled() -> list[str]:
        return record_path.read_text().split() if record_path.exists() else []

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    everything = {i for ids in sent.values() for i in ids}
    kills = 0
    for _ in range(KILLS):
        proc = start()
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz")
            # Kill at a seeded moment: sometimes during startup, mostly mid-batch.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.05, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            kills += 1
        finally:
            proc.kill()
    final = start()
    try:
        wait_until(lambda: everything <= set(handled()), timeout=120)
    finally:
        final.send_signal(signal.SIGTERM)
        final.wait(timeout=30)
    assert kills == KILLS
    seen = Counter(handled())
    assert everything <= set(seen), sorted(everything - set(seen))[:20]
    assert set(seen) <= everything
    duplicates = {source: sum(seen[i] - 1 for i in ids) for source, ids in sent.items()}
    # Duplicates come only from batches in flight (or read but not checkpointed) at a kill:
    # per kill at most one batch per lane of each shard, and for SQS one per receiver.
    in_flight_bound = {
        "kinesis": KILLS * KINESIS_SHARDS * PARALLELIZATION * BATCH_SIZE * 2,
        "dynamodb": KILLS * BATCH_SIZE * 2,
        "sqs": KILLS * 2 * BATCH_SIZE,
    }
    print(
        "crash suite:",
        {"kills": kills, "produced": len(everything), "lost": 0, "duplicates": duplicates},
    )
    for source, count in duplicates.items():
        assert count <= in_flight_bound[source], (source, count)
