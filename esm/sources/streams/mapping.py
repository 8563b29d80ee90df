"""A stream mapping at run time: discovers shards and runs one poller per shard.

Shards are listed at start and every `SHARD_REFRESH_SECONDS` (and at once when a shard
ends). Resharding follows Lambda: a child shard starts only after each of its parents is
checkpointed at SHARD_END (a parent no longer listed has expired and does not block); a
child starts at TRIM_HORIZON so nothing written to it is skipped. A shard with a stored
checkpoint resumes right after it, unless the checkpoint was taken on another incarnation of
the stream (deleted and created again: same shard ids, sequence numbers start over); then it
starts at `starting_position` with one warning.

Every poller has its own `stopping` event, so one shard can stop alone. The mapping is ready
once its shards are listed and every poller holds its first iterator (`/readyz`).

With the DynamoDB store (fleet mode, README "Running a fleet") a `LeaseCoordinator` decides
which shards this worker reads: pollers run only for leases held here, stopped at once when
the lease is lost or (checked before each invocation) not renewed within `failover_time`;
their checkpoints are refused. A graceful stop releases every lease after the pollers finished.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from esm.aws import AwsClients
from esm.destinations import create_destination
from esm.filtering import FilterSet
from esm.idle_pacing import IdleReadPacer
from esm.invokers import Function
from esm.observability import MappingMetrics, get_logger
from esm.sources.base import MappingRuntime, RuntimeResources
from esm.sources.registry import family_of, load
from esm.sources.streams.config import StreamMappingConfig
from esm.sources.streams.context import ShardContext
from esm.sources.streams.poller import ShardPoller
from esm.sources.streams.records import Position, ShardInfo, StreamSource
from esm.state.base import Checkpoint, CheckpointStore
from esm.state.dynamodb import DynamoDBCheckpointStore, HeldLease

if TYPE_CHECKING:
    from esm.sources.streams.leases import LeaseCoordinator

log = get_logger("esm.streams")

SHARD_REFRESH_SECONDS = 10.0
ERROR_RETRY_SECONDS = 5.0


class StreamMapping(MappingRuntime):
    """One [[mappings]] entry whose source is a Kinesis stream or a DynamoDB stream."""

    def __init__(
        self,
        config: StreamMappingConfig,
        function: Function,
        aws: AwsClients,
        metrics: MappingMetrics,
        filters: FilterSet | None,
        store: CheckpointStore,
        idle_pacer: IdleReadPacer,
    ) -> None:
        self.config = config
        self.name = config.name
        self._listed = False
        """The last shard listing succeeded (and its pollers were started)."""
        self._m_ready = metrics.ready
        self._m_pollers = metrics.pollers
        self._m_ready.set(0)
        family = family_of(config)
        source = open_source(config, aws)
        destination_arn = config.on_failure_destination
        self.ctx = ShardContext(
            config=config,
            source=source,
            function=function,
            store=store,
            metrics=metrics,
            filters=filters,
            filter_view=family.filter_view,
            envelope=family.envelope,
            destination=create_destination(destination_arn, aws) if destination_arn else None,
            mapping_uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, f"esm:mapping:{config.name}")),
            idle_pacer=idle_pacer,
        )
        self.pollers: dict[str, ShardPoller] = {}
        self._shard_finished = anyio.Event()
        self._log = log.bind(mapping=config.name)
        self.leases: LeaseCoordinator | None = None
        if isinstance(store, DynamoDBCheckpointStore):
            from esm.sources.streams.leases import LeaseCoordinator

            self._log = self._log.bind(worker=store.worker_id)
            self.leases = LeaseCoordinator(
                store,
                config.name,
                metrics,
                initial_checkpoint=config.starting_position or "LATEST",
                on_change=self._refresh_soon,
                stopping=self.ctx.stopping,
            )

    def _refresh_soon(self) -> None:
        self._shard_finished.set()

    def stop(self) -> None:
        self.ctx.stopping.set()

    @property
    def ready(self) -> bool:
        """Listed, and every shard poller it runs has its first iterator: a record put
        after readiness is read even from LATEST (a LATEST iterator taken later would
        start after it)."""
        return self._listed and all(
            p.positioned or p.ended or p.ctx.stopping.is_set() for p in self.pollers.values()
        )

    def _set_ready(self, listed: bool) -> None:
        self._listed = listed
        self._publish_ready()

    def _publish_ready(self) -> None:
        self._m_ready.set(1 if self.ready else 0)

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as coordination:
                if self.leases is not None:
                    # Renewals go on while the pollers drain; released once they are done.
                    coordination.start_soon(self.leases.run)
                try:
                    await self._run_pollers()
                finally:
                    coordination.cancel_scope.cancel()
        finally:
            if self.leases is not None:
                await self.leases.release_all()
            self._set_ready(False)
            await self.ctx.source.aclose()
            self._log.info("mapping.stopped")

    async def _run_pollers(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self.ctx.stopping.is_set():
                self._shard_finished = anyio.Event()
                await self._refresh(tg)
                wait = SHARD_REFRESH_SECONDS if self._listed else ERROR_RETRY_SECONDS
                with anyio.move_on_after(wait):
                    async with anyio.create_task_group() as waiters:
                        waiters.start_soon(_wait_then_cancel, self.ctx.stopping, waiters)
                        waiters.start_soon(_wait_then_cancel, self._shard_finished, waiters)

    async def _refresh(self, tg: TaskGroup) -> None:
        held: dict[str, HeldLease] | None = None
        try:
            shards = await self.ctx.source.list_shards()
            if self.leases is None:
                checkpoints = await self.ctx.store.all(self.config.name)
            else:
                leases = await self.leases.sync_shards(shards)
                checkpoints = {lease.shard_id: lease.as_checkpoint() for lease in leases}
                held = self.leases.held()
                # What this worker holds is newer than the scan (it writes those itself).
                checkpoints.update({s: h.lease.as_checkpoint() for s, h in held.items()})
        except Exception as exc:
            self._set_ready(False)
            self._log.error("mapping.source_unavailable", error=str(exc))
            return
        listed = {s.shard_id for s in shards}
        checkpoints = self._of_current_incarnation(shards, checkpoints)
        for shard in shards:
            running = self.pollers.get(shard.shard_id)
            if running is not None:
                if not _same_incarnation(running.shard, shard):
                    # The stream was created again: stop; the restart begins it afresh.
                    running.ctx.stopping.set()
                    continue
                # A shard closed by resharding after its poller started: tell the poller, so
                # it ends once it has read everything (moto never returns a null iterator).
                running.shard = shard
                continue
            if held is not None and shard.shard_id not in held:
                continue
            checkpoint = checkpoints.get(shard.shard_id)
            if checkpoint is not None and checkpoint.shard_ended:
                continue
            waiting_for = [
                p for p in shard.parent_ids if p in listed and not _ended(checkpoints.get(p))
            ]
            if waiting_for:
                continue
            position = self._start_position(
                shard, checkpoint.sequence_number if checkpoint else None
            )
            lease = held.get(shard.shard_id) if held is not None else None
            # Own stop per poller, so losing one lease (or one shard's stream) stops only it.
            ctx = replace(self.ctx, stopping=anyio.Event(), lease=lease)
            poller = ShardPoller(
                ctx,
                shard,
                position,
                on_positioned=self._publish_ready,
                still_owned=None if lease is None else self._lease_check(lease),
            )
            self.pollers[shard.shard_id] = poller
            tg.start_soon(self._run_poller, poller, lease)
        self._m_pollers.set(sum(1 for p in self.pollers.values() if not p.ended))
        self._set_ready(True)

    def _of_current_incarnation(
        self, shards: list[ShardInfo], checkpoints: dict[str, Checkpoint]
    ) -> dict[str, Checkpoint]:
        """Drop checkpoints taken on an earlier stream of the same name (same shard ids,
        sequence numbers started over): those shards start at `starting_position`, and the
        warning names each one once, when its poller starts.

        In a fleet the lease coordinator has already restarted every lease held here and
        logged that warning (`sync_shards`); a stale checkpoint left is of a lease held
        elsewhere, which this worker does not start, so it does not warn for it."""
        current = dict(checkpoints)
        for shard in shards:
            checkpoint = current.get(shard.shard_id)
            if checkpoint is None or checkpoint.matches(shard.incarnation):
                continue
            del current[shard.shard_id]
            if self.leases is None and shard.shard_id not in self.pollers:
                self._log.warning(
                    "shard.new_incarnation",
                    shard=shard.shard_id,
                    stored=checkpoint.incarnation,
                    current=shard.incarnation,
                    checkpoint=checkpoint.sequence_number,
                    starting_position=self.config.starting_position or "LATEST",
                )
        return current

    def _lease_check(self, lease: HeldLease) -> Callable[[], bool]:
        """Before each invocation: is *this* lease still held and fresh? A lease lost and
        then taken back is another `HeldLease`, for the poller started on it, not this one."""
        store = self.ctx.store
        assert isinstance(store, DynamoDBCheckpointStore)
        name, shard_id, key = self.config.name, lease.lease.shard_id, lease.lease.key
        return lambda: store.held.get(key) is lease and store.still_held(name, shard_id)

    def _start_position(self, shard: ShardInfo, checkpoint: str | None) -> Position:
        if checkpoint is not None:
            return Position("AFTER_SEQUENCE_NUMBER", checkpoint)
        if shard.parent_ids:
            return Position("TRIM_HORIZON")
        kind = self.config.starting_position or "LATEST"
        assert kind in ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
        return Position(kind, timestamp=self.config.starting_position_timestamp)  # type: ignore[arg-type]

    async def _run_poller(self, poller: ShardPoller, lease: HeldLease | None = None) -> None:
        try:
            await self._run_guarded(poller, lease)
        except Exception as exc:
            if lease is not None and lease.lost.is_set():
                self._log.warning("shard.lease_lost", shard=poller.shard.shard_id)
                poller.ended = False
            else:
                self._log.error("shard.failed", shard=poller.shard.shard_id, error=str(exc))
                self._set_ready(False)
                with anyio.move_on_after(ERROR_RETRY_SECONDS):
                    await self.ctx.stopping.wait()
        if lease is not None and lease.lease.ended and not lease.lost.is_set() and self.leases:
            # Checkpointed at SHARD_END: the lease no longer counts; children get theirs. Not
            # when its SHARD_END was not written (stopped first, or a poller of a deleted
            # stream whose lease was meanwhile reset to the new one: that lease is kept).
            await self.leases.release(poller.shard.shard_id)
        # Whatever the end, the next refresh decides from the stored checkpoint: a shard
        # checkpointed at SHARD_END stays done, any other (stopped, failed, or ended on a
        # stream since created again) starts again (issue #15). A finished poller kept here
        # would block its shard id for good.
        self.pollers.pop(poller.shard.shard_id, None)
        self._publish_ready()
        self._shard_finished.set()

    async def _run_guarded(self, poller: ShardPoller, lease: HeldLease | None) -> None:
        """Run a poller until it ends, the mapping stops, or (fleet) its lease is lost. A
        lease stolen from a live worker waits two renewal intervals first: the old owner
        notices at its next renewal and stops."""
        stop_on = (self.ctx.stopping,) if lease is None else (self.ctx.stopping, lease.lost)
        async with anyio.create_task_group() as guard:
            guard.start_soon(_stop_on_first, poller.ctx.stopping, *stop_on)
            if lease is not None and lease.taken_from_live_owner and self.leases is not None:
                with anyio.move_on_after(2 * self.leases.timings.renewal_interval):
                    await poller.ctx.stopping.wait()
            if not poller.ctx.stopping.is_set():
                await poller.run()
            guard.cancel_scope.cancel()


def _ended(checkpoint: Checkpoint | None) -> bool:
    return checkpoint is not None and checkpoint.shard_ended


def _same_incarnation(running: ShardInfo, listed: ShardInfo) -> bool:
    return running.incarnation is None or running.incarnation == listed.incarnation


async def _stop_on_first(target: anyio.Event, *events: anyio.Event) -> None:
    """Set `target` as soon as any of `events` is set."""
    async with anyio.create_task_group() as group:
        for event in events:
            group.start_soon(_wait_then_cancel, event, group)
    target.set()


async def _wait_then_cancel(event: anyio.Event, group: TaskGroup) -> None:
    await event.wait()
    group.cancel_scope.cancel()


def open_source(config: StreamMappingConfig, aws: AwsClients) -> StreamSource:
    """The family's service adapter of a stream mapping, Kinesis or DynamoDB Streams, as
    the registry names it (also `esm status`); the caller closes it with `aclose`."""
    adapter = family_of(config).adapter
    assert adapter is not None, f"family {config.family} names no stream adapter"
    source: StreamSource = load(adapter)(config.source, aws)
    return source


async def build_runtime(
    config: StreamMappingConfig,
    function: Function,
    filters: FilterSet | None,
    resources: RuntimeResources,
) -> MappingRuntime:
    """The registry's runtime for a Kinesis or DynamoDB Streams mapping."""
    store = await resources.checkpoint_store()
    metrics = MappingMetrics(resources.metrics, config.name)
    return StreamMapping(
        config, function, resources.aws, metrics, filters, store, resources.idle_pacer
    )
