"""A stream created again, seen by the lease coordinator against moto's DynamoDB (issue #13.6).

The lease of a deleted stream's shard is reset to the mapping's starting position once, with
one `shard.new_incarnation` warning, whether this worker's balance loop takes the stale
lease before or after the shard refresh sees the new stream. The races are forced in order
here (scan, then take, then restart) rather than left to timing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import anyio
import boto3
import pytest
from conftest import HANDLERS
from structlog.testing import capture_logs

from esm.aws import AwsClients
from esm.config import DaemonConfig, parse_config
from esm.idle_pacing import IdleReadPacer
from esm.invokers import create_functions
from esm.observability import MappingMetrics, Metrics
from esm.sources.streams.config import StreamMappingConfig
from esm.sources.streams.leases import LeaseCoordinator
from esm.sources.streams.mapping import StreamMapping
from esm.sources.streams.poller import ShardPoller
from esm.sources.streams.records import Position, ShardInfo
from esm.state.base import Checkpoint
from esm.state.dynamodb import DynamoDBCheckpointStore, Lease, LeaseTable, LeaseTimings

MAPPING = "orders"
SHARD = "shardId-000000000000"
OLD = "created:1000.000"
NEW = "created:2000.000"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Fixture:
    table: LeaseTable
    store: DynamoDBCheckpointStore
    coordinator: LeaseCoordinator
    shards: list[ShardInfo]


@pytest.fixture
async def leases(endpoint: str) -> AsyncIterator[Fixture]:
    """A lease table holding the deleted stream's lease (checkpoint 30, nobody owns it, as
    after a graceful stop) and a coordinator of one worker; the stream now lists NEW."""
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
        table = LeaseTable(aws, f"leases-{uuid.uuid4().hex[:8]}")
        await table.ensure(create=True)
        await table.create(Lease(MAPPING, SHARD, None, 7, checkpoint="30", incarnation=OLD))
        store = DynamoDBCheckpointStore(table, "worker-a", LeaseTimings(0.5, 3.0, 2))
        coordinator = LeaseCoordinator(
            store,
            MAPPING,
            MappingMetrics(Metrics(), MAPPING),
            initial_checkpoint="TRIM_HORIZON",
            on_change=lambda: None,
            stopping=anyio.Event(),
        )
        yield Fixture(table, store, coordinator, [ShardInfo(SHARD, (), False, NEW)])


def incarnation_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "shard.new_incarnation"]


async def assert_reset_and_kept(f: Fixture) -> None:
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None
    assert (stored.checkpoint, stored.incarnation, stored.owner) == (
        "TRIM_HORIZON",
        NEW,
        "worker-a",
    )
    held = f.coordinator.held()[SHARD]
    assert not held.lost.is_set() and held.lease == stored


@pytest.mark.anyio
async def test_a_lease_taken_after_the_refresh_scanned_is_reset_once_and_kept(
    leases: Fixture,
) -> None:
    """The flaky fleet test's order: the refresh scans, the balance loop takes the stale
    lease (counter +1), then the refresh restarts what it scanned. The unowned restart
    fails on the counter; the lease now held here is restarted in place instead of being
    started at the old checkpoint's incarnation and dropped at the next refresh."""
    f = leases
    with capture_logs() as logs:
        scanned = await f.table.scan(MAPPING)
        await f.coordinator._balance_once()
        assert f.coordinator.held()[SHARD].lease.checkpoint == "30"
        assert await f.coordinator._restart_new_incarnations(f.shards, scanned)
        # The refresh that the take triggers finds nothing left to reset.
        await f.coordinator.sync_shards(f.shards)
    warnings = incarnation_warnings(logs)
    assert len(warnings) == 1, warnings
    assert warnings[0]["shard"] == SHARD and warnings[0]["log_level"] == "warning"
    assert (warnings[0]["stored"], warnings[0]["current"]) == (OLD, NEW)
    assert not [e for e in logs if e["event"] == "lease.lost"]
    await assert_reset_and_kept(f)


@pytest.mark.anyio
async def test_a_lease_taken_before_the_refresh_is_reset_in_place(leases: Fixture) -> None:
    """The balance loop wins outright: the refresh's own scan sees the lease held here. It
    is reset and kept (before the fix: reset unowned and lost, so taken again later)."""
    f = leases
    with capture_logs() as logs:
        await f.coordinator._balance_once()
        await f.coordinator.sync_shards(f.shards)
        await f.coordinator.sync_shards(f.shards)
    assert len(incarnation_warnings(logs)) == 1
    assert not [e for e in logs if e["event"] == "lease.lost"]
    await assert_reset_and_kept(f)


@pytest.mark.anyio
async def test_the_refresh_first_resets_the_unowned_lease_and_the_stale_take_fails(
    leases: Fixture,
) -> None:
    """The refresh wins: the lease is reset unowned; a take of what the balance loop had
    scanned before fails on the counter, and the next balance cycle takes the reset lease."""
    f = leases
    with capture_logs() as logs:
        stale = await f.table.scan(MAPPING)
        await f.coordinator.sync_shards(f.shards)
        assert await f.table.take(stale[0], "worker-a") is None
        await f.coordinator._balance_once()
        await f.coordinator.sync_shards(f.shards)
    assert len(incarnation_warnings(logs)) == 1
    await assert_reset_and_kept(f)


@pytest.mark.anyio
async def test_a_checkpoint_of_the_deleted_stream_does_not_overwrite_the_reset_lease(
    leases: Fixture,
) -> None:
    """A poller of the old stream still stopping checkpoints its old position after the
    lease was reset: that position is not written (it would be resumed on the new stream);
    the new stream's own checkpoints are."""
    f = leases
    await f.coordinator._balance_once()
    await f.coordinator.sync_shards(f.shards)
    await f.store.put(MAPPING, SHARD, Checkpoint("35", incarnation=OLD))
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and (stored.checkpoint, stored.incarnation) == ("TRIM_HORIZON", NEW)
    await f.store.put(MAPPING, SHARD, Checkpoint("3", incarnation=NEW))
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and (stored.checkpoint, stored.incarnation) == ("3", NEW)


@pytest.mark.anyio
async def test_a_poller_of_the_deleted_stream_ending_after_the_reset_keeps_the_lease(
    endpoint: str,
) -> None:
    """Issue #15.2, forced in order against moto's Kinesis and DynamoDB: the old stream's
    shard 0 was closed (split); the stream is created again and the refresh resets the lease
    held here onto the new stream; only then does the old poller reach its SHARD_END. That
    SHARD_END is of the deleted stream and is not written, so the reset lease is kept (the
    old code released it as if the shard were done) and the poller is dropped, so the next
    refresh starts the new shard 0 (the old code kept it and never started that shard)."""
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"race-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    shard = kinesis.list_shards(StreamName=name)["Shards"][0]
    low, high = (int(shard["HashKeyRange"][k]) for k in ("StartingHashKey", "EndingHashKey"))
    kinesis.split_shard(
        StreamName=name, ShardToSplit=SHARD, NewStartingHashKey=str((low + high) // 2)
    )
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint},
            "state": {"backend": "dynamodb", "table": f"leases-{name}", "create_table": True},
            "functions": {"f": {"handler": "recorder.record", "code_path": str(HANDLERS)}},
            "mappings": [
                {
                    "name": MAPPING,
                    "function": "f",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                }
            ],
        }
    )
    metrics = Metrics()
    async with AwsClients(config.daemon) as aws:
        store = await DynamoDBCheckpointStore.open(
            aws,
            f"leases-{name}",
            create=True,
            timings=LeaseTimings(0.5, 3.0, 2),
            worker_id="worker-a",
        )
        mapping_config = config.mappings[0]
        assert isinstance(mapping_config, StreamMappingConfig)
        mapping = StreamMapping(
            mapping_config,
            create_functions(config.functions, metrics, config.daemon)["f"],
            aws,
            MappingMetrics(metrics, MAPPING),
            None,
            store,
            IdleReadPacer(config.daemon.idle_shard_reads_per_second),
        )
        coordinator = mapping.leases
        assert coordinator is not None
        try:
            old_shards = await mapping.ctx.source.list_shards()
            await coordinator.sync_shards(old_shards)
            await coordinator._balance_once()
            held = coordinator.held()[SHARD]

            kinesis.delete_stream(StreamName=name)
            kinesis.create_stream(StreamName=name, ShardCount=1)
            new_shards = await mapping.ctx.source.list_shards()
            await coordinator.sync_shards(new_shards)
            assert held.lease.incarnation == new_shards[0].incarnation != old_shards[0].incarnation

            old = next(s for s in old_shards if s.shard_id == SHARD)
            assert old.closed
            poller = ShardPoller(
                replace(mapping.ctx, stopping=anyio.Event()),
                old,
                Position("TRIM_HORIZON"),
                still_owned=mapping._lease_check(held),
            )
            mapping.pollers[SHARD] = poller
            with anyio.fail_after(30):
                await mapping._run_poller(poller, held)
            assert poller.ended  # it read the (old) shard to its end
            assert SHARD not in mapping.pollers
            stored = await store.table.get(MAPPING, SHARD)
            assert stored is not None
            assert (stored.owner, stored.checkpoint, stored.incarnation) == (
                "worker-a",
                "TRIM_HORIZON",
                new_shards[0].incarnation,
            )
            assert coordinator.held()[SHARD] is held and not held.lost.is_set()
        finally:
            await mapping.ctx.source.aclose()
