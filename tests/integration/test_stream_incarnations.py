"""A stream deleted and created again under the same name (against moto): its shards have
the old ids and its sequence numbers start over, so an old checkpoint must not be resumed."""

from __future__ import annotations

import boto3
import pytest
import recorder
from conftest import make_table_with_stream, stored_checkpoint, wait_until
from structlog.testing import capture_logs
from test_kinesis_mapping import config_with_state, datas, make_stream, put, stream_mapping


@pytest.fixture
def kinesis(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


def test_a_kinesis_stream_created_again_has_every_new_record_handled(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"again-{unique}"
    arn = make_stream(kinesis, name)
    old = put(kinesis, name, [(f"k{i}", f"old-{i}") for i in range(10)])
    config = config_with_state(
        endpoint, tmp_path, {"f": {"handler": "recorder.record"}}, [stream_mapping(arn)]
    )
    daemon = run_daemon(config)
    wait_until(lambda: stored_checkpoint(tmp_path / "state.sqlite3") == old[-1])
    daemon.stop()

    kinesis.delete_stream(StreamName=name)
    make_stream(kinesis, name)
    new = put(kinesis, name, [(f"k{i}", f"new-{i}") for i in range(7)])
    assert int(new[-1]) <= int(
        old[-1]
    )  # moto restarts sequence numbers: the old checkpoint would skip all 7

    with capture_logs() as logs:
        daemon = run_daemon(config)
        wait_until(lambda: len([d for d in datas(arn) if d.startswith("new-")]) >= 7)
        wait_until(lambda: stored_checkpoint(tmp_path / "state.sqlite3") == new[-1])
        daemon.stop()
    assert sorted(d for d in datas(arn) if d.startswith("new-")) == sorted(
        f"new-{i}" for i in range(7)
    )
    warnings = [e for e in logs if e["event"] == "shard.new_incarnation"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert (warnings[0]["mapping"], warnings[0]["shard"]) == (f"k-{name}", "shardId-000000000000")


def test_a_dynamodb_table_created_again_has_every_new_record_handled(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    table = f"again-{unique}"

    def mapping(stream_arn: str) -> dict:  # type: ignore[type-arg]
        return {
            "name": f"d-{unique}",
            "function": "f",
            "event_source_arn": stream_arn,
            "starting_position": "TRIM_HORIZON",
        }

    def records(stream_arn: str) -> list[str]:
        return [
            r["dynamodb"]["Keys"]["id"]["S"]
            for e in recorder.events_for(stream_arn)
            for r in e["Records"]
        ]

    first = make_table_with_stream(ddb, table)
    for i in range(10):
        ddb.put_item(TableName=table, Item={"id": {"S": f"old-{i}"}})
    daemon = run_daemon(
        config_with_state(
            endpoint, tmp_path, {"f": {"handler": "recorder.record"}}, [mapping(first)]
        )
    )
    wait_until(lambda: len(records(first)) >= 10)
    wait_until(lambda: stored_checkpoint(tmp_path / "state.sqlite3") is not None)
    daemon.stop()

    ddb.delete_table(TableName=table)
    second = make_table_with_stream(ddb, table)
    assert second != first
    for i in range(7):
        ddb.put_item(TableName=table, Item={"id": {"S": f"new-{i}"}})
    with capture_logs() as logs:
        daemon = run_daemon(
            config_with_state(
                endpoint, tmp_path, {"f": {"handler": "recorder.record"}}, [mapping(second)]
            )
        )
        wait_until(lambda: len(records(second)) >= 7)
        daemon.stop()
    assert sorted(records(second)) == sorted(f"new-{i}" for i in range(7))
    warnings = [e for e in logs if e["event"] == "shard.new_incarnation"]
    assert [(w["mapping"], w["log_level"]) for w in warnings] == [(f"d-{unique}", "warning")]


def test_a_stream_replaced_while_esm_runs_is_read_from_its_start(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"swap-{unique}"
    arn = make_stream(kinesis, name)
    old = put(kinesis, name, [(f"k{i}", f"old-{i}") for i in range(10)])
    config = config_with_state(
        endpoint, tmp_path, {"f": {"handler": "recorder.record"}}, [stream_mapping(arn)]
    )
    with capture_logs() as logs:
        daemon = run_daemon(config)
        wait_until(lambda: stored_checkpoint(tmp_path / "state.sqlite3") == old[-1])
        kinesis.delete_stream(StreamName=name)
        make_stream(kinesis, name)
        put(kinesis, name, [(f"k{i}", f"new-{i}") for i in range(7)])
        # The next shard listing (every 10 s) sees the new incarnation.
        wait_until(lambda: len([d for d in datas(arn) if d.startswith("new-")]) >= 7, timeout=40)
        daemon.stop()
    assert sorted(d for d in datas(arn) if d.startswith("new-")) == sorted(
        f"new-{i}" for i in range(7)
    )
    assert [e["shard"] for e in logs if e["event"] == "shard.new_incarnation"] == [
        "shardId-000000000000"
    ]
