"""A stream deleted and created again under the same name (against moto): its shards have
the old ids and its sequence numbers start over, so an old checkpoint must not be resumed."""

from __future__ import annotations

import sqlite3

import boto3
import pytest
import recorder
from conftest import HANDLERS, make_table_with_stream, stored_checkpoint, wait_until
from structlog.testing import capture_logs
from test_kinesis_mapping import config_with_state, datas, make_stream, put, stream_mapping

from esm.config import parse_config


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


def _parent_ended(backend: str, tmp_path, endpoint: str, table: str, shard: str) -> bool:  # type: ignore[no-untyped-def]
    """Is the parent's SHARD_END stored (sqlite row, or lease checkpoint)?"""
    if backend == "dynamodb":
        ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
        try:
            items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
        except ddb.exceptions.ResourceNotFoundException:
            return False
        return any(
            i["shardId"]["S"] == shard and i["checkpoint"]["S"] == "SHARD_END" for i in items
        )
    path = tmp_path / "state.sqlite3"
    if not path.exists():
        return False
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute(
                "SELECT shard_ended FROM checkpoints WHERE shard_id = ?", (shard,)
            ).fetchall()
        except sqlite3.OperationalError:
            return False
    return bool(rows and rows[0][0])


@pytest.mark.parametrize("backend", ["sqlite", "dynamodb"])
def test_a_shard_that_ended_on_the_deleted_stream_is_read_on_the_new_one(
    backend, endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """Issue #15.2: the old stream's shard 0 was split, so its poller ended at SHARD_END;
    the stream is then created again, and its new shard 0 has the same id. The ended poller
    was kept and blocked that id for good (its stop was asked at every listing), so no new
    record was read; in a fleet the worker even held and renewed the reset lease unread, and
    the leases of the deleted stream's children too."""
    name = f"ended-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [(f"p{i}", f"parent-{i}") for i in range(5)])
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]
    low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    kinesis.split_shard(
        StreamName=name, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )
    put(kinesis, name, [(f"c{i}", f"child-{i}") for i in range(5)])
    table = f"leases-{unique}"
    state: dict[str, object] = (
        {
            "backend": "dynamodb",
            "table": table,
            "create_table": True,
            "lease_renewal_interval": 0.5,
            "failover_time": 3,
        }
        if backend == "dynamodb"
        else {"path": str(tmp_path / "state.sqlite3")}
    )
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": state,
            "functions": {"f": {"handler": "recorder.record", "code_path": str(HANDLERS)}},
            "mappings": [stream_mapping(arn)],
        }
    )
    with capture_logs() as logs:
        daemon = run_daemon(config)
        wait_until(lambda: len(datas(arn)) >= 10, timeout=30)
        wait_until(
            lambda: _parent_ended(backend, tmp_path, endpoint, table, shard["ShardId"]),
            timeout=30,
        )
        kinesis.delete_stream(StreamName=name)
        make_stream(kinesis, name)
        put(kinesis, name, [(f"k{i}", f"new-{i}") for i in range(7)])
        # The next listing (a failing child's retry, or every 10 s) sees the new stream.
        wait_until(lambda: len([d for d in datas(arn) if d.startswith("new-")]) >= 7, timeout=40)
        if backend == "dynamodb":
            # The children's leases were of the deleted stream only: deleted, not held and
            # renewed for good without a poller (nor counted in the fleet's fair shares).
            ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
            wait_until(
                lambda: (
                    [
                        i["shardId"]["S"]
                        for i in ddb.scan(TableName=table, ConsistentRead=True)["Items"]
                    ]
                    == [shard["ShardId"]]
                ),
                timeout=30,
            )
            wait_until(
                lambda: 'esm_leases_held{mapping="k-' + name + '"} 1.0' in daemon.get("/metrics")[1]
            )
    assert sorted(d for d in datas(arn) if d.startswith("new-")) == [f"new-{i}" for i in range(7)]
    warnings = [e for e in logs if e["event"] == "shard.new_incarnation"]
    assert [w["shard"] for w in warnings] == [shard["ShardId"]]
