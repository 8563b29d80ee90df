"""One shard, read in order to its end (or until stopped), fanned out to its lanes, and
checkpointed as its records are done.

One `ShardPoller` per shard reads pages and hands records to `parallelization_factor`
lanes (`lane.py`) by a stable hash of the partition key (Kinesis) or item key (DynamoDB),
so records of one key keep their order. Filtered-out records are done at once. A record is
checkpointed only when it and every record before it in the shard are done
(`ShardProgress`); stopping abandons batches that have not succeeded: they are read again.
Kinesis allows 5 GetRecords calls per second per shard; a caught-up shard is read about
once a second, as Lambda reads it (or less often under the opt-in shared budget,
`esm.idle_pacing`), and just after a lane's tumbling window ends. Every wait between two
reads is a future on the process's one `ReadTimer`, not a timer and a cancel scope each.
"""

from __future__ import annotations

import asyncio
import math
import operator
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from itertools import compress

import anyio

from esm.idle_pacing import ShardPacing
from esm.observability import get_logger
from esm.sources.streams.context import ShardContext
from esm.sources.streams.lane import Lane
from esm.sources.streams.progress import ShardProgress
from esm.sources.streams.records import (
    MAX_RECORDS_PER_READ,
    ExpiredIterator,
    Position,
    ReadResult,
    RecordRun,
    ShardInfo,
)
from esm.state.base import Checkpoint

log = get_logger("esm.streams")

READS_PER_SECOND = 5
"""Kinesis allows 5 GetRecords calls per shard in any one second (a sixth is throttled with
ProvisionedThroughputExceededException)."""
BUSY_POLL_INTERVAL = 0.2
"""The mean spacing of a busy shard's reads (1 s / READS_PER_SECOND); 0 turns the limit off
(bench/hotpath.py, to measure CPU rather than the limit)."""
WINDOW_END_READ_DELAY = 0.05
"""How long after a tumbling window's end a quiet shard is read to close the window."""


class ReadWindow:
    """Kinesis's per-shard read limit as a sliding window: a read may start when fewer than
    READS_PER_SECOND reads started in the last second. A shard that is behind thus reads
    its next pages as soon as each is handed on, not 0.2 s after the last read started:
    when a read is slow (a full page parsed while other shards' pages are too), the next
    one does not start later for it, so a 6-page backlog's last read starts 1 s after the
    first, as the limit allows, instead of drifting by each read's delay."""

    def __init__(self) -> None:
        self._starts: deque[float] = deque(maxlen=READS_PER_SECOND)

    def started(self, at: float) -> None:
        self._starts.append(at)

    def wait(self, now: float) -> float:
        """Seconds until the next read may start (0 or less: now)."""
        starts = self._starts
        if len(starts) < READS_PER_SECOND:
            return 0.0
        return starts[0] + BUSY_POLL_INTERVAL * READS_PER_SECOND - now


class ShardPoller:
    def __init__(
        self,
        ctx: ShardContext,
        shard: ShardInfo,
        start: Position,
        on_positioned: Callable[[], None] | None = None,
        still_owned: Callable[[], bool] | None = None,
    ) -> None:
        self.ctx = ctx
        self.shard = shard
        self.start = start
        self.positioned = False
        """The first iterator is in hand: every record put from now on will be read."""
        self._on_positioned = on_positioned
        self._still_owned = still_owned
        self.progress = ShardProgress()
        self.ended = False
        self.caught_up = False
        """The last read returned nothing: no record written before it is still unread."""
        self.caught_up_since = 0.0
        """Wall-clock time the last (empty) read was sent: records that arrived before it
        have all been read."""
        self._saved: str | None = start.sequence_number
        self._space = anyio.Event()
        self._progressed = anyio.Event()
        self._reading_done = False
        self._timer = ctx.idle_pacer.timer
        self._pause_ends: asyncio.Future[None] | None = None
        self._window = ReadWindow()
        self._log = log.bind(mapping=ctx.config.name, shard=shard.shard_id)
        self._m_polled = ctx.metrics.polled
        self._m_filtered = ctx.metrics.filtered_out
        self._m_age = ctx.metrics.iterator_age(shard.shard_id)
        self._passes = ctx.filters.predicate(ctx.filter_view) if ctx.filters is not None else None
        self.lanes = [
            Lane(self, ctx, i, self._log) for i in range(ctx.config.parallelization_factor)
        ]

    # --- what a lane sees (lane.LaneShard) --------------------------------------------------

    @property
    def shard_id(self) -> str:
        return self.shard.shard_id

    @property
    def reading_done(self) -> bool:
        return self._reading_done

    def read_empty_since(self, moment: float) -> bool:
        return self.caught_up and self.caught_up_since >= moment

    def complete(self, indices: Iterable[int]) -> None:
        self.progress.complete(indices)
        self.progressed()

    # --- reading ----------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        return sum(lane.buffered for lane in self.lanes)

    @property
    def buffer_limit(self) -> int:
        return max(MAX_RECORDS_PER_READ, 2 * self.ctx.config.batch_size * len(self.lanes))

    async def run(self) -> None:
        """Read the shard to its end (or until stopped); checkpoint what is done."""
        start = self.start
        self._log.info("shard.started", position=start.kind, after=start.sequence_number)
        async with anyio.create_task_group() as tg:
            for lane in self.lanes:
                tg.start_soon(lane.run)
            tg.start_soon(self._checkpointer)
            waker = anyio.CancelScope()
            tg.start_soon(self._wake_when_stopping, waker)
            try:
                await self._read_loop()
            finally:
                waker.cancel()
                self._reading_done = True
                for lane in self.lanes:
                    lane.wake()
                self.progressed()
        await self._save(final=True)
        self._log.info("shard.stopped", ended=self.ended, checkpoint=self._saved)

    async def _read_loop(self) -> None:
        pacing = self.ctx.idle_pacer.shard()
        try:
            await self._read_until_end(pacing)
        finally:
            pacing.stop()  # a stopped poller no longer shares the idle read budget

    async def _read_until_end(self, pacing: ShardPacing) -> None:
        ctx = self.ctx
        gate = ctx.idle_pacer.first_reads
        gate.joined()
        try:
            iterator = await ctx.source.iterator_at(self.shard.shard_id, self.start)
        finally:
            together = gate.positioned()
        self.positioned = True
        if self._on_positioned is not None:
            self._on_positioned()
        if together is not None:
            await self._pause_on(together)
        last_read: str | None = self.start.sequence_number
        while not ctx.stopping.is_set():
            while self.buffered >= self.buffer_limit and not ctx.stopping.is_set():
                self._space = anyio.Event()
                with anyio.move_on_after(1):
                    await self._space.wait()
            # Every read, an idle one too, keeps the limit; checked again after the pause,
            # which the loop's timer may end a hair early.
            while (limited := self._window.wait(time.monotonic())) > 0:
                if ctx.stopping.is_set():
                    return
                await self._pause(limited, exact=True)
            if ctx.stopping.is_set():
                return
            started, sent_at = time.monotonic(), time.time()
            self._window.started(started)
            try:
                result = await ctx.source.read(self.shard.shard_id, iterator)
            except ExpiredIterator:
                position = Position("AFTER_SEQUENCE_NUMBER", last_read) if last_read else self.start
                self._log.info("shard.iterator_expired", renew_after=last_read)
                iterator = await ctx.source.iterator_at(self.shard.shard_id, position)
                continue
            if result.records:
                last_read = result.records.sequence_numbers[-1]
                self._accept(result.records)
            self._report_age(result)
            if result.next_iterator is None or (self.shard.closed and not result.records):
                self.ended = True
                return
            iterator = result.next_iterator
            # A full page, or records with MillisBehindLatest above 0: more are waiting,
            # so only the per-shard read limit (ReadWindow) delays the next read (a full
            # page counts as behind: some endpoints always report 0). A part page at the
            # tip waits the limit's mean spacing; an empty read backs off (esm.idle_pacing).
            self.caught_up = not result.records
            if self.caught_up:
                self.caught_up_since = sent_at
                delay = min(
                    pacing.after_empty_read(time.monotonic() - started),
                    self._until_a_window_ends(),
                )
                if delay > 0:
                    await self._pause(delay)
            else:
                pacing.after_records()
                if len(result.records) < MAX_RECORDS_PER_READ and not result.millis_behind:
                    # At the tip (a part page, nothing behind): records trickle in, so the
                    # next read comes after the limit's mean spacing, 0.2 s after this one
                    # started; reading at once would mostly come back empty and spend the
                    # second's 5 reads early, stalling the records that follow.
                    delay = BUSY_POLL_INTERVAL - (time.monotonic() - started)
                    if delay > 0:
                        await self._pause(delay)

    async def _pause(self, seconds: float, exact: bool = False) -> None:
        """Wait `seconds` before the next read, or until the poller is told to stop."""
        if self.ctx.stopping.is_set():
            return
        await self._pause_on(self._timer.due_in(seconds, exact))

    async def _pause_on(self, ends: asyncio.Future[None]) -> None:
        """Wait for `ends`, which `_wake_when_stopping` resolves early on a stop."""
        if self.ctx.stopping.is_set():
            return
        self._pause_ends = ends
        try:
            await ends
        finally:
            self._pause_ends = None

    async def _wake_when_stopping(self, scope: anyio.CancelScope) -> None:
        """Cut the pause short when the poller is stopped (one waiting task per poller,
        parked on its stop event: no timer, nothing per read); `scope` ends it once
        reading is over."""
        with scope:
            await self.ctx.stopping.wait()
            ends = self._pause_ends
            if ends is not None and not ends.done():
                ends.set_result(None)

    def _until_a_window_ends(self) -> float:
        """Seconds until just after the end of a lane's open tumbling window: a window
        closes only after a read sent past its end came back empty (`read_empty_since`),
        so a quiet shard is read then, however long its idle wait. Once such a read was
        sent, the window no longer counts here (its final invocation may take retries)."""
        ends = [end for lane in self.lanes if (end := lane.window_end) is not None]
        if not ends:
            return math.inf
        for lane in self.lanes:
            lane.wake()  # a lane may be waiting for this read to close its window
        unconfirmed = [end for end in ends if end > self.caught_up_since]
        if not unconfirmed:
            return math.inf
        return max(0.0, min(unconfirmed) - time.time()) + WINDOW_END_READ_DELAY

    def _accept(self, records: RecordRun) -> None:
        """Register records for checkpointing; filtered-out ones are done at once. The
        run moves as whole lists (one range of indices, one verdict list), nothing per
        record but the filter itself."""
        count = len(records)
        self._m_polled.inc(count)
        first = self.progress.register(records.sequence_numbers)
        records.indices = range(first, first + count)
        passes = self._passes
        if passes is not None:
            verdicts = list(map(passes, records.events))
            passed = sum(verdicts)
            if passed < count:
                self._m_filtered.inc(count - passed)
                self.progress.complete(
                    list(compress(records.indices, map(operator.not_, verdicts)))
                )
                self.progressed()
                if not passed:
                    return
                records = records.keep(verdicts)
        lanes = self.lanes
        if len(lanes) == 1:
            lanes[0].push(records)
            return
        key = records.fields.key
        split: list[list[bool]] = [[False] * len(records) for _ in lanes]
        for position, event in enumerate(records.events):
            split[zlib.crc32(key(event).encode()) % len(lanes)][position] = True
        for lane, verdicts in zip(lanes, split, strict=True):
            if any(verdicts):
                lane.push(records.keep(verdicts))

    def _report_age(self, result: ReadResult) -> None:
        if result.millis_behind is not None:
            self._m_age.set(result.millis_behind / 1000)
        elif result.records:
            last = result.records
            self._m_age.set(max(0.0, time.time() - last.fields.arrival(last.events[-1])))
        else:
            self._m_age.set(0)

    def progressed(self) -> None:
        self._progressed.set()

    def owned(self) -> bool:
        """Checked before every invocation (fleet mode): is this worker's lease still fresh?
        When not, the shard stops here, so a stalled worker never invokes a batch that its
        successor may already have handled (out of order)."""
        if self._still_owned is None or self._still_owned():
            return True
        self._log.warning("shard.stopped_not_owned")
        self.ctx.stopping.set()
        return False

    def space_freed(self) -> None:
        self._space.set()

    async def _checkpointer(self) -> None:
        """Write the checkpoint after progress, coalescing bursts into one write."""
        while True:
            await self._progressed.wait()
            self._progressed = anyio.Event()
            await self._save()
            if self._reading_done and all(lane.finished for lane in self.lanes):
                return

    async def _save(self, final: bool = False) -> None:
        checkpoint = self.progress.checkpoint
        ended = (
            final
            and self.ended
            and self.progress.outstanding == 0
            and not self.ctx.stopping.is_set()
        )
        if checkpoint == self._saved and not ended:
            return
        with anyio.CancelScope(shield=True):
            await self.ctx.store.put(
                self.ctx.config.name,
                self.shard.shard_id,
                Checkpoint(checkpoint or self._saved, ended, self.shard.incarnation),
                self.ctx.lease,
            )
        self._saved = checkpoint or self._saved
