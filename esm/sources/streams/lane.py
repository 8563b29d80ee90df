"""One lane of a shard: its buffer, the batch cut, tumbling windows, and the loop that
invokes a batch until the outcome policy (`policy.py`) says every record is done.

A shard poller hands each lane the records whose keys hash to it (parallelization factor),
so records of one key keep their order; a lane invokes one batch at a time and blocks only
itself. A batch is cut at `batch_size`, at `maximum_batching_window_in_seconds` after its
first record was buffered, or before 6 MB. With `tumbling_window_in_seconds`, a batch never
spans two windows and a window's records are checkpointed only after its final invocation
succeeded (`tumbling.py`).

A lane sees its shard only through `LaneShard`: it reports records done and buffer space
freed, and asks whether reading is over, whether an empty read confirmed a window's end and
whether the shard is still owned (fleet mode) before each invocation.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain
from operator import attrgetter
from typing import Any, Protocol

import anyio

from esm.batch_response import BatchVerdict, judge
from esm.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, BatchBudget, fitting_prefix
from esm.invokers import InvocationResult
from esm.sources.streams.context import ShardContext
from esm.sources.streams.give_up import OnFailure
from esm.sources.streams.policy import (
    Bisect,
    Condition,
    Decision,
    Done,
    GiveUp,
    RetryAfter,
    RetryRules,
    Segment,
    backoff,
    decide,
    expired,
    next_segments,
    without_expired,
)
from esm.sources.streams.records import Indices, RecordRun, StreamRecord, joined
from esm.sources.streams.tumbling import (
    Window,
    WindowState,
    returned_state,
    state_too_large,
    window_event,
    window_of,
)


class LaneShard(Protocol):
    """What a lane needs from its shard poller, and nothing more."""

    @property
    def shard_id(self) -> str: ...

    @property
    def ended(self) -> bool:
        """The shard was read to its end (SHARD_END)."""
        ...

    @property
    def reading_done(self) -> bool:
        """No more records will be pushed (the shard ended, or the poller is stopping)."""
        ...

    def read_empty_since(self, moment: float) -> bool:
        """Did a read sent at or after `moment` (epoch seconds) come back empty?"""
        ...

    def complete(self, indices: Iterable[int]) -> None:
        """These records are done (processed, filtered out or given up)."""
        ...

    def progressed(self) -> None:
        """Something changed that the checkpointer should look at."""
        ...

    def space_freed(self) -> None:
        """Records left the buffer: the reader may read again."""
        ...

    def owned(self) -> bool:
        """May this worker still invoke records of the shard (fleet lease fresh)?"""
        ...


_event = attrgetter("event")


def _take_runs(runs: deque[RecordRun], offset: int, batch_size: int) -> tuple[RecordRun, int]:
    """Cut the next batch off a lane's runs, starting `offset` records into the first:
    batch_size records, or fewer when 6 MB is reached. Returns the batch and the offset
    into what is then the first run. Whole lists are sliced; records are measured only
    when the runs' size bounds do not already fit under the cap."""
    spans = _spans(runs, offset, batch_size)
    count = sum(stop - start for _, start, stop in spans)
    bounds = sum(run.bound(start, stop) for run, start, stop in spans)
    if ENVELOPE_BYTES + bounds + count - 1 > MAX_PAYLOAD_BYTES:
        sizes = chain.from_iterable(run.measured_sizes()[start:stop] for run, start, stop in spans)
        spans = _spans(runs, offset, fitting_prefix(sizes, count))
    parts = []
    for run, start, stop in spans:
        parts.append(run.slice(start, stop))
        if stop == len(run):
            runs.popleft()
            offset = 0
        else:
            offset = stop
    return joined(parts), offset


def _spans(runs: deque[RecordRun], offset: int, count: int) -> list[tuple[RecordRun, int, int]]:
    """The (run, start, stop) slices that hold the next `count` records."""
    spans = []
    for run in runs:
        stop = min(len(run), offset + count)
        spans.append((run, offset, stop))
        count -= stop - offset
        offset = 0
        if not count:
            break
    return spans


class _CloseWindow:
    """Said by a lane's batch source when the open tumbling window is over."""


CLOSE_WINDOW = _CloseWindow()


class Lane:
    """Records of one shard whose keys hash here, invoked in order, one batch at a time."""

    def __init__(self, shard: LaneShard, ctx: ShardContext, index: int, log: Any) -> None:
        self.shard = shard
        self.ctx = ctx
        self.index = index
        self.buffer: deque[StreamRecord] = deque()
        """Records of a lane with tumbling windows (cut record by record, by window)."""
        self._runs: deque[RecordRun] = deque()
        """Records of every other lane, as the runs the poller pushed (cut by slicing)."""
        self._offset = 0
        """Records of the first run already taken."""
        self._count = 0
        """Records in `_runs` not yet taken."""
        self._tumbling = ctx.config.tumbling_window_in_seconds > 0
        self.finished = False
        self._wakeup = anyio.Event()
        self._first_buffered_at = 0.0
        self.window: WindowState | None = None
        """The open tumbling window (tumbling_window_in_seconds > 0); one state per lane."""
        self._log = log.bind(lane=index)
        config = ctx.config
        self._rules = RetryRules(
            maximum_retry_attempts=config.maximum_retry_attempts,
            maximum_record_age_in_seconds=config.maximum_record_age_in_seconds,
            bisect_batch_on_function_error=config.bisect_batch_on_function_error,
            report_batch_item_failures=config.report_batch_item_failures,
        )
        self._on_failure = OnFailure(ctx, shard.shard_id, self._log, self._pause, shard.owned)
        metrics = ctx.metrics
        self._m_invoked = metrics.invoked
        self._m_failed = metrics.failed_invoke
        self._m_batch = metrics.batch_size
        self._m_in_flight = metrics.in_flight

    @property
    def buffered(self) -> int:
        return len(self.buffer) + self._count

    @property
    def window_end(self) -> float | None:
        """End of the open tumbling window, if one is open."""
        return self.window.window.end if self.window is not None else None

    def push(self, records: RecordRun) -> None:
        if not self.buffered:
            self._first_buffered_at = time.monotonic()
        if self._tumbling:
            self.buffer.extend(records.records())
        else:
            self._runs.append(records)
            self._count += len(records)
        self.wake()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    if self.window is not None and self.shard.ended and not self._stopping():
                        # The shard ended: its window is closed early; children start fresh.
                        await self._close_window(terminated_early=True)
                    return
                if isinstance(batch, _CloseWindow):
                    if not await self._close_window(terminated_early=False):
                        return
                    continue
                self._m_in_flight.inc()
                try:
                    done = await self._handle(batch)
                finally:
                    self._m_in_flight.dec()
                if not done:
                    return
                too_large = self.window is not None and state_too_large(self.window.state)
                if too_large and not await self._close_window(terminated_early=True):
                    return
        finally:
            self.finished = True
            self.shard.progressed()

    def _stopping(self) -> bool:
        return self.ctx.stopping.is_set()

    # --- buffer and batch cut ---------------------------------------------------------------

    async def _next_batch(self) -> RecordRun | list[StreamRecord] | _CloseWindow | None:
        """Wait for records, then take a batch: batch_size, the window, or 6 MB; or say
        that the open tumbling window is over."""
        config = self.ctx.config
        window = config.maximum_batching_window_in_seconds
        while True:
            if self._stopping():
                return None
            if self.window is not None and self._window_over():
                return CLOSE_WINDOW
            if self.buffered:
                deadline = self._first_buffered_at + window
                remaining = deadline - time.monotonic()
                if self.buffered >= config.batch_size or remaining <= 0 or self.shard.reading_done:
                    return self._take()
                await self._sleep_until_woken(remaining)
                continue
            if self.shard.reading_done:
                return None
            await self._sleep_until_woken(self._window_time_left())

    async def _sleep_until_woken(self, seconds: float | None) -> None:
        self._wakeup = anyio.Event()
        with anyio.move_on_after(seconds if seconds is not None else math.inf):
            await self._wakeup.wait()

    def _take(self) -> RecordRun | list[StreamRecord]:
        batch: RecordRun | list[StreamRecord]
        if self._tumbling:
            batch = self._take_within_window()
        else:
            batch, self._offset = _take_runs(self._runs, self._offset, self.ctx.config.batch_size)
            self._count -= len(batch)
        self._first_buffered_at = time.monotonic()
        self.shard.space_freed()
        return batch

    # --- tumbling windows -------------------------------------------------------------------

    def _window_over(self) -> bool:
        """A tumbling window ends when a record of a later window is next, or when a read
        sent after its end came back empty (no record of it can still be unread)."""
        assert self.window is not None
        if self.buffer:
            return self._window_of(self.buffer[0]) != self.window.window
        return self.shard.read_empty_since(self.window.window.end)

    def _window_time_left(self) -> float | None:
        if self.window is None:
            return None
        return max(0.05, self.window.window.end - time.time())

    def _window_of(self, record: StreamRecord) -> Window:
        return window_of(record.arrival, self.ctx.config.tumbling_window_in_seconds)

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
            shard_id=self.shard.shard_id,
            stream_arn=self.ctx.config.event_source_arn,
            final=True,
            terminated_early=terminated_early,
        )
        attempts = 0
        while True:
            if not self.shard.owned():
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
            if not await self._pause(backoff(attempts)):
                return False
        self._log.info(
            "window.closed",
            window_start=event["window"]["start"],
            records=len(current.indices),
            terminated_early=terminated_early,
        )
        self.shard.complete(current.indices)
        # A state that outgrew its limit ends the window early; the same window goes on fresh.
        going_on = terminated_early and not self.shard.ended
        self.window = WindowState(current.window) if going_on else None
        return True

    # --- invoking a batch until the policy says it is done ------------------------------------

    async def _handle(self, batch: RecordRun | list[StreamRecord]) -> bool:
        """Invoke until every record of the batch succeeded or was given up. A run is
        invoked as it is; only when that first invocation does not simply succeed (or
        leading records are too old) does it become `StreamRecord`s for the policy."""
        if isinstance(batch, list):
            return await self._handle_records(batch)
        rules = self._rules
        if self._stopping():
            return False
        if rules.maximum_record_age_in_seconds >= 0 and expired(
            batch.events, time.time(), rules, arrival=batch.fields.arrival
        ):
            return await self._handle_records(batch.records())
        if not self.shard.owned():
            return False
        result = await self._invoke(batch.events)
        report = rules.report_batch_item_failures
        ids = set(batch.sequence_numbers) if report else frozenset[str]()
        verdict = judge(result, ids, report)
        if not result.throttled and verdict.failed_ids is not None and not verdict.failed_ids:
            self._complete(batch.indices)  # Done: the policy's answer for this verdict
            return True
        return await self._handle_records(batch.records(), (result, verdict))

    async def _handle_records(
        self,
        batch: list[StreamRecord],
        first: tuple[InvocationResult, BatchVerdict] | None = None,
    ) -> bool:
        """Invoke until every record of the batch succeeded or was given up, asking the
        policy what to do after each invocation (bisect halves wait on a stack, first half
        on top). `first` is the batch's first invocation when it was already made. False
        if stopping abandoned it (nothing of what remains is checkpointed)."""
        rules = self._rules
        work: list[Segment[StreamRecord]] = [Segment(batch)]
        while work:
            segment: Segment[StreamRecord] | None = work.pop()
            assert segment is not None
            if first is not None:
                (result, verdict), first = first, None
                records = segment.records
            else:
                if self._stopping():
                    return False
                too_old = expired(segment.records, time.time(), rules)
                if too_old is not None:
                    records = segment.records[: too_old.count]
                    invocations = max(segment.invocations, 1)
                    if not await self._give_up(records, too_old.condition, invocations, None):
                        return False
                    segment = without_expired(segment, too_old)
                    if segment is None:
                        continue
                if not self.shard.owned():
                    return False
                records = segment.records
                result = await self._invoke(list(map(_event, records)))
                verdict = self._judge(result, records)
            decision = decide(verdict, records, segment.attempts, rules, throttled=result.throttled)
            if not await self._apply(decision, verdict, segment, result):
                return False
            work.extend(reversed(next_segments(segment, decision)))
        return True

    async def _apply(
        self,
        decision: Decision,
        verdict: BatchVerdict,
        segment: Segment[StreamRecord],
        result: InvocationResult,
    ) -> bool:
        """Carry a decision out: checkpoint what succeeded, log, give up, or wait before the
        retry. False if stopping came first."""
        records = segment.records
        if isinstance(decision, Done):
            self._succeeded(records, result.response)
            return True
        if isinstance(decision, RetryAfter) and decision.throttled:
            return await self._pause(decision.delay)
        self._m_failed.inc(len(records))
        if isinstance(decision, Bisect):
            half = decision.at
            self._log.info("batch.bisected", size=len(records), halves=[half, len(records) - half])
            return True
        if verdict.failed_ids is not None:
            cut = 0 if isinstance(decision, RetryAfter) else decision.succeeded
            self._succeeded(records[:cut], result.response)
            records = records[cut:]
            self._log.info(
                "batch.partial_failure", retry_from=records[0].sequence_number, size=len(records)
            )
        self._log.warning(
            "batch.failed",
            size=len(records),
            attempt=decision.attempts,
            reason=verdict.reason or "batchItemFailures",
            error_type=result.failure.error_type if result.failure else None,
        )
        if isinstance(decision, GiveUp):
            function_error = "Unhandled" if result.failure is not None else None
            invocations = segment.invocations + 1
            return await self._give_up(
                records, decision.condition, invocations, function_error, result.request_id
            )
        return await self._pause(decision.delay)

    def _judge(self, result: InvocationResult, batch: Sequence[StreamRecord]) -> BatchVerdict:
        """AWS's partial batch response rules; within a tumbling window a response without
        a `state` object is a failed invocation."""
        if self.window is not None and result.ok and returned_state(result.response) is None:
            return BatchVerdict(None, "tumbling window response has no state object")
        report = self._rules.report_batch_item_failures
        ids = {r.sequence_number for r in batch} if report else frozenset[str]()
        return judge(result, ids, report)

    async def _invoke(self, records: list[dict[str, Any]]) -> InvocationResult:
        self._m_batch.observe(len(records))
        self._m_invoked.inc(len(records))
        if self.window is None:
            return await self.ctx.function.invoke(self.ctx.envelope(records))
        event = window_event(
            records,
            self.window,
            shard_id=self.shard.shard_id,
            stream_arn=self.ctx.config.event_source_arn,
        )
        return await self.ctx.function.invoke(event)

    def _complete(self, indices: Indices) -> None:
        if type(indices) is not range and indices and indices[-1] - indices[0] == len(indices) - 1:
            # A lane's records are in read order, so these are one run of indices.
            indices = range(indices[0], indices[-1] + 1)
        self.shard.complete(indices)

    def _succeeded(self, batch: Sequence[StreamRecord], response: Any) -> None:
        """The function processed these records. Within a tumbling window they are held
        back until the window's final invocation succeeded, then checkpointed together."""
        if self.window is None:
            self._complete([r.index for r in batch])
            return
        self.window.state = returned_state(response) or {}
        self.window.indices.extend(r.index for r in batch)

    async def _give_up(
        self,
        batch: Sequence[StreamRecord],
        condition: Condition,
        invocations: int,
        function_error: str | None,
        request_id: str | None = None,
    ) -> bool:
        """The give-up path (`give_up.py`), then the records are done."""
        if not await self._on_failure.give_up(
            batch, condition, invocations, function_error, request_id
        ):
            return False
        self._complete([r.index for r in batch])
        return True

    async def _pause(self, seconds: float) -> bool:
        """Sleep before a retry; False if the daemon is stopping (the batch is abandoned)."""
        with anyio.move_on_after(seconds):
            await self.ctx.stopping.wait()
        return not self._stopping()
