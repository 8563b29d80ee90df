"""Resources that change under a running daemon: a deleted queue or stream turns only its
own mapping not-ready (and back when it returns); a shard split mid-run loses nothing."""

from __future__ import annotations

import json
import sqlite3

import boto3
import recorder
from conftest import wait_until
from test_kinesis_mapping import config_with_state, datas, make_stream, put, stream_mapping
from test_sqs_mapping import make_queue, mapping


def not_ready(daemon) -> list[str]:  # type: ignore[no-untyped-def]
    return json.loads(daemon.get("/readyz")[1])["not_ready"]  # type: ignore[no-any-return]


def test_deleted_queue_and_stream_turn_only_their_mapping_not_ready(
    endpoint, sqs, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    doomed_url, doomed_arn = make_queue(sqs, f"doomed-{unique}", VisibilityTimeout="3")
    steady_url, steady_arn = make_queue(sqs, f"steady-{unique}", VisibilityTimeout="3")
    stream_arn = make_stream(kinesis, f"doomed-{unique}")
    functions = {"f": {"handler": "recorder.record", "timeout": 1}}
    mappings = [mapping(doomed_arn), mapping(steady_arn), stream_mapping(stream_arn)]
    daemon = run_daemon(config_with_state(endpoint, tmp_path, functions, mappings))
    wait_until(lambda: not not_ready(daemon) and daemon.get("/readyz")[0] == 200)

    sqs.delete_queue(QueueUrl=doomed_url)
    kinesis.delete_stream(StreamName=f"doomed-{unique}")
    expected = {f"m-doomed-{unique}", f"k-doomed-{unique}"}
    wait_until(lambda: set(not_ready(daemon)) == expected, timeout=90)
    _, metrics = daemon.get("/metrics")
    assert f'esm_mapping_ready{{mapping="m-doomed-{unique}"}} 0.0' in metrics
    assert f'esm_mapping_ready{{mapping="m-steady-{unique}"}} 1.0' in metrics

    # The other mapping keeps working meanwhile (seen at least once: its five receivers may
    # each be handed the message by moto, as SQS's at-least-once allows).
    sqs.send_message(QueueUrl=steady_url, MessageBody="still-flowing")
    wait_until(lambda: set(recorder.bodies_for(steady_arn)) == {"still-flowing"})

    # The queue comes back: its mapping recovers by itself.
    sqs.create_queue(QueueName=f"doomed-{unique}", Attributes={"VisibilityTimeout": "3"})
    sqs.send_message(QueueUrl=doomed_url, MessageBody="after-recreate")
    wait_until(lambda: "after-recreate" in recorder.bodies_for(doomed_arn), timeout=60)
    wait_until(lambda: f"m-doomed-{unique}" not in not_ready(daemon), timeout=30)


def test_shard_split_while_running_reads_parent_then_children(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"livesplit-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [(f"p{i}", f"before-{i}") for i in range(30)])
    daemon = run_daemon(
        config_with_state(
            endpoint,
            tmp_path,
            {"f": {"handler": "recorder.record"}},
            [stream_mapping(arn, batch_size=5)],
        )
    )
    wait_until(lambda: len(datas(arn)) >= 30)
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]
    low, high = (
        int(shard["HashKeyRange"]["StartingHashKey"]),
        int(shard["HashKeyRange"]["EndingHashKey"]),
    )
    kinesis.split_shard(
        StreamName=name, ShardToSplit=shard["ShardId"], NewStartingHashKey=str((low + high) // 2)
    )
    put(kinesis, name, [(f"c{i}", f"after-{i}") for i in range(40)])
    wait_until(lambda: len(set(datas(arn))) >= 70, timeout=60)
    seen = datas(arn)
    assert set(seen) == {f"before-{i}" for i in range(30)} | {f"after-{i}" for i in range(40)}
    # The parent, closed under its running poller, reaches its end and is checkpointed
    # there; then both children get pollers. (moto keeps routing writes to the closed
    # parent, so which shard served the later records is moto's choice, not checked.)
    wait_until(
        lambda: f'esm_pollers{{mapping="k-{name}"}} 2.0' in daemon.get("/metrics")[1], timeout=60
    )
    with sqlite3.connect(tmp_path / "state.sqlite3") as db:
        ended = db.execute("SELECT shard_id FROM checkpoints WHERE shard_ended = 1").fetchall()
    assert ended == [(shard["ShardId"],)]
