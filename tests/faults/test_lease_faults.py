"""A lone fleet worker cut off from its lease table (and the stream) by a network fault.

Through the fault proxy: while every call fails, the worker cannot renew its lease, so once
`failover_time` has passed it gives the lease up (another worker may have taken it) and
invokes nothing more. When the network is back and nobody took the lease, the table still
names this worker: it takes the lease back and reads on from the stored checkpoint, as
Lambda would keep reading the shard (issue #15: before, the shard stayed unread for good).
"""

from __future__ import annotations

import asyncio
import re
import time
from urllib.parse import urlparse

import boto3
import pytest
from conftest import HANDLERS, wait_until
from fault_proxy import FaultProxy

from esm.config import parse_config


@pytest.fixture
def proxy(endpoint: str):  # type: ignore[no-untyped-def]
    upstream = urlparse(endpoint)
    p = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80, seed=3).start()
    yield p
    p.stop()


def metric(daemon, name: str) -> float:  # type: ignore[no-untyped-def]
    found = re.search(rf'^{name}\{{mapping="k"\}} ([0-9.e+]+)$', daemon.get("/metrics")[1], re.M)
    return float(found.group(1)) if found else 0.0


def test_a_lone_worker_cut_off_past_failover_time_takes_its_lease_back(
    endpoint, proxy, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    name = f"cut-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]

    def put(datas: list[str]) -> None:
        kinesis.put_records(
            StreamName=name, Records=[{"PartitionKey": d, "Data": d.encode()} for d in datas]
        )

    record_path = tmp_path / "handled.txt"

    def handled() -> list[str]:
        return record_path.read_text().split() if record_path.exists() else []

    table = f"leases-{unique}"
    config = parse_config(
        {
            "daemon": {"endpoint_url": proxy.url, "http_address": "127.0.0.1:0"},
            "state": {
                "backend": "dynamodb",
                "table": table,
                "create_table": True,
                "lease_renewal_interval": 0.5,
                "failover_time": 2,
            },
            "functions": {
                "w": {
                    "handler": "fault_handlers.write_ids",
                    "code_path": str(HANDLERS),
                    "environment": {"RECORD_PATH": str(record_path)},
                }
            },
            "mappings": [
                {
                    "name": "k",
                    "function": "w",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 10,
                }
            ],
        }
    )
    before = [f"a{i}" for i in range(20)]
    put(before)
    daemon = run_daemon(config)
    wait_until(lambda: set(before) <= set(handled()), timeout=30)

    proxy.mode = "reset"
    wait_until(lambda: metric(daemon, "esm_leases_lost_total") >= 1, timeout=30)
    assert metric(daemon, "esm_leases_held") == 0
    proxy.mode = "pass"

    after = [f"b{i}" for i in range(20)]
    put(after)
    wait_until(lambda: set(after) <= set(handled()), timeout=30)
    assert metric(daemon, "esm_leases_held") == 1
    items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    assert [i.get("leaseOwner", {}).get("S") for i in items] == [daemon.daemon._store.worker_id]
    # Read on from the stored checkpoint: in order, and nothing of `after` twice.
    seen = handled()
    assert [d for d in seen if d.startswith("b")] == after


class LeaseTableCut(FaultProxy):
    """Fails only the lease table's calls (DynamoDB's JSON target) while `cut` is set: the
    stream and the function stay reachable."""

    cut = False
    hold = False
    """Lease table calls get no answer at all (a black hole) while set."""
    refused = 0

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        if b"DynamoDB_20120810." in request.partition(b"\r\n\r\n")[0]:
            while self.hold:
                await asyncio.sleep(0.05)
            if self.cut:
                self.refused += 1
                writer.transport.abort()
                return False
        return await super()._answer(request, writer)


@pytest.fixture
def lease_table_cut(endpoint: str):  # type: ignore[no-untyped-def]
    """Set up before `run_daemon`, so torn down after the daemon stopped."""
    upstream = urlparse(endpoint)
    p = LeaseTableCut(upstream.hostname or "127.0.0.1", upstream.port or 80).start()
    yield p
    p.stop()


def test_a_worker_cut_off_from_its_lease_table_stops_invoking_then_reads_on(
    endpoint, lease_table_cut, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """Renewals and checkpoints fail while the stream is still readable: once
    `failover_time` has passed at the latest (a checkpoint that cannot be written stops the
    shard sooner) nothing more is invoked, as another worker may have the lease; when the
    table is back, nobody took the lease, so the worker takes it back and every record is
    handled, in order (those after the last checkpoint written again)."""
    proxy = lease_table_cut
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"tcut-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    sent = [f"r{i}" for i in range(600)]
    for start in range(0, len(sent), 500):
        kinesis.put_records(
            StreamName=name,
            Records=[{"PartitionKey": d, "Data": d.encode()} for d in sent[start : start + 500]],
        )
    record_path = tmp_path / "handled.txt"

    def handled() -> list[str]:
        return record_path.read_text().split() if record_path.exists() else []

    config = parse_config(
        {
            "daemon": {"endpoint_url": proxy.url, "http_address": "127.0.0.1:0"},
            "state": {
                "backend": "dynamodb",
                "table": f"leases-{unique}",
                "create_table": True,
                "lease_renewal_interval": 0.5,
                "failover_time": 2,
            },
            "functions": {
                "w": {
                    "handler": "fault_handlers.write_ids",
                    "code_path": str(HANDLERS),
                    "environment": {
                        "RECORD_PATH": str(record_path),
                        "HANDLER_SLEEP": "0.05",
                    },
                }
            },
            "mappings": [
                {
                    "name": "k",
                    "function": "w",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 5,
                }
            ],
        }
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(handled()) >= 20, timeout=30, interval=0.01)
    proxy.cut = True
    at_cut = len(handled())
    wait_until(lambda: metric(daemon, "esm_leases_lost_total") >= 1, timeout=30)
    at_loss = len(handled())
    refused = proxy.refused
    # Several more renewals and listings refused: nothing but the batch that was in
    # flight when the lease was given up may finish meanwhile.
    wait_until(lambda: proxy.refused >= refused + 6, timeout=30)
    assert len(handled()) - at_loss <= 5
    assert len(handled()) < len(sent)
    proxy.cut = False
    wait_until(lambda: set(sent) <= set(handled()), timeout=60)
    assert metric(daemon, "esm_leases_held") == 1
    first_seen = list(dict.fromkeys(handled()))
    assert first_seen == sent  # in order; a replay repeats, never skips
    print(
        "lease table cut:",
        {"handled_during_lease": at_loss - at_cut, "replayed": len(handled()) - len(sent)},
    )


def test_a_graceful_stop_with_the_lease_table_unanswering_ends_within_its_bounds(
    endpoint, lease_table_cut, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """SIGTERM while the lease table answers nothing (its calls hang until the client's
    read timeout, 40 s, each retried): the checkpoint being written is given up once the
    lease may have expired (`failover_time`) and the releases after `RELEASE_TIMEOUT`, so the
    stop ends; what was not checkpointed is delivered again after a restart."""
    proxy = lease_table_cut
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"hold-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    sent = [f"h{i}" for i in range(400)]
    kinesis.put_records(
        StreamName=name, Records=[{"PartitionKey": d, "Data": d.encode()} for d in sent]
    )
    record_path = tmp_path / "handled.txt"

    def handled() -> list[str]:
        return record_path.read_text().split() if record_path.exists() else []

    config = parse_config(
        {
            "daemon": {"endpoint_url": proxy.url, "http_address": "127.0.0.1:0"},
            "state": {
                "backend": "dynamodb",
                "table": f"leases-{unique}",
                "create_table": True,
                "lease_renewal_interval": 0.5,
                "failover_time": 3,
            },
            "functions": {
                "w": {
                    "handler": "fault_handlers.write_ids",
                    "code_path": str(HANDLERS),
                    "environment": {"RECORD_PATH": str(record_path), "HANDLER_SLEEP": "0.05"},
                }
            },
            "mappings": [
                {
                    "name": "k",
                    "function": "w",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 5,
                }
            ],
        }
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(handled()) >= 20, timeout=30, interval=0.01)
    proxy.hold = True
    at_hold = len(handled())
    wait_until(lambda: len(handled()) > at_hold, timeout=30, interval=0.01)  # a batch more
    started = time.monotonic()
    try:
        daemon.stop(timeout=120)
    finally:
        stopped_after = time.monotonic() - started
        proxy.hold = False
    print("stop with the lease table unanswering:", round(stopped_after, 1), "s")
    # failover_time (3 s) for the checkpoint, RELEASE_TIMEOUT (10 s) for the release, margin.
    assert stopped_after < 30
