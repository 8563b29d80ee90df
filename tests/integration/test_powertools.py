"""Functions written with Powertools for AWS Lambda run under esm unchanged.

The handlers (tests/handlers/powertools_app.py) use Powertools' batch utility, whose partial
batch responses esm must read as Lambda does, and its Logger's `inject_lambda_context`, which
needs the context object's Lambda attributes. Each runs in-process and as a `process`
execution environment (the Lambda Runtime API), against a real moto server.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest
from conftest import HANDLERS, make_table_with_stream, wait_until
from test_sqs_mapping import make_queue, receive_all

from esm.config import Config, parse_config

KINDS = ["python", "process"]


def attempts(path: Path) -> Counter[str]:
    """How many times each item was handled (one line per attempt)."""
    lines = path.read_text().split("\n") if path.exists() else []
    return Counter(line.split(" ", 1)[0] for line in lines if line)


def request_ids(path: Path) -> set[str]:
    return {line.split(" ", 1)[1] for line in path.read_text().splitlines()}


def config(
    endpoint: str, tmp_path: Path, kind: str, handler: str, mapping: dict[str, Any]
) -> Config:
    return parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": {"path": str(tmp_path / "state.sqlite3")},
            "functions": {
                "pt": {
                    "kind": kind,
                    "handler": f"powertools_app.{handler}",
                    "code_path": str(HANDLERS),
                    "timeout": 3,
                    "environment": {"RECORD_PATH": str(tmp_path / "handled.txt")},
                }
            },
            "mappings": [
                {
                    "function": "pt",
                    "function_response_types": ["ReportBatchItemFailures"],
                    **mapping,
                }
            ],
        }
    )


@pytest.mark.parametrize("kind", KINDS)
def test_sqs_batch_processor_partial_failures(endpoint, unique, tmp_path, run_daemon, kind):  # type: ignore[no-untyped-def]
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    dlq_url, dlq_arn = make_queue(sqs, f"pt-dlq-{unique}")
    url, arn = make_queue(
        sqs,
        f"pt-{unique}",
        VisibilityTimeout="3",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    bodies = ["ok-1", "ok-2", "flaky-3", "ok-4", "poison-5"]
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
    )
    run_daemon(
        config(
            endpoint,
            tmp_path,
            kind,
            "sqs_handler",
            {
                "name": "pt-sqs",
                "event_source_arn": arn,
                "batch_size": 10,
                "maximum_batching_window_in_seconds": 1,
            },
        )
    )
    dead = wait_until(lambda: receive_all(sqs, dlq_url), timeout=60)
    assert [m["Body"] for m in dead] == ["poison-5"]
    handled = tmp_path / "handled.txt"
    wait_until(lambda: attempts(handled)["flaky-3"] >= 2, timeout=30)
    counts = attempts(handled)
    assert all(counts[b] >= 1 for b in ("ok-1", "ok-2", "ok-4"))
    # Reported as failed, so received again: flaky-3 once more (then it succeeds), poison-5
    # until the queue's maxReceiveCount moves it to the DLQ.
    assert counts["poison-5"] == 2
    assert "-" not in request_ids(handled), "Powertools' Logger read the invocation's request id"


@pytest.mark.parametrize("kind", KINDS)
def test_kinesis_batch_processor_retries_from_the_first_failed_record(
    endpoint, unique, tmp_path, run_daemon, kind
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"pt-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    datas = ["ok-1", "ok-2", "flaky-3", "ok-4"]
    kinesis.put_records(
        StreamName=name, Records=[{"PartitionKey": "k", "Data": d.encode()} for d in datas]
    )
    run_daemon(
        config(
            endpoint,
            tmp_path,
            kind,
            "kinesis_handler",
            {
                "name": "pt-kinesis",
                "event_source_arn": arn,
                "starting_position": "TRIM_HORIZON",
                "batch_size": 10,
            },
        )
    )
    handled = tmp_path / "handled.txt"
    wait_until(lambda: attempts(handled)["ok-4"] >= 2, timeout=60)
    # Powertools reports flaky-3's sequence number; like Lambda, esm checkpoints before it
    # and sends flaky-3 and everything after it again.
    assert attempts(handled) == {"ok-1": 1, "ok-2": 1, "flaky-3": 2, "ok-4": 2}
    assert "-" not in request_ids(handled)


@pytest.mark.parametrize("kind", KINDS)
def test_dynamodb_batch_processor_retries_from_the_first_failed_record(
    endpoint, unique, tmp_path, run_daemon, kind
):  # type: ignore[no-untyped-def]
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    table = f"pt-{unique}"
    stream_arn = make_table_with_stream(ddb, table)
    for item_id in ["ok-1", "flaky-2", "ok-3"]:
        ddb.put_item(TableName=table, Item={"id": {"S": item_id}})
    run_daemon(
        config(
            endpoint,
            tmp_path,
            kind,
            "dynamodb_handler",
            {
                "name": "pt-dynamodb",
                "event_source_arn": stream_arn,
                "starting_position": "TRIM_HORIZON",
                "batch_size": 10,
            },
        )
    )
    handled = tmp_path / "handled.txt"
    wait_until(lambda: attempts(handled)["ok-3"] >= 2, timeout=60)
    assert attempts(handled) == {"ok-1": 1, "flaky-2": 2, "ok-3": 2}
    assert "-" not in request_ids(handled)
