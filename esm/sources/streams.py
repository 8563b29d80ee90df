"""Shard logic shared by Kinesis and DynamoDB Streams: read, lanes, retries, checkpoints.

One `ShardPoller` per shard reads pages in order and hands records to
`parallelization_factor` lanes by a stable hash of the partition key (Kinesis) or item key
(DynamoDB), so records of one key keep their order. Each lane invokes one batch at a time
and applies Lambda's error rules (spec section 3) to it, blocking only itself:

- a function error retries the batch until it succeeds, `maximum_retry_attempts` is used
  up, or its records are older than `maximum_record_age_in_seconds`;
- `bisect_batch_on_function_error` splits a failed batch in halves first; splitting does
  not use up the retry quota;
- with ReportBatchItemFailures the records before the lowest reported sequence number are
  done and the batch is retried from it (each such retry counts as an attempt);
- throttles and unreachable functions are retried until the records expire, without using
  up attempts;
- a given-up batch goes to the on-failure destination (delivery retried until it succeeds,
  never skipped) or is counted and logged as dropped.

With `tumbling_window_in_seconds`, each lane keeps one window's state (esm.tumbling): a
batch never spans two windows, and a window's records are checkpointed only after its
final invocation succeeded.

A record is checkpointed only when it and every record before it in the shard are done
(`ShardProgress`). Stopping abandons batches that have not succeeded: they are read again.
"""

from __future__ import annotations

import math
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice, repeat, starmap
from operator import attrgetter
from typing import Any, Literal, Protocol

import anyio

from esm.batch_response import BatchVerdict, judge
from esm.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, BatchBudget, fitting_prefix
from esm.config import MappingConfig
from esm.destinations import OnFailureDestination
from esm.errors import DeliveryFailed
from esm.events.on_failure import GivenUpBatch, failure_record, s3_failure_object
from esm.filtering import FilterSet
from esm.functions import Function
from esm.idle_pacing import DEFAULT_IDLE_SHARD_READS_PER_SECOND, IdleReadPacer, ShardPacing
from esm.invocation import InvocationResult
from esm.observability import Metrics, get_logger
from esm.shard_progress import ShardProgress
from esm.state.base import Checkpoint, CheckpointStore
from esm.tumbling import (
    Window,
    WindowState,
    returned_state,
    state_too_large,
    window_event,
    window_of,
)

log = get_logger("esm.streams")

MAX_RECORDS_PER_READ = 10_000
BUSY_POLL_INTERVAL = 0.2
"""Kinesis allows 5 GetRecords calls per second per shard."""
RETRY_BACKOFF = (0.1, 10.0)
WINDOW_END_READ_DELAY = 0.05
"""How long after a tumbling window's end a quiet shard is read to close the window."""


@dataclass(slots=True)
class StreamRecord:
    event: dict[str, Any]
    """The record exactly as the function receives it."""
    sequence_number: str
    key: str
    arrival: float
    size: int
    index: int = 0


@dataclass
class ReadResult:
    records: list[StreamRecord]
    next_iterator: str | None
    millis_behind: int | None


@dataclass(frozen=True)
class Position:
    kind: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AFTER_SEQUENCE_NUMBER"]
    sequence_number: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    parent_ids: tuple[str, ...]
    closed: bool
    """The shard has an ending sequence number: after its last record it is at SHARD_END."""
    incarnation: str | None = None
    """Which stream this shard belongs to: a stream deleted and created again under the same
    name has shards with the same ids whose sequence numbers start over (Kinesis: the
    stream's creation time; DynamoDB: the stream ARN, whose label is new for a new stream).
    A checkpoint of another incarnation is not resumed from."""


class StreamSource(Protocol):
    """What differs between Kinesis and DynamoDB Streams."""

    @property
    def family(self) -> Literal["kinesis", "dynamodb"]: ...

    async def list_shards(self) -> list[ShardInfo]: ...

    async def iterator_at(self, shard_id: str, position: Position) -> str: ...

    async def read(self, shard_id: str, iterator: str) -> ReadResult: ...

    async def aclose(self) -> None: ...


@dataclass
class ShardContext:
    """What a shard poller shares with its mapping."""

    config: MappingConfig
    source: StreamSource
    function: Function
    store: CheckpointStore
    metrics: Metrics
    filters: FilterSet | None
    filter_view: Any
    destination: OnFailureDestination | None
    mapping_uuid: str
    stopping: anyio.Event = field(default_factory=anyio.Event)
    idle_pacer: IdleReadPacer = field(
        default_factory=lambda: IdleReadPacer(DEFAULT_IDLE_SHARD_READS_PER_SECOND)
    )
    """Shared by every mapping of the daemon: one budget of reads for caught-up shards."""


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
        self._log = log.bind(mapping=ctx.config.name, shard=shard.shard_id)
        m = ctx.config.name
        self._m_polled = ctx.metrics.polled.labels(m)
        self._m_filtered = ctx.metrics.filtered_out.labels(m)
        self._m_age = ctx.metrics.iterator_age.labels(m, shard.shard_id)
        self._passes = ctx.filters.predicate(ctx.filter_view) if ctx.filters is not None else None
        self.lanes = [Lane(self, i) for i in range(ctx.config.parallelization_factor)]

    @property
    def buffered(self) -> int:
        return sum(len(lane.buffer) for lane in self.lanes)

    @property
    def buffer_limit(self) -> int:
        return max(MAX_RECORDS_PER_READ, 2 * self.ctx.config.batch_size * len(self.lanes))

    async def run(self) -> None:
        """Read the shard to its end (or until stopped); checkpoint what is done."""
        self._log.info("shard.started", position=self.start.kind, after=self.start.sequence_number)
        async with anyio.create_task_group() as tg:
            for lane in self.lanes:
                tg.start_soon(lane.run)
            tg.start_soon(self._checkpointer)
            try:
                await self._read_loop()
            finally:
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
        iterator = await ctx.source.iterator_at(self.shard.shard_id, self.start)
        self.positioned = True
        if self._on_positioned is not None:
            self._on_positioned()
        last_read: str | None = self.start.sequence_number
        while not ctx.stopping.is_set():
            while self.buffered >= self.buffer_limit and not ctx.stopping.is_set():
                self._space = anyio.Event()
                with anyio.move_on_after(1):
                    await self._space.wait()
            if ctx.stopping.is_set():
                return
            started, sent_at = time.monotonic(), time.time()
            try:
                result = await ctx.source.read(self.shard.shard_id, iterator)
            except ExpiredIterator:
                position = (
                    Position("AFTER_SEQUENCE_NUMBER", last_read) if last_read else self.start
                )
                self._log.info("shard.iterator_expired", renew_after=last_read)
                iterator = await ctx.source.iterator_at(self.shard.shard_id, position)
                continue
            if result.records:
                last_read = result.records[-1].sequence_number
                self._accept(result.records)
            self._report_age(result)
            if result.next_iterator is None or (self.shard.closed and not result.records):
                self.ended = True
                return
            iterator = result.next_iterator
            # Records came: more may follow at once (a full page, or a busy shard whose
            # MillisBehindLatest some endpoints always report as 0), so only the per-shard
            # read rate limits the next read. An empty read backs off (esm.idle_pacing).
            self.caught_up = not result.records
            if self.caught_up:
                self.caught_up_since = sent_at
                delay = min(pacing.after_empty_read(), self._until_a_window_ends())
            else:
                pacing.after_records()
                delay = BUSY_POLL_INTERVAL - (time.monotonic() - started)
            if delay > 0:
                with anyio.move_on_after(delay):
                    await ctx.stopping.wait()

    def _until_a_window_ends(self) -> float:
        """Seconds until just after the end of a lane's open tumbling window: a window
        closes only after a read sent past its end came back empty (see Lane._window_over),
        so a quiet shard is read then, however long its idle wait. Once such a read was
        sent, the window no longer counts here (its final invocation may take retries)."""
        ends = [lane.window.window.end for lane in self.lanes if lane.window is not None]
        if not ends:
            return math.inf
        for lane in self.lanes:
            lane.wake()  # a lane may be waiting for this read to close its window
        unconfirmed = [end for end in ends if end > self.caught_up_since]
        if not unconfirmed:
            return math.inf
        return max(0.0, min(unconfirmed) - time.time()) + WINDOW_END_READ_DELAY

    def _accept(self, records: list[StreamRecord]) -> None:
        """Register records for checkpointing; filtered-out ones are done at once."""
        self._m_polled.inc(len(records))
        first = self.progress.register(map(_sequence_number, records))
        for offset, record in enumerate(records):
            record.index = first + offset
        passes = self._passes
        if passes is not None:
            passed = [r for r in records if passes(r.event)]
            if len(passed) < len(records):
                keep = {r.index for r in passed}
                self._m_filtered.inc(len(records) - len(passed))
                self.progress.complete(r.index for r in records if r.index not in keep)
                self.progressed()
            records = passed
        lanes = self.lanes
        if len(lanes) == 1:
            lanes[0].push(records)
            return
        split: list[list[StreamRecord]] = [[] for _ in lanes]
        for record in records:
            split[zlib.crc32(record.key.encode()) % len(lanes)].append(record)
        for lane, part in zip(lanes, split, strict=True):
            if part:
                lane.push(part)

    def _report_age(self, result: ReadResult) -> None:
        if result.millis_behind is not None:
            self._m_age.set(result.millis_behind / 1000)
        elif result.records:
            self._m_age.set(max(0.0, time.time() - result.records[-1].arrival))
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
        ended = final and self.ended and self.progress.outstanding == 0 and not self.ctx.stopping.is_set()
        if checkpoint == self._saved and not ended:
            return
        with anyio.CancelScope(shield=True):
            await self.ctx.store.put(
                self.ctx.config.name,
                self.shard.shard_id,
                Checkpoint(checkpoint or self._saved, ended, self.shard.incarnation),
            )
        self._saved = checkpoint or self._saved


_sequence_number = attrgetter("sequence_number")
_size = attrgetter("size")


def _take_prefix(buffer: deque[StreamRecord], batch_size: int) -> list[StreamRecord]:
    """Pop the next batch off a lane's buffer: batch_size records, or fewer when 6 MB
    is reached. Summing the sizes and popping run in C when the whole prefix fits,
    the usual case; only a prefix near the cap is cut record by record."""
    count = min(batch_size, len(buffer))
    if ENVELOPE_BYTES + sum(map(_size, islice(buffer, count))) + count - 1 > MAX_PAYLOAD_BYTES:
        count = fitting_prefix(map(_size, buffer), batch_size)
    if count == len(buffer):
        batch = list(buffer)
        buffer.clear()
        return batch
    return list(starmap(buffer.popleft, repeat((), count)))


class _CloseWindow:
    """Said by a lane's batch source when the open tumbling window is over."""


CLOSE_WINDOW = _CloseWindow()


class ExpiredIterator(Exception):
    """The shard iterator expired (Kinesis: 5 minutes); renew it from the last record read."""


class Lane:
    """Records of one shard whose keys hash here, invoked in order, one batch at a time."""

    def __init__(self, poller: ShardPoller, index: int) -> None:
        self.poller = poller
        self.ctx = poller.ctx
        self.index = index
        self.buffer: deque[StreamRecord] = deque()
        self.finished = False
        self._wakeup = anyio.Event()
        self._first_buffered_at = 0.0
        self.window: WindowState | None = None
        """The open tumbling window (tumbling_window_in_seconds > 0); one state per lane."""
        self._log = poller._log.bind(lane=index)
        m = self.ctx.config.name
        metrics = self.ctx.metrics
        self._m_invoked = metrics.invoked.labels(m)
        self._m_failed = metrics.failed_invoke.labels(m)
        self._m_batch = metrics.batch_size.labels(m)
        self._m_in_flight = metrics.in_flight.labels(m)
        self._m_dropped = metrics.dropped.labels(m)
        self._m_delivered = metrics.on_failure_delivered.labels(m)
        self._m_delivery_failures = metrics.destination_delivery_failures.labels(m)

    def push(self, records: list[StreamRecord]) -> None:
        if not self.buffer:
            self._first_buffered_at = time.monotonic()
        self.buffer.extend(records)
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    if self.window is not None and self.poller.ended and not self.ctx.stopping.is_set():
                        # The shard ended: its window is closed early; children start fresh.
                        await self._close_window(terminated_early=True)
                    return
                if isinstance(batch, _CloseWindow):
                    if not await self._close_window(terminated_early=False):
                        return
                    continue
                self._m_in_flight.inc()
                try:
                    done = await self._handle(batch, 0)
                finally:
                    self._m_in_flight.dec()
                if not done:
                    return
                if self.window is not None and state_too_large(self.window.state):
                    if not await self._close_window(terminated_early=True):
                        return
        finally:
            self.finished = True
            self.poller.progressed()

    def _complete(self, batch: Sequence[StreamRecord]) -> None:
        progress = self.poller.progress
        if batch and batch[-1].index - batch[0].index == len(batch) - 1:
            # A lane's records are in read order, so this batch is one run of indices.
            progress.complete(range(batch[0].index, batch[-1].index + 1))
        else:
            progress.complete(r.index for r in batch)
        self.poller.progressed()

    def _succeeded(self, batch: Sequence[StreamRecord], response: Any) -> None:
        """The function processed these records. Within a tumbling window they are held
        back until the window's final invocation succeeded, then checkpointed together."""
        if self.window is None:
            self._complete(batch)
            return
        self.window.state = returned_state(response) or {}
        self.window.indices.extend(r.index for r in batch)

    async def _next_batch(self) -> list[StreamRecord] | _CloseWindow | None:
        """Wait for records, then take a batch: batch_size, the window, or 6 MB; or say
        that the open tumbling window is over."""
        config = self.ctx.config
        window = config.maximum_batching_window_in_seconds
        while True:
            if self.ctx.stopping.is_set():
                return None
            if self.window is not None and self._window_over():
                return CLOSE_WINDOW
            if self.buffer:
                deadline = self._first_buffered_at + window
                remaining = deadline - time.monotonic()
                if len(self.buffer) >= config.batch_size or remaining <= 0 or self.poller._reading_done:
                    return self._take()
                await self._sleep_until_woken(remaining)
                continue
            if self.poller._reading_done:
                return None
            await self._sleep_until_woken(self._window_time_left())

    async def _sleep_until_woken(self, seconds: float | None) -> None:
        self._wakeup = anyio.Event()
        with anyio.move_on_after(seconds if seconds is not None else math.inf):
            await self._wakeup.wait()

    def _window_over(self) -> bool:
        """A tumbling window ends when a record of a later window is next, or when a read
        sent after its end came back empty (no record of it can still be unread)."""
        assert self.window is not None
        if self.buffer:
            return self._window_of(self.buffer[0]) != self.window.window
        poller = self.poller
        return poller.caught_up and poller.caught_up_since >= self.window.window.end

    def _window_time_left(self) -> float | None:
        if self.window is None:
            return None
        return max(0.05, self.window.window.end - time.time())

    def _window_of(self, record: StreamRecord) -> Window:
        return window_of(record.arrival, self.ctx.config.tumbling_window_in_seconds)

    def _take(self) -> list[StreamRecord]:
        buffer = self.buffer
        if self.ctx.config.tumbling_window_in_seconds > 0:
            batch = self._take_within_window()
        else:
            batch = _take_prefix(buffer, self.ctx.config.batch_size)
        self._first_buffered_at = time.monotonic()
        self.poller.space_freed()
        return batch

    def _take_within_window(self) -> list[StreamRecord]:
        """A batch never spans two tumbling windows; the first batch opens the window."""
        budget = BatchBudget(self.ctx.config.batch_size)
        batch: list[StreamRecord] = []
        buffer = self.buffer
        window = self._window_of(buffer[0])
        while buffer and budget.fits(buffer[0].size) and self._window_of(buffer[0]) == window:
            record = buffer.popleft()
            budget.add(record.size)
            batch.append(record)
        if self.window is None:
            self.window = WindowState(window)
        return batch

    async def _close_window(self, *, terminated_early: bool) -> bool:
        """The final invocation of a window: no records, the final state. Lambda retries it
        until it succeeds (processing of the lane is suspended meanwhile); then the window's
        records are checkpointed and the state dropped. False if stopping abandoned it."""
        current = self.window
        assert current is not None
        event = window_event(
            [],
            current,
            shard_id=self.poller.shard.shard_id,
            stream_arn=self.ctx.config.event_source_arn,
            final=True,
            terminated_early=terminated_early,
        )
        attempts = 0
        while True:
            if not self.poller.owned():
                return False
            result = await self.ctx.function.invoke(event)
            if result.ok:
                break
            attempts += 1
            self._log.warning(
                "window.final_invoke_failed",
                window_start=event["window"]["start"],
                attempt=attempts,
                throttled=result.throttled,
                error_type=result.failure.error_type if result.failure else None,
            )
            if not await self._pause(min(RETRY_BACKOFF[0] * 2 ** (attempts - 1), RETRY_BACKOFF[1])):
                return False
        self._log.info(
            "window.closed",
            window_start=event["window"]["start"],
            records=len(current.indices),
            terminated_early=terminated_early,
        )
        self.poller.progress.complete(current.indices)
        self.poller.progressed()
        # A state that outgrew its limit ends the window early; the same window goes on fresh.
        self.window = WindowState(current.window) if terminated_early and not self.poller.ended else None
        return True

    async def _handle(self, batch: list[StreamRecord], attempts: int) -> bool:
        """Invoke until every record of the batch succeeded or was given up; False if
        stopping abandoned it (nothing of what remains is checkpointed)."""
        config = self.ctx.config
        invocations = 0
        while batch:
            if self.ctx.stopping.is_set():
                return False
            expired, batch = self._split_expired(batch)
            if expired:
                if not await self._give_up(expired, "RecordAgeExceeded", max(invocations, 1), None):
                    return False
                if not batch:
                    return True
            if not self.poller.owned():
                return False
            result = await self._invoke(batch)
            invocations += 1
            if result.throttled:
                if not await self._pause(RETRY_BACKOFF[1]):
                    return False
                continue
            verdict = self._judge(result, batch)
            if verdict.failed_ids is not None and not verdict.failed_ids:
                self._succeeded(batch, result.response)
                return True
            self._m_failed.inc(len(batch))
            function_error = "Unhandled" if result.failure is not None else None
            if verdict.failed_ids is not None:
                lowest = min(verdict.failed_ids, key=int)
                cut = next(i for i, r in enumerate(batch) if r.sequence_number == lowest)
                self._succeeded(batch[:cut], result.response)
                batch = batch[cut:]
                self._log.info("batch.partial_failure", retry_from=lowest, size=len(batch))
            elif config.bisect_batch_on_function_error and len(batch) > 1:
                half = len(batch) // 2
                self._log.info("batch.bisected", size=len(batch), halves=[half, len(batch) - half])
                for part in (batch[:half], batch[half:]):
                    if not await self._handle(part, attempts):
                        return False
                return True
            attempts += 1
            self._log.warning(
                "batch.failed",
                size=len(batch),
                attempt=attempts,
                reason=verdict.reason or "batchItemFailures",
                error_type=result.failure.error_type if result.failure else None,
            )
            if 0 <= config.maximum_retry_attempts < attempts:
                return await self._give_up(
                    batch, "RetryAttemptsExhausted", invocations, function_error, result.request_id
                )
            if not await self._pause(min(RETRY_BACKOFF[0] * 2 ** (attempts - 1), RETRY_BACKOFF[1])):
                return False
        return True

    def _judge(self, result: InvocationResult, batch: list[StreamRecord]) -> BatchVerdict:
        """AWS's partial batch response rules; within a tumbling window a response without
        a `state` object is a failed invocation."""
        if self.window is not None and result.ok and returned_state(result.response) is None:
            return BatchVerdict(None, "tumbling window response has no state object")
        report = self.ctx.config.report_batch_item_failures
        ids = {r.sequence_number for r in batch} if report else frozenset[str]()
        return judge(result, ids, report)

    async def _invoke(self, batch: list[StreamRecord]) -> InvocationResult:
        self._m_batch.observe(len(batch))
        self._m_invoked.inc(len(batch))
        records = [r.event for r in batch]
        if self.window is None:
            return await self.ctx.function.invoke({"Records": records})
        event = window_event(
            records,
            self.window,
            shard_id=self.poller.shard.shard_id,
            stream_arn=self.ctx.config.event_source_arn,
        )
        return await self.ctx.function.invoke(event)

    def _split_expired(self, batch: list[StreamRecord]) -> tuple[list[StreamRecord], list[StreamRecord]]:
        """Records older than maximum_record_age_in_seconds are given up without invoking."""
        max_age = self.ctx.config.maximum_record_age_in_seconds
        if max_age < 0:
            return [], batch
        oldest_allowed = time.time() - max_age
        cut = 0
        while cut < len(batch) and batch[cut].arrival < oldest_allowed:
            cut += 1
        return batch[:cut], batch[cut:]

    async def _pause(self, seconds: float) -> bool:
        """Sleep before a retry; False if the daemon is stopping (the batch is abandoned)."""
        with anyio.move_on_after(seconds):
            await self.ctx.stopping.wait()
        return not self.ctx.stopping.is_set()

    async def _give_up(
        self,
        batch: list[StreamRecord],
        condition: Literal["RetryAttemptsExhausted", "RecordAgeExceeded"],
        invocations: int,
        function_error: str | None,
        request_id: str | None = None,
    ) -> bool:
        """Deliver the batch's on-failure record, retrying until it is accepted, or drop it;
        then the batch is done. False if stopping came first (nothing is checkpointed)."""
        ctx = self.ctx
        first, last = batch[0], batch[-1]
        fields = dict(
            condition=condition,
            size=len(batch),
            first_sequence_number=first.sequence_number,
            last_sequence_number=last.sequence_number,
        )
        if ctx.destination is None:
            self._m_dropped.inc(len(batch))
            self._log.warning("batch.dropped", **fields)
            self._complete(batch)
            return True
        given_up = GivenUpBatch(
            source=ctx.source.family,
            shard_id=self.poller.shard.shard_id,
            stream_arn=ctx.config.event_source_arn,
            function_arn=ctx.function.arn,
            start_sequence_number=first.sequence_number,
            end_sequence_number=last.sequence_number,
            first_arrival=first.arrival,
            last_arrival=last.arrival,
            batch_size=len(batch),
            condition=condition,
            approximate_invoke_count=invocations,
            function_error=function_error,
            request_id=request_id or str(uuid.uuid4()),
            mapping_uuid=ctx.mapping_uuid,
        )
        now = datetime.now(UTC)
        record = failure_record(given_up, now=now)
        s3_object = None
        if ctx.destination.arn.split(":")[2] == "s3":
            payload = {"Records": [r.event for r in batch]}
            s3_object = s3_failure_object(given_up, payload, now=now, object_uuid=str(uuid.uuid4()))
        delay = RETRY_BACKOFF[0]
        while True:
            if not self.poller.owned():
                return False
            try:
                await ctx.destination.deliver(record, s3_object)
            except DeliveryFailed as exc:
                self._m_delivery_failures.inc()
                self._log.error("destination.delivery_failed", error=str(exc), retry_in=delay, **fields)
                if not await self._pause(delay):
                    return False
                delay = min(delay * 2, 30.0)
                continue
            self._m_delivered.inc(len(batch))
            self._log.info("destination.delivered", destination=ctx.destination.arn, **fields)
            self._complete(batch)
            return True
