"""A lease given up locally while the lease table still names this worker (issue #15).

Against moto's DynamoDB. The fencing check gives a lease up once it was not renewed for
`failover_time` (no renewal loop runs here, so that is a real stall of this worker's
renewals); if no other worker took it meanwhile, the next balancing cycle takes it back
with a renewal conditional on owner and counter, from the stored checkpoint. A lease that
another worker took, or takes between the scan and the retake, stays theirs.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import anyio
import pytest
from structlog.testing import capture_logs

from esm.aws import AwsClients
from esm.config import DaemonConfig
from esm.observability import MappingMetrics, Metrics
from esm.sources.streams.leases import LeaseCoordinator
from esm.state.base import Checkpoint, LeaseLost
from esm.state.dynamodb import DynamoDBCheckpointStore, Lease, LeaseTable, LeaseTimings

MAPPING = "orders"
SHARD = "shardId-000000000000"
FAILOVER = 1.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Fixture:
    table: LeaseTable
    store: DynamoDBCheckpointStore
    coordinator: LeaseCoordinator
    changes: list[None]
    metrics: Metrics

    def lost(self) -> float:
        value = self.metrics.registry.get_sample_value(
            "esm_leases_lost_total", {"mapping": MAPPING}
        )
        return value or 0.0


@pytest.fixture
async def fleet(endpoint: str) -> AsyncIterator[Fixture]:
    """One unowned lease checkpointed at 30, and worker-a's coordinator."""
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
        table = LeaseTable(aws, f"leases-{uuid.uuid4().hex[:8]}")
        await table.ensure(create=True)
        await table.create(Lease(MAPPING, SHARD, None, 0, checkpoint="30"))
        store = DynamoDBCheckpointStore(table, "worker-a", LeaseTimings(0.2, FAILOVER, 2))
        changes: list[None] = []
        metrics = Metrics()
        coordinator = LeaseCoordinator(
            store,
            MAPPING,
            MappingMetrics(metrics, MAPPING),
            initial_checkpoint="TRIM_HORIZON",
            on_change=lambda: changes.append(None),
            stopping=anyio.Event(),
        )
        yield Fixture(table, store, coordinator, changes, metrics)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


async def take_then_fence(f: Fixture) -> Lease:
    """worker-a takes the lease, then its renewals stall past failover_time: the check
    made before each invocation gives the lease up. Returns the lease as stored then."""
    await f.coordinator._balance_once()
    held = f.coordinator.held()[SHARD]
    lost, changes = f.lost(), len(f.changes)
    await until(lambda: not f.store.still_held(MAPPING, SHARD))
    assert held.lost.is_set() and f.coordinator.held() == {}
    # Counted in esm_leases_lost_total like the coordinator's own losses, and the mapping
    # is told (before, a loss found by the stall check was not counted).
    assert f.lost() == lost + 1 and len(f.changes) == changes + 1
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and stored.owner == "worker-a"
    return stored


@pytest.mark.anyio
async def test_a_lease_fenced_after_a_stall_is_taken_back_from_its_checkpoint(
    fleet: Fixture,
) -> None:
    """Before the fix the lease stayed named after worker-a and unread for good: its take
    rule skipped leases it owns, and nobody else was there to take it."""
    f = fleet
    before = await take_then_fence(f)
    lost = f.store.held.get(before.key)
    changes = len(f.changes)
    with capture_logs() as logs:
        await f.coordinator._balance_once()
    again = f.coordinator.held().get(SHARD)
    assert again is not None and again is not lost and not again.lost.is_set()
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None
    assert (stored.owner, stored.counter, stored.checkpoint) == (
        "worker-a",
        before.counter + 1,
        "30",
    )
    assert again.lease == stored
    assert f.store.still_held(MAPPING, SHARD)
    assert len(f.changes) > changes  # the mapping is told to start the shard again
    retaken = [e for e in logs if e["event"] == "lease.retaken"]
    assert [(e["shard"], e["checkpoint"]) for e in retaken] == [(SHARD, "30")]


@pytest.mark.anyio
async def test_a_lease_another_worker_took_during_the_stall_stays_theirs(
    fleet: Fixture,
) -> None:
    f = fleet
    stale = await take_then_fence(f)
    assert await f.table.take(stale, "worker-b") is not None
    await f.coordinator._balance_once()
    assert f.coordinator.held() == {}
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and stored.owner == "worker-b"


@pytest.mark.anyio
async def test_a_take_between_the_scan_and_the_retake_wins(fleet: Fixture) -> None:
    """The retake is conditional on the counter scanned: another worker's take since then
    (it saw the lease expired too) makes it fail, so only one of them reads the shard."""
    f = fleet
    await take_then_fence(f)
    scanned = await f.table.scan(MAPPING)
    assert await f.table.take(scanned[0], "worker-b") is not None
    assert not await f.coordinator._retake_own(scanned, {})
    assert f.coordinator.held() == {}
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and stored.owner == "worker-b"


@pytest.mark.anyio
async def test_a_finished_lease_is_not_taken_back(fleet: Fixture) -> None:
    """A lease checkpointed at SHARD_END whose release did not get through is done: it is
    not held again (its children have their own leases)."""
    f = fleet
    stale = await take_then_fence(f)
    assert await f.table.checkpoint(stale, "SHARD_END") is not None
    await f.coordinator._balance_once()
    assert f.coordinator.held() == {}


@pytest.mark.anyio
async def test_a_renewal_refused_after_its_unseen_success_is_taken_back(fleet: Fixture) -> None:
    """A renewal that reached the table but whose answer was lost (the retry then fails its
    condition on the counter) looks like a take by another worker; the table still names
    this worker, so the next cycle takes the lease back."""
    f = fleet
    await f.coordinator._balance_once()
    held = f.coordinator.held()[SHARD]
    assert await f.table.renew(held.lease) is not None  # the try whose answer was lost
    await f.coordinator._renew(held)
    assert held.lost.is_set() and f.coordinator.held() == {}
    await f.coordinator._balance_once()
    again = f.coordinator.held().get(SHARD)
    assert again is not None and not again.lost.is_set()
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and again.lease == stored and stored.owner == "worker-a"


@pytest.mark.anyio
async def test_a_poller_of_the_lost_lease_cannot_move_the_retaken_ones_checkpoint_back(
    fleet: Fixture,
) -> None:
    """After a stall and a retake, the poller of the lost lease (still finishing records
    it read before) writes its last checkpoint, 40, after the retaken lease's poller,
    restarted from 30, already wrote 50. Before the fix the store looked the lease up by
    shard, found the retaken one (same owner, fresh) and wrote 40 under it: the checkpoint
    moved back and a restart would deliver 41-50 again. Now the write is conditioned on
    the lease the poller started on, and refused."""
    f = fleet
    await f.coordinator._balance_once()
    first = f.coordinator.held()[SHARD]
    await until(lambda: not f.store.still_held(MAPPING, SHARD))  # the stall fence
    assert first.lost.is_set()
    await f.coordinator._balance_once()
    retaken = f.coordinator.held()[SHARD]
    assert retaken is not first and retaken.lease.owner == first.lease.owner == "worker-a"
    await f.store.put(MAPPING, SHARD, Checkpoint("50"), retaken)
    with pytest.raises(LeaseLost):
        await f.store.put(MAPPING, SHARD, Checkpoint("40"), first)
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and stored.checkpoint == "50"
    # The retaken lease is unharmed: still held, and its poller checkpoints on.
    assert f.store.still_held(MAPPING, SHARD) and not retaken.lost.is_set()
    await f.store.put(MAPPING, SHARD, Checkpoint("60"), retaken)
    stored = await f.table.get(MAPPING, SHARD)
    assert stored is not None and stored.checkpoint == "60"


@pytest.mark.anyio
async def test_each_fleet_poller_checkpoints_under_the_lease_it_started_on(endpoint: str) -> None:
    """The store's check only helps if the poller hands it its lease: a mapping's poller
    carries the `HeldLease` it was started for, and its checkpoints are written under it
    (against moto's Kinesis and DynamoDB, a real poller reading three records)."""
    import boto3
    from conftest import HANDLERS

    from esm.config import parse_config
    from esm.idle_pacing import IdleReadPacer
    from esm.invokers import create_functions
    from esm.sources.streams.config import StreamMappingConfig
    from esm.sources.streams.mapping import StreamMapping

    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"own-lease-{uuid.uuid4().hex[:8]}"
    kinesis.create_stream(StreamName=name, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    last = ""
    for i in range(3):
        last = kinesis.put_record(StreamName=name, Data=b"r%d" % i, PartitionKey="k")[
            "SequenceNumber"
        ]
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
            aws, f"leases-{name}", create=True, worker_id="worker-a"
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
            await coordinator.sync_shards(await mapping.ctx.source.list_shards())
            await coordinator._balance_once()
            held = coordinator.held()[SHARD]
            async with anyio.create_task_group() as tg:
                await mapping._refresh(tg)
                poller = mapping.pollers[SHARD]
                assert poller.ctx.lease is held
                with anyio.fail_after(30):
                    while (await store.table.get(MAPPING, SHARD)).checkpoint != last:  # type: ignore[union-attr]
                        await anyio.sleep(0.05)
                mapping.stop()
        finally:
            await mapping.ctx.source.aclose()
