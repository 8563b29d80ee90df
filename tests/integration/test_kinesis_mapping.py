"""Kinesis mappings against a real moto server: order, retries, bisect, destinations,
checkpoints."""

from __future__ import annotations

import base64
import json

import boto3
import pytest
import recorder
from conftest import build_config, stored_checkpoint, wait_until


@pytest.fixture
def kinesis(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


def make_stream(kinesis, name: str, shards: int = 1) -> str:  # type: ignore[no-untyped-def]
    kinesis.create_stream(StreamName=name, ShardCount=shards)
    return kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]


def put(kinesis, name: str, items: list[tuple[str, str]]) -> list[str]:  # type: ignore[no-untyped-def]
    """Put (partition key, data) pairs from one writer, in order; returns sequence numbers."""
    seqs: list[str] = []
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        response = kinesis.put_records(
            StreamName=name, Records=[{"PartitionKey": k, "Data": d.encode()} for k, d in chunk]
        )
        assert response["FailedRecordCount"] == 0
        seqs.extend(r["SequenceNumber"] for r in response["Records"])
    return seqs


def datas(arn: str) -> list[str]:
    return [recorder.kinesis_data(r) for e in recorder.events_for(arn) for r in e["Records"]]


def stream_mapping(arn: str, function: str = "f", **extra):  # type: ignore[no-untyped-def]
    return {
        "name": f"k-{arn.rsplit('/', 1)[1]}",
        "function": function,
        "event_source_arn": arn,
        "starting_position": "TRIM_HORIZON",
        **extra,
    }


def config_with_state(endpoint, tmp_path, functions, mappings):  # type: ignore[no-untyped-def]
    from esm.config import parse_config

    base = build_config(endpoint, functions, mappings)
    raw_state = {"path": str(tmp_path / "state.sqlite3")}
    return parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": raw_state,
            "functions": {
                n: {"code_path": str(f.code_path), "handler": f.handler, "timeout": f.timeout}
                for n, f in base.functions.items()
            },
            "mappings": mappings,
        }
    )


def test_kinesis_event_shape_and_checkpoint(endpoint, kinesis, unique, tmp_path, run_daemon):  # type: ignore[no-untyped-def]
    name = f"shape-{unique}"
    arn = make_stream(kinesis, name)
    seqs = put(kinesis, name, [("pk-1", "Hello, this is a test.")])
    daemon = run_daemon(
        config_with_state(
            endpoint, tmp_path, {"f": {"handler": "recorder.record"}}, [stream_mapping(arn)]
        )
    )
    wait_until(lambda: recorder.events_for(arn))
    record = recorder.events_for(arn)[0]["Records"][0]
    assert list(record) == [
        "kinesis",
        "eventSource",
        "eventVersion",
        "eventID",
        "eventName",
        "invokeIdentityArn",
        "awsRegion",
        "eventSourceARN",
    ]
    assert list(record["kinesis"]) == [
        "kinesisSchemaVersion",
        "partitionKey",
        "sequenceNumber",
        "data",
        "approximateArrivalTimestamp",
    ]
    assert record["kinesis"]["data"] == base64.b64encode(b"Hello, this is a test.").decode()
    assert record["kinesis"]["partitionKey"] == "pk-1"
    assert record["kinesis"]["sequenceNumber"] == seqs[0]
    assert isinstance(record["kinesis"]["approximateArrivalTimestamp"], float)
    assert record["eventID"] == f"shardId-000000000000:{seqs[0]}"
    assert (record["eventSource"], record["eventName"], record["eventSourceARN"]) == (
        "aws:kinesis",
        "aws:kinesis:record",
        arn,
    )

    def stored() -> str | None:
        return stored_checkpoint(tmp_path / "state.sqlite3")

    wait_until(lambda: stored() == seqs[0])
    _, metrics = daemon.get("/metrics")
    assert f'esm_polled_events_total{{mapping="k-{name}"}} 1.0' in metrics
    assert f'esm_iterator_age_seconds{{mapping="k-{name}",shard="shardId-000000000000"}}' in metrics


def test_order_per_partition_key_with_parallelization_factor_4(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"order-{unique}"
    arn = make_stream(kinesis, name, shards=2)
    items = [(f"key-{i % 37}", f"{i % 37}:{i}") for i in range(3000)]
    put(kinesis, name, items)
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.record"}},
        [stream_mapping(arn, parallelization_factor=4, batch_size=50)],
    )
    run_daemon(config)
    wait_until(lambda: len(datas(arn)) >= 3000, timeout=60)
    seen = datas(arn)
    assert sorted(seen) == sorted(d for _, d in items)
    for key in range(37):
        mine = [int(d.split(":")[1]) for d in seen if d.startswith(f"{key}:")]
        assert mine == sorted(mine)


def test_failing_key_blocks_only_its_lane(endpoint, kinesis, unique, tmp_path, run_daemon):  # type: ignore[no-untyped-def]
    name = f"lane-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [("stuck", "stuck-0")] + [(f"free-{i}", f"free-{i}") for i in range(200)])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.stream_fail_lane_of_key"}},
        [stream_mapping(arn, parallelization_factor=10, batch_size=10)],
    )
    run_daemon(config)
    # Every record outside the stuck key's lane gets through while that lane keeps retrying.
    import zlib

    stuck_lane = zlib.crc32(b"stuck") % 10
    free_elsewhere = {
        f"free-{i}" for i in range(200) if zlib.crc32(f"free-{i}".encode()) % 10 != stuck_lane
    }
    wait_until(lambda: free_elsewhere <= set(datas(arn)), timeout=30)
    wait_until(lambda: datas(arn).count("stuck-0") >= 2, timeout=30)
    # The stuck lane is blocked: each of its batches is the failing one, retried whole.
    for event in recorder.events_for(arn):
        batch = [recorder.kinesis_data(r) for r in event["Records"]]
        in_stuck_lane = [
            d
            for d in batch
            if zlib.crc32(("stuck" if d == "stuck-0" else d).encode()) % 10 == stuck_lane
        ]
        assert not in_stuck_lane or batch[0] == "stuck-0", batch


def test_bisect_isolates_one_poison_record(endpoint, kinesis, unique, tmp_path, run_daemon):  # type: ignore[no-untyped-def]
    name = f"bisect-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [("k", f"r{i}" if i != 5 else "poison") for i in range(8)])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.stream_fail_on_poison"}},
        [
            stream_mapping(
                arn,
                batch_size=8,
                maximum_batching_window_in_seconds=1,
                bisect_batch_on_function_error=True,
                maximum_retry_attempts=0,
            )
        ],
    )
    daemon = run_daemon(config)
    # r7 is in the first batch too: wait for the last of the seven invocations instead.
    wait_until(lambda: len(recorder.events_for(arn)) >= 7, timeout=30)
    sizes = [len(e["Records"]) for e in recorder.events_for(arn)]
    assert sizes == [8, 4, 4, 2, 1, 1, 2]
    _, metrics = daemon.get("/metrics")
    assert f'esm_dropped_events_total{{mapping="k-{name}"}} 1.0' in metrics


def test_retries_exhausted_sends_the_aws_failure_record_to_sqs(
    endpoint, kinesis, sqs, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"retry-{unique}"
    arn = make_stream(kinesis, name)
    dest_url = sqs.create_queue(QueueName=f"dest-{unique}")["QueueUrl"]
    dest_arn = sqs.get_queue_attributes(QueueUrl=dest_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    seqs = put(kinesis, name, [("k", "poison-a"), ("k", "poison-b")])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.stream_fail_on_poison"}},
        [
            stream_mapping(
                arn,
                maximum_retry_attempts=2,
                maximum_batching_window_in_seconds=1,
                destination_config={"on_failure": {"destination": dest_arn}},
            )
        ],
    )
    run_daemon(config)
    messages = wait_until(
        lambda: sqs.receive_message(QueueUrl=dest_url, WaitTimeSeconds=1).get("Messages"),
        timeout=30,
    )
    document = json.loads(messages[0]["Body"])
    assert list(document) == [
        "requestContext",
        "responseContext",
        "version",
        "timestamp",
        "KinesisBatchInfo",
    ]
    assert document["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert document["requestContext"]["approximateInvokeCount"] == 3
    assert document["requestContext"]["functionArn"].endswith(":function:f")
    assert document["responseContext"] == {
        "statusCode": 200,
        "executedVersion": "$LATEST",
        "functionError": "Unhandled",
    }
    info = document["KinesisBatchInfo"]
    assert (
        info["shardId"],
        info["startSequenceNumber"],
        info["endSequenceNumber"],
        info["batchSize"],
        info["streamArn"],
    ) == (
        "shardId-000000000000",
        seqs[0],
        seqs[1],
        2,
        arn,
    )
    assert len(recorder.events_for(arn)) == 3


def test_partial_batch_failure_retries_from_lowest_failed_record(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"partial-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [("k", "ok-0"), ("k", "ok-1"), ("k", "fail-2"), ("k", "ok-3")])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.stream_report_failures"}},
        [
            stream_mapping(
                arn,
                maximum_retry_attempts=1,
                maximum_batching_window_in_seconds=1,
                function_response_types=["ReportBatchItemFailures"],
            )
        ],
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(recorder.events_for(arn)) >= 2, timeout=30)
    batches = [[recorder.kinesis_data(r) for r in e["Records"]] for e in recorder.events_for(arn)]
    assert batches[0] == ["ok-0", "ok-1", "fail-2", "ok-3"]
    assert batches[1] == ["fail-2", "ok-3"]
    wait_until(
        lambda: f'esm_dropped_events_total{{mapping="k-{name}"}} 2.0' in daemon.get("/metrics")[1]
    )


def test_records_older_than_maximum_record_age_are_given_up(
    endpoint, kinesis, sqs, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"age-{unique}"
    arn = make_stream(kinesis, name)
    dest_url = sqs.create_queue(QueueName=f"agedest-{unique}")["QueueUrl"]
    dest_arn = sqs.get_queue_attributes(QueueUrl=dest_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    put(kinesis, name, [("k", "poison")])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.stream_fail_on_poison"}},
        [
            stream_mapping(
                arn,
                maximum_record_age_in_seconds=60,
                destination_config={"on_failure": {"destination": dest_arn}},
            )
        ],
    )
    # 60 s is AWS's smallest maximum age: the failing record is retried until it is that old.
    run_daemon(config)
    wait_until(lambda: recorder.events_for(arn), timeout=10)
    messages = wait_until(
        lambda: sqs.receive_message(QueueUrl=dest_url, WaitTimeSeconds=1).get("Messages"),
        timeout=90,
    )
    document = json.loads(messages[0]["Body"])
    assert document["requestContext"]["condition"] == "RecordAgeExceeded"
    assert "responseContext" not in document
    assert document["requestContext"]["approximateInvokeCount"] >= 1


def test_sigkill_and_restart_resumes_after_the_checkpoint_with_no_gap(
    endpoint, kinesis, unique, tmp_path
):  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys

    from conftest import HANDLERS, free_port, wait_for_http

    name = f"kill-{unique}"
    arn = make_stream(kinesis, name)
    sent = [f"r{i}" for i in range(300)]
    put(kinesis, name, [("k", d) for d in sent])
    record_path = tmp_path / "handled.txt"
    port = free_port()
    config = tmp_path / "esm.toml"
    config.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
[state]
path = "{tmp_path / "state.sqlite3"}"
[functions.w]
handler = "recorder.stream_write_to_file"
code_path = "{HANDLERS}"
environment = {{ RECORD_PATH = "{record_path}", HANDLER_SLEEP = "0.05" }}
[[mappings]]
name = "kill"
function = "w"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
"""
    )

    def handled() -> list[str]:
        return record_path.read_text().split() if record_path.exists() else []

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    first = start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        wait_until(lambda: len(handled()) >= 100, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    before_restart = handled()
    second = start()
    try:
        wait_until(lambda: set(handled()) == set(sent), timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    everything = handled()
    assert second.returncode == 0
    # Nothing skipped, and the restart did not begin from the start of the stream.
    assert set(everything) == set(sent)
    replayed = len(everything) - len(set(everything))
    assert replayed < len(before_restart)


def test_child_shards_start_after_the_parent_is_finished(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"split-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [(f"p{i}", f"parent-{i}") for i in range(50)])
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]
    middle = str(
        (
            int(shard["HashKeyRange"]["StartingHashKey"])
            + int(shard["HashKeyRange"]["EndingHashKey"])
        )
        // 2
    )
    kinesis.split_shard(StreamName=name, ShardToSplit=shard["ShardId"], NewStartingHashKey=middle)
    put(kinesis, name, [(f"c{i}", f"child-{i}") for i in range(50)])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.record"}},
        [stream_mapping(arn, batch_size=7)],
    )
    run_daemon(config)
    wait_until(lambda: len(datas(arn)) >= 100, timeout=60)
    seen = datas(arn)
    assert sorted(seen) == sorted(
        [f"parent-{i}" for i in range(50)] + [f"child-{i}" for i in range(50)]
    )
    last_parent = max(i for i, d in enumerate(seen) if d.startswith("parent"))
    first_child = min(i for i, d in enumerate(seen) if d.startswith("child"))
    assert last_parent < first_child
