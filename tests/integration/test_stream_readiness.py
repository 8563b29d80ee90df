"""/readyz of a stream mapping means positioned: every shard poller has its first iterator,
so a record put right after /readyz answered 200 is delivered, even from LATEST."""

from __future__ import annotations

import boto3
import pytest
from conftest import wait_until
from test_kinesis_mapping import config_with_state, datas, make_stream, put, stream_mapping


@pytest.fixture
def kinesis(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


@pytest.mark.parametrize("starting_position", ["LATEST", "TRIM_HORIZON"])
def test_records_put_right_after_readyz_are_all_delivered(
    endpoint, kinesis, unique, tmp_path, run_daemon, starting_position
):  # type: ignore[no-untyped-def]
    name = f"ready-{starting_position.lower()}-{unique}"
    arn = make_stream(kinesis, name, shards=4)
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.record"}},
        [stream_mapping(arn, starting_position=starting_position)],
    )
    daemon = run_daemon(config)
    wait_until(lambda: daemon.get("/readyz")[0] == 200, interval=0.005)
    items = [(f"key-{i}", f"after-ready-{i}") for i in range(7)]
    put(kinesis, name, items)
    wait_until(lambda: len(datas(arn)) >= 7)
    assert sorted(datas(arn)) == sorted(d for _, d in items)
    _, metrics = daemon.get("/metrics")
    assert f'esm_mapping_ready{{mapping="k-{name}"}} 1.0' in metrics
