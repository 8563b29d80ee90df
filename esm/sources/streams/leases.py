"""The lease coordinator of one stream mapping in a fleet: create, renew, take, balance, release.

Follows the Kinesis Client Library's lease model (no home-made consensus; DynamoDB's
conditional writes decide every race):

- a lease exists per shard once its parents are done (checkpointed at SHARD_END, or no
  longer listed), so children wait for their parents;
- the holder renews every `lease_renewal_interval` by bumping `leaseCounter`;
- every worker notes when it last saw each lease's counter change, on its own clock; a lease
  unchanged for `failover_time` (or without owner) is expired and may be taken;
- each balancing cycle takes at most `max_leases_taken_per_cycle` leases until this worker
  holds its fair share (ceil(leases / workers)): expired ones first, else stolen from the
  most loaded worker;
- a lease whose renewal or checkpoint fails its condition is lost: its poller stops at once.

The balancing arithmetic is pure (`ExpiryTracker`, `choose_leases_to_take`); the
coordinator only does I/O around it. It must not read shards itself: `StreamMapping` runs
pollers for the leases `held` here.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import anyio

from esm.observability import MappingMetrics, get_logger
from esm.sources.streams.records import ShardInfo
from esm.state.dynamodb import DynamoDBCheckpointStore, HeldLease, Lease, lease_key

log = get_logger("esm.leases")

RELEASE_TIMEOUT = 10.0


@dataclass
class _Seen:
    owner: str | None
    counter: int
    since: float


class ExpiryTracker:
    """Which leases are expired, judged by this worker's clock only (no clock sync needed):
    a lease is expired when its counter has not changed for `failover_time` since this
    worker first saw that counter, or when it has no owner."""

    def __init__(self, failover_time: float) -> None:
        self.failover_time = failover_time
        self._seen: dict[str, _Seen] = {}

    def observe(self, leases: Sequence[Lease], now: float) -> set[str]:
        expired: set[str] = set()
        current: dict[str, _Seen] = {}
        for lease in leases:
            seen = self._seen.get(lease.key)
            if seen is None or seen.counter != lease.counter or seen.owner != lease.owner:
                seen = _Seen(lease.owner, lease.counter, now)
            current[lease.key] = seen
            if lease.owner is None or now - seen.since >= self.failover_time:
                expired.add(lease.key)
        self._seen = current
        return expired


def fair_share(active_leases: int, workers: int) -> int:
    return math.ceil(active_leases / max(1, workers))


def choose_leases_to_take(
    leases: Sequence[Lease],
    expired: set[str],
    worker: str,
    max_take: int,
    rng: random.Random | None = None,
) -> list[Lease]:
    """KCL's LeaseTaker rule: reach the fair share, expired leases first, else steal.

    Workers are the owners of unexpired leases plus this one. Stealing takes from the most
    loaded worker only what it holds above the fair share (at least one when this worker
    lacks more than one), so a balanced fleet (e.g. 3/3/2) does not churn.
    """
    rng = rng or random.Random()
    active = [lease for lease in leases if not lease.ended]
    if not active:
        return []
    held = Counter(
        lease.owner for lease in active if lease.owner is not None and lease.key not in expired
    )
    workers = set(held) | {worker}
    target = fair_share(len(active), len(workers))
    needed = target - held[worker]
    if needed <= 0:
        return []
    available = [
        lease
        for lease in active
        if lease.owner != worker and (lease.owner is None or lease.key in expired)
    ]
    if available:
        rng.shuffle(available)
        return available[: min(needed, max_take)]
    others = [(count, owner) for owner, count in held.items() if owner != worker]
    if not others:
        return []
    count, most_loaded = max(others, key=lambda pair: (pair[0], pair[1]))
    if count < target:
        return []
    steal = min(needed, count - target)
    if steal == 0 and needed > 1:
        steal = 1
    steal = min(steal, max_take)
    victims = [lease for lease in active if lease.owner == most_loaded]
    return rng.sample(victims, steal) if steal > 0 else []


def leases_to_create(shards: Sequence[ShardInfo], leases: Sequence[Lease]) -> list[ShardInfo]:
    """Listed shards without a lease whose parents are done: ended (SHARD_END) or no longer
    listed (expired from the stream). Lambda and KCL read parents before children."""
    listed = {s.shard_id for s in shards}
    by_shard = {lease.shard_id: lease for lease in leases}
    ready: list[ShardInfo] = []
    for shard in shards:
        if shard.shard_id in by_shard:
            continue
        pending = [
            p for p in shard.parent_ids if p in listed and not (p in by_shard and by_shard[p].ended)
        ]
        if not pending:
            ready.append(shard)
    return ready


class LeaseCoordinator:
    """Renews and balances the leases of one mapping for this worker (see module docstring)."""

    def __init__(
        self,
        store: DynamoDBCheckpointStore,
        mapping: str,
        metrics: MappingMetrics,
        *,
        initial_checkpoint: str,
        on_change: Callable[[], None],
        stopping: anyio.Event,
    ) -> None:
        self.store = store
        self.table = store.table
        self.mapping = mapping
        self.worker = store.worker_id
        self.timings = store.timings
        self.initial_checkpoint = initial_checkpoint
        self._on_change = on_change
        self._stopping = stopping
        self._tracker = ExpiryTracker(self.timings.failover_time)
        self._rng = random.Random()
        self._m_held = metrics.leases_held
        self._m_taken = metrics.leases_taken
        self._m_lost = metrics.leases_lost
        self._log = log.bind(mapping=mapping, worker=self.worker)

    def held(self) -> dict[str, HeldLease]:
        """This mapping's leases held by this worker, by shard id."""
        return {
            h.lease.shard_id: h
            for h in self.store.held.values()
            if h.lease.mapping == self.mapping and not h.lost.is_set()
        }

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_loop)
            tg.start_soon(self._balance_loop)

    async def sync_shards(self, shards: Sequence[ShardInfo]) -> list[Lease]:
        """Create leases for new shards whose parents are done; delete finished leases of
        shards no longer listed. Returns the mapping's leases as now stored."""
        leases = await self.table.scan(self.mapping)
        listed = {s.shard_id for s in shards}
        created = False
        for shard in leases_to_create(shards, leases):
            lease = Lease(
                self.mapping,
                shard.shard_id,
                owner=None,
                counter=0,
                checkpoint="TRIM_HORIZON" if shard.parent_ids else self.initial_checkpoint,
                parent_ids=shard.parent_ids,
                incarnation=shard.incarnation,
            )
            if await self.table.create(lease):
                self._log.info(
                    "lease.created", shard=shard.shard_id, parents=list(shard.parent_ids)
                )
                created = True
        for lease in leases:
            if lease.ended and lease.shard_id not in listed and lease.owner is None:
                await self.table.delete(lease)
        restarted = await self._restart_new_incarnations(shards, leases)
        return await self.table.scan(self.mapping) if created or restarted else leases

    async def _restart_new_incarnations(
        self, shards: Sequence[ShardInfo], leases: Sequence[Lease]
    ) -> bool:
        """A stream deleted and created again has the same shard ids: its leases still hold
        the old stream's checkpoints (or SHARD_END). Each is pointed at the new stream from
        the mapping's starting position, by whichever worker's conditional write wins, and
        that worker logs the one warning."""
        by_shard = {shard.shard_id: shard for shard in shards}
        restarted = False
        for lease in leases:
            shard = by_shard.get(lease.shard_id)
            if shard is None or shard.incarnation is None or lease.incarnation is None:
                continue
            if lease.incarnation == shard.incarnation:
                continue
            start = "TRIM_HORIZON" if shard.parent_ids else self.initial_checkpoint
            if not await self.table.restart(lease, start, shard.incarnation):
                continue
            restarted = True
            self._log.warning(
                "shard.new_incarnation",
                shard=lease.shard_id,
                stored=lease.incarnation,
                current=shard.incarnation,
                checkpoint=lease.checkpoint,
                starting_position=start,
            )
            mine = self.held().get(lease.shard_id)
            if mine is not None:
                async with mine.lock:
                    self._lose(mine, reason="the stream was created again")
        return restarted

    async def _renew_loop(self) -> None:
        while True:
            await anyio.sleep(self.timings.renewal_interval)
            async with anyio.create_task_group() as renewals:
                for held in self.held().values():
                    renewals.start_soon(self._renew, held)
            self._m_held.set(len(self.held()))

    async def _renew(self, held: HeldLease) -> None:
        async with held.lock:
            if held.lost.is_set():
                self.store.held.pop(held.lease.key, None)
                return
            # Bounded by what is left of failover_time: a hung call must not outlive the lease.
            left = self.timings.failover_time - (time.monotonic() - held.renewed_at)
            try:
                with anyio.fail_after(max(left, 0.1)):
                    renewed = await self.table.renew(held.lease)
            except Exception as exc:
                # Unreachable table: keep trying, but give the shard up once others may
                # consider the lease expired, so two workers never process it together.
                if time.monotonic() - held.renewed_at >= self.timings.failover_time:
                    self._lose(held, reason=f"not renewed for failover_time: {exc}")
                else:
                    self._log.warning(
                        "lease.renew_failed", shard=held.lease.shard_id, error=str(exc)
                    )
                return
            if renewed is None:
                self._lose(held, reason="taken by another worker")
                return
            held.lease = renewed
            held.renewed_at = time.monotonic()

    def _lose(self, held: HeldLease, reason: str) -> None:
        held.lost.set()
        self.store.held.pop(held.lease.key, None)
        self._m_lost.inc()
        self._m_held.set(len(self.held()))
        self._log.warning("lease.lost", shard=held.lease.shard_id, reason=reason)
        self._on_change()

    async def _balance_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._balance_once()
            except Exception as exc:
                self._log.error("lease.balance_failed", error=str(exc))
            with anyio.move_on_after(self.timings.balance_interval):
                await self._stopping.wait()

    async def _balance_once(self) -> None:
        leases = await self.table.scan(self.mapping)
        expired = self._tracker.observe(leases, time.monotonic())
        mine = self.held()
        for lease in leases:
            # Lost without a failed write of ours (e.g. taken while our renewals stalled).
            local = mine.get(lease.shard_id)
            if local is not None and lease.owner != self.worker:
                async with local.lock:
                    if not local.lost.is_set() and local.lease.counter <= lease.counter:
                        self._lose(local, reason=f"now owned by {lease.owner}")
        choices = choose_leases_to_take(
            leases, expired, self.worker, self.timings.max_taken_per_cycle, self._rng
        )
        for lease in choices:
            if self._stopping.is_set():
                return
            taken = await self.table.take(lease, self.worker)
            if taken is None:
                continue  # another worker was first, or the owner renewed it meanwhile
            stolen = lease.owner is not None and lease.key not in expired
            self.store.held[lease_key(self.mapping, lease.shard_id)] = HeldLease(
                taken, taken_from_live_owner=stolen
            )
            self._m_taken.inc()
            self._m_held.set(len(self.held()))
            self._log.info(
                "lease.taken",
                shard=lease.shard_id,
                previous_owner=lease.owner,
                how="stolen" if stolen else "expired" if lease.owner else "unowned",
                checkpoint=taken.checkpoint,
            )
            self._on_change()

    async def release(self, shard_id: str) -> None:
        """Give one lease up (graceful stop, or its shard ended) so others need not wait."""
        held = self.held().get(shard_id)
        if held is None:
            return
        async with held.lock:
            self.store.held.pop(held.lease.key, None)
            self._m_held.set(len(self.held()))
            if held.lost.is_set():
                return
            held.lost.set()
            try:
                released = await self.table.release(held.lease)
            except Exception as exc:
                self._log.warning("lease.release_failed", shard=shard_id, error=str(exc))
                return
            self._log.info("lease.released", shard=shard_id, released=released)

    async def release_all(self) -> None:
        with anyio.move_on_after(RELEASE_TIMEOUT, shield=True):
            for shard_id in list(self.held()):
                await self.release(shard_id)
