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
- a worker that just finished a shard (SHARD_END) and holds nothing else is still a worker
  for `failover_time`, as KCL's SHARD_END lease still counts for its owner: otherwise its
  peers share the children without it and it must steal one back from a live worker;
- a lease whose renewal or checkpoint fails its condition is lost: its poller stops at once;
- a lease this worker gave up locally (stalled past `failover_time`, renewals failing) that
  the table still names it as owner of is taken back by a conditional renewal: nobody else
  took it, so its shard restarts from the stored checkpoint instead of staying unread;
- the leases of a deleted stream's shards that the stream listed now lacks are deleted.

The balancing arithmetic is pure (`ExpiryTracker`, `choose_leases_to_take`); the
coordinator only does I/O around it. It must not read shards itself: `StreamMapping` runs
pollers for the leases `held` here.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Sequence
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
    worker first saw that counter, or when it has no owner.

    It also notes which workers released a lease at SHARD_END (their shard is done, they
    are alive) and which released an unfinished one (a graceful stop: they are leaving)."""

    def __init__(self, failover_time: float) -> None:
        self.failover_time = failover_time
        self._seen: dict[str, _Seen] = {}
        self._finished: dict[str, float] = {}

    def observe(self, leases: Sequence[Lease], now: float) -> set[str]:
        expired: set[str] = set()
        current: dict[str, _Seen] = {}
        done: set[str] = set()
        leaving: set[str] = set()
        for lease in leases:
            seen = self._seen.get(lease.key)
            if seen is not None and seen.owner is not None and lease.owner is None:
                (done if lease.ended else leaving).add(seen.owner)
            if seen is None or seen.counter != lease.counter or seen.owner != lease.owner:
                seen = _Seen(lease.owner, lease.counter, now)
            current[lease.key] = seen
            if lease.owner is None or now - seen.since >= self.failover_time:
                expired.add(lease.key)
        self._seen = current
        self._finished.update(dict.fromkeys(done, now))
        for owner in leaving:  # seen in the same scan as a finish, the stop wins
            self._finished.pop(owner, None)
        return expired

    def finished_recently(self, now: float) -> set[str]:
        """Workers seen releasing a lease at SHARD_END less than `failover_time` ago (and
        no unfinished lease since): alive, though they may hold no lease right now."""
        self._finished = {
            owner: at for owner, at in self._finished.items() if now - at < self.failover_time
        }
        return set(self._finished)


def fair_share(active_leases: int, workers: int) -> int:
    return math.ceil(active_leases / max(1, workers))


def choose_leases_to_take(
    leases: Sequence[Lease],
    expired: set[str],
    worker: str,
    max_take: int,
    rng: random.Random | None = None,
    also_live: Collection[str] = (),
) -> list[Lease]:
    """KCL's LeaseTaker rule: reach the fair share, expired leases first, else steal.

    Workers are the owners of unexpired leases (SHARD_END ones too, as in KCL, though only
    unfinished leases are shared out), this one, and `also_live` (workers that just
    finished a shard). Stealing takes from the most loaded worker only what it holds above
    the fair share (at least one when this worker lacks more than one), so a balanced fleet
    (e.g. 3/3/2) does not churn.
    """
    rng = rng or random.Random()
    active = [lease for lease in leases if not lease.ended]
    if not active:
        return []
    held = Counter(
        lease.owner for lease in active if lease.owner is not None and lease.key not in expired
    )
    finishing = {
        lease.owner
        for lease in leases
        if lease.ended and lease.owner is not None and lease.key not in expired
    }
    workers = set(held) | finishing | set(also_live) | {worker}
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


def _other_incarnation(lease: Lease, shard: ShardInfo) -> bool:
    """Was the lease's checkpoint taken on another stream of the same name (unknown on
    either side matches, as for leases written before esm recorded incarnations)?"""
    return (
        lease.incarnation is not None
        and shard.incarnation is not None
        and lease.incarnation != shard.incarnation
    )


def _start_of(shard: ShardInfo, initial_checkpoint: str) -> str:
    """Where a shard without a usable checkpoint starts: a child at TRIM_HORIZON (nothing
    written to it is skipped), any other at the mapping's starting position."""
    return "TRIM_HORIZON" if shard.parent_ids else initial_checkpoint


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
        self._taking = anyio.Lock()
        """Held by a take until its lease is in `held`, and by the incarnation restarts: a
        lease taken while a restart runs would be seen neither as scanned nor as held."""
        self._releasing: set[str] = set()
        """Lease keys whose release is being written: not orphans to take back."""
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
        shards no longer listed; restart leases of an earlier stream incarnation. Returns
        the mapping's leases as now stored; until the caller's next await, no lease in
        `held()` is of another incarnation than `shards`."""
        leases = await self.table.scan(self.mapping)
        listed = {s.shard_id for s in shards}
        created = False
        for shard in leases_to_create(shards, leases):
            lease = Lease(
                self.mapping,
                shard.shard_id,
                owner=None,
                counter=0,
                checkpoint=_start_of(shard, self.initial_checkpoint),
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
        deleted = await self._delete_of_deleted_streams(shards, leases)
        # Until the caller reads `held()` (no await between): no lease held then is stale.
        async with self._taking:
            restarted = await self._restart_new_incarnations(shards, leases)
            changed = created or restarted or deleted
            return await self.table.scan(self.mapping) if changed else leases

    async def _delete_of_deleted_streams(
        self, shards: Sequence[ShardInfo], leases: Sequence[Lease]
    ) -> bool:
        """Delete the leases of shards that only a deleted stream had: of another
        incarnation than the stream listed now, and not listed. Kept, they were held and
        renewed for good without a poller (a stream created again with fewer shards, or the
        children of a split parent), and counted in every worker's fair share. The delete is
        conditional on the counter as scanned; a holder elsewhere loses it at its next
        renewal. Returns whether any was deleted."""
        incarnations = {s.incarnation for s in shards}
        if len(incarnations) != 1 or None in incarnations:
            return False
        (current,) = incarnations
        listed = {s.shard_id for s in shards}
        deleted = False
        for lease in leases:
            if lease.shard_id in listed or lease.incarnation in (None, current):
                continue
            target = lease
            local = self.held().get(lease.shard_id)
            if local is not None:  # held here: given up first, deleted as last written
                async with local.lock:
                    if not local.lost.is_set():
                        self._lose(local, reason="its stream was deleted")
                    if local.lease.counter > lease.counter:
                        target = local.lease
            if await self.table.delete(target):
                deleted = True
                self._log.info(
                    "lease.deleted",
                    shard=lease.shard_id,
                    incarnation=lease.incarnation,
                    current=current,
                    reason="shard of a deleted stream",
                )
        return deleted

    async def _restart_new_incarnations(
        self, shards: Sequence[ShardInfo], leases: Sequence[Lease]
    ) -> bool:
        """A stream deleted and created again has the same shard ids: its leases still hold
        the old stream's checkpoints (or SHARD_END). Each is pointed at the new stream from
        the mapping's starting position once, by whichever worker's conditional write wins,
        and that worker logs the one warning (issue #13.6). Runs under `_taking`.

        A lease held here is restarted in place, so this worker keeps it: it may have been
        taken by this worker's balance loop after `leases` were scanned, and restarting it
        as unowned would fail (the take changed its counter) or make this worker drop the
        lease it just took. Once this returns, no lease held here is of another
        incarnation, so the mapping never starts a poller on one."""
        by_shard = {shard.shard_id: shard for shard in shards}
        restarted = False
        for lease in leases:
            shard = by_shard.get(lease.shard_id)
            if shard is None or not _other_incarnation(lease, shard):
                continue
            if self.held().get(lease.shard_id) is None:
                start = _start_of(shard, self.initial_checkpoint)
                assert shard.incarnation is not None
                if await self.table.restart(lease, start, shard.incarnation):
                    restarted = True
                    self._warn_new_incarnation(lease, shard, start)
                # Else another worker changed it since the scan, or this one's balance
                # loop took it (before `_taking` was acquired): then it is restarted below.
        while stale := [
            h
            for h in self.held().values()
            if h.lease.shard_id in by_shard
            and _other_incarnation(h.lease, by_shard[h.lease.shard_id])
        ]:
            restarted |= await self._restart_held(stale[0], by_shard[stale[0].lease.shard_id])
        return restarted

    async def _restart_held(self, held: HeldLease, shard: ShardInfo) -> bool:
        """Point a lease held here at the new incarnation, keeping it (a write conditional
        on this worker's owner and counter, like a checkpoint); lost if that fails."""
        start = _start_of(shard, self.initial_checkpoint)
        async with held.lock:
            if held.lost.is_set() or not _other_incarnation(held.lease, shard):
                return False
            previous = held.lease
            assert shard.incarnation is not None
            updated = await self.table.restart_held(previous, start, shard.incarnation)
            if updated is None:
                self._lose(held, reason="taken by another worker")
                return False
            held.lease = updated
            held.renewed_at = time.monotonic()
        self._warn_new_incarnation(previous, shard, start)
        return True

    def _warn_new_incarnation(self, lease: Lease, shard: ShardInfo, start: str) -> None:
        self._log.warning(
            "shard.new_incarnation",
            shard=lease.shard_id,
            stored=lease.incarnation,
            current=shard.incarnation,
            checkpoint=lease.checkpoint,
            starting_position=start,
        )

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
                    self._lose(held, reason=f"not renewed for failover_time: {exc!r}")
                else:
                    self._log.warning(
                        "lease.renew_failed", shard=held.lease.shard_id, error=repr(exc)
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

    def _lost_in_store(self) -> None:
        """A lease the store gave up (the stall check before an invocation, a checkpoint
        refused or not written in time): counted like the coordinator's own losses."""
        self._m_lost.inc()
        self._m_held.set(len(self.held()))
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
        now = time.monotonic()
        expired = self._tracker.observe(leases, now)
        mine = self.held()
        for lease in leases:
            # Lost without a failed write of ours (e.g. taken while our renewals stalled).
            local = mine.get(lease.shard_id)
            if local is not None and lease.owner != self.worker:
                async with local.lock:
                    if not local.lost.is_set() and local.lease.counter <= lease.counter:
                        self._lose(local, reason=f"now owned by {lease.owner}")
        if await self._retake_own(leases, mine):
            return  # the next cycle balances with these counted as held
        choices = choose_leases_to_take(
            leases,
            expired,
            self.worker,
            self.timings.max_taken_per_cycle,
            self._rng,
            also_live=self._tracker.finished_recently(now),
        )
        for lease in choices:
            if self._stopping.is_set():
                return
            stolen = lease.owner is not None and lease.key not in expired
            async with self._taking:
                taken = await self.table.take(lease, self.worker)
                if taken is None:
                    continue  # another worker was first, or the owner renewed it meanwhile
                self.store.held[lease_key(self.mapping, lease.shard_id)] = HeldLease(
                    taken, taken_from_live_owner=stolen, on_lost=self._lost_in_store
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

    async def _retake_own(self, leases: Sequence[Lease], mine: dict[str, HeldLease]) -> bool:
        """Take back the unfinished leases the table still names this worker as owner of,
        though it gave them up locally: the fencing check after a stall, renewals failing
        for `failover_time` on a network fault, or a renewal refused after its first try
        succeeded unseen (issue #15). Any other worker's take or a restart would have changed
        the owner, so nobody else can have processed past the stored checkpoint; the write is
        a renewal conditional on owner and counter as scanned, so a take since then wins and
        this one fails. The shard restarts from the stored checkpoint, as Lambda keeps a
        shard going once its poller recovers. Returns whether any was taken back."""
        orphans = [
            lease
            for lease in leases
            if lease.owner == self.worker
            and not lease.ended
            and lease.shard_id not in mine
            and lease.key not in self._releasing
        ]
        retaken = False
        for lease in orphans:
            if self._stopping.is_set():
                break
            async with self._taking:
                if lease.key in self.store.held or lease.key in self._releasing:
                    continue  # taken or released meanwhile by this worker
                renewed = await self.table.renew(lease)
                if renewed is None:
                    continue  # another worker took it (or reset it) since the scan
                self.store.held[lease.key] = HeldLease(renewed, on_lost=self._lost_in_store)
            retaken = True
            self._m_taken.inc()
            self._m_held.set(len(self.held()))
            self._log.info(
                "lease.retaken",
                shard=lease.shard_id,
                checkpoint=renewed.checkpoint,
                counter=renewed.counter,
            )
        if retaken:
            self._on_change()
        return retaken

    async def release(self, shard_id: str) -> None:
        """Give one lease up (graceful stop, or its shard ended) so others need not wait."""
        held = self.held().get(shard_id)
        if held is None:
            return
        key = held.lease.key
        self._releasing.add(key)  # not an orphan to take back while the release is written
        try:
            async with held.lock:
                self.store.held.pop(key, None)
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
        finally:
            self._releasing.discard(key)

    async def release_all(self) -> None:
        with anyio.move_on_after(RELEASE_TIMEOUT, shield=True):
            for shard_id in list(self.held()):
                await self.release(shard_id)
