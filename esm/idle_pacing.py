"""How often caught-up shards are read: once a second each, as Lambda does, by default.

Lambda reads every shard of a mapping about once a second, so a record written to a quiet
shard reaches the function within about a second; esm does the same unless told otherwise.
Every empty GetRecords still costs esm CPU (~100-170 us at 1,000 idle shards, BENCHMARKS.md
figure 5), so a process with many idle shards may opt in to a shared budget, `[daemon]
idle_shard_reads_per_second`: with fewer caught-up shards (the last read returned nothing)
than the budget, each is read once a second; with more, each is read every
`caught_up / budget` seconds, at the price of latency for the first record written to a
long-quiet shard. A shard whose read returns records is read again at once either way.

Every shard poller of the process waits between reads on one `ReadTimer` (one timer handle
for all of them) rather than on a timer and a cancel scope each, and shards that start
together send their first reads together (`FirstReadGate`).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time

DEFAULT_IDLE_SHARD_READS_PER_SECOND: float | None = None
"""No shared budget: every caught-up shard is read about once a second, as Lambda does."""
LAMBDA_IDLE_READ_INTERVAL = 1.0
"""Seconds between reads of a caught-up shard while the budget allows it."""
FIRST_IDLE_READ_INTERVAL = 0.25
"""The first wait after records stopped: a short pause in a busy shard costs little."""
IDLE_BACKOFF = 1.5
TICK = 1.0
"""Reads of caught-up shards run on whole seconds (see IdleReadPacer.on_tick)."""
JITTER = 0.1
"""Spread of each wait, so shards that started together don't read in bursts: at Lambda's
pace a read starts 0.9-1 s after the last one started (never later: at least once a
second); under the budget each wait is within ±10% of the shared interval."""


class IdleReadPacer:
    """One per process: counts caught-up shards and says how long each waits.

    `reads_per_second` None (the default) reads every caught-up shard about once a second;
    a number is the opt-in budget shared by all of them."""

    def __init__(
        self, reads_per_second: float | None = DEFAULT_IDLE_SHARD_READS_PER_SECOND
    ) -> None:
        self.reads_per_second = reads_per_second
        self.caught_up = 0
        self.timer = ReadTimer()
        """What every shard poller of the process waits on between reads."""
        self.first_reads = FirstReadGate()
        self._random = random.Random()
        self._latest_wake = 0.0
        """Monotonic time at which the longest wait handed out so far ends."""

    def shared_interval(self) -> float:
        """The wait that keeps all caught-up shards together within the budget (the mean
        spacing of a shard's reads, before jitter and tick alignment)."""
        if self.reads_per_second is None:
            return LAMBDA_IDLE_READ_INTERVAL
        return max(LAMBDA_IDLE_READ_INTERVAL, self.caught_up / self.reads_per_second)

    def longest_wait(self) -> float:
        """The longest pause between two reads of a caught-up shard, now: what a record
        written to a quiet shard waits at most before the read that returns it starts.

        A wait handed out now is at most the shared interval plus its jitter, plus up to one
        tick to end on a whole second; a wait handed out earlier, when more shards were
        caught up, may still be running and is counted until it ends. This is what the
        `esm_idle_shard_read_interval_seconds` gauge reports."""
        shared = self.shared_interval()
        if shared > LAMBDA_IDLE_READ_INTERVAL:
            bound = shared * (1 + JITTER) + TICK
        else:
            bound = LAMBDA_IDLE_READ_INTERVAL
        return max(bound, self._latest_wake - time.monotonic())

    def issued(self, seconds: float) -> float:
        """Note a wait handed to a shard (for `longest_wait`) and return it."""
        self._latest_wake = max(self._latest_wake, time.monotonic() + seconds)
        return seconds

    def shard(self) -> ShardPacing:
        return ShardPacing(self)

    def lambda_pace(self) -> float:
        """The time from one read's start to the next at Lambda's pace: 0.9-1 s, less the
        read timer's rounding up, so that every caught-up shard is read at least once a
        second."""
        low = LAMBDA_IDLE_READ_INTERVAL * (1 - JITTER)
        return self._random.uniform(low, LAMBDA_IDLE_READ_INTERVAL) - TIMER_RESOLUTION

    def jittered(self, seconds: float) -> float:
        return seconds * self._random.uniform(1 - JITTER, 1 + JITTER)

    def uniform(self, low: float, high: float) -> float:
        return self._random.uniform(low, high)

    def on_tick(self, seconds: float) -> float:
        """`seconds`, lengthened to end on the next whole second of the monotonic clock.

        The reads due within one second then run back to back: a read costs about a
        third of the CPU of one made alone after a pause, when caches are cold and
        the core has slowed down (measured on bench.fake_kinesis: 0.5 ms vs 1.4 ms)."""
        now = time.monotonic()
        return math.ceil((now + seconds) / TICK) * TICK - now


class ShardPacing:
    """One shard's idle backoff: 0.25 s, then longer, up to the pacer's shared interval.

    While the budget binds, the first shared wait is drawn uniformly between 1 s and the
    shared interval, the later ones within ±10% of it, each ending on a tick."""

    def __init__(self, pacer: IdleReadPacer) -> None:
        self._pacer = pacer
        self._counted = False
        self._next = FIRST_IDLE_READ_INTERVAL
        self._spread = False

    def after_empty_read(self, read_took: float = 0.0) -> float:
        """Seconds to wait before the next read of a shard whose last read was empty and
        took `read_took` seconds: at Lambda's pace the spacing counts from the start of
        that read (so a slow read does not stretch it past a second), under the budget
        from its end (where each wait ends on a tick)."""
        pacer = self._pacer
        if not self._counted:
            self._counted = True
            pacer.caught_up += 1
        return pacer.issued(self._next_wait(read_took))

    def _next_wait(self, read_took: float) -> float:
        pacer = self._pacer
        ramp = self._next
        if ramp < LAMBDA_IDLE_READ_INTERVAL:
            self._next = min(ramp * IDLE_BACKOFF, LAMBDA_IDLE_READ_INTERVAL)
            return ramp
        shared = pacer.shared_interval()
        if shared <= LAMBDA_IDLE_READ_INTERVAL:
            return max(0.0, pacer.lambda_pace() - read_took)  # Lambda's pace
        if not self._spread:
            # Shards started together would otherwise all read in the same tick; one
            # uniform wait spreads them over the interval's ticks.
            self._spread = True
            return pacer.on_tick(pacer.uniform(LAMBDA_IDLE_READ_INTERVAL, shared))
        return pacer.on_tick(pacer.jittered(shared))

    def after_records(self) -> None:
        """Records came: the shard is busy again and leaves the shared budget."""
        self._next = FIRST_IDLE_READ_INTERVAL
        self._spread = False
        self.stop()

    def stop(self) -> None:
        if self._counted:
            self._counted = False
            self._pacer.caught_up -= 1


FIRST_READ_GATHER = 0.05
"""The longest a shard that has its first iterator waits for the shards started with it."""


class FirstReadGate:
    """Shards that start together send their first GetRecords together.

    A mapping asks for every shard's first iterator at once, but one answer comes first
    (on the connection already open), its shard reads at once, and parsing that page
    (~15 ms for 10,000 records) holds up the loop before the other shards get theirs. Since
    Kinesis allows 5 reads per second per shard, every later read of those shards starts
    that much later too: a 6-page shard's last read is due 1 s after its first read
    (BENCHMARKS.md figure 2: ~25 ms of a 4-shard drain). So a shard positioned while others
    are still getting their iterator waits for them, at most FIRST_READ_GATHER."""

    def __init__(self) -> None:
        self._positioning = 0
        self._waiting: list[asyncio.Future[None]] = []

    def joined(self) -> None:
        """A shard asks for its first iterator."""
        self._positioning += 1

    def positioned(self) -> asyncio.Future[None] | None:
        """The shard has its iterator (or gave up getting it): None to read now, else a
        future resolved when no shard is still getting one, or after FIRST_READ_GATHER."""
        self._positioning -= 1
        if self._positioning <= 0:
            self._positioning = 0
            waiting, self._waiting = self._waiting, []
            for other in waiting:
                _resolve(other)
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        loop.call_later(FIRST_READ_GATHER, _resolve, future)
        self._waiting = [f for f in self._waiting if not f.done()]
        self._waiting.append(future)
        return future


TIMER_RESOLUTION = 0.01
"""Waits end on 10 ms slots: the shards whose waits end in one slot wake together, on one
timer callback (1,000 shards read once a second: ~100 wake-ups a second, not 1,000)."""


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ReadTimer:
    """One timer for the waits between reads of every shard poller of a process.

    A poller's wait is a bare future: `due_in` files it under the 10 ms slot its wait ends
    in, and one event-loop timer, set for the earliest slot, resolves every future of each
    slot that has come. The caller may resolve its future earlier itself (to stop); a
    resolved or cancelled future is skipped. Compared with anyio's `move_on_after` around an
    `Event.wait` per wait (a cancel scope, an event waiter and a timer handle per read),
    this is a future and a list append per read (BENCHMARKS.md figure 5)."""

    def __init__(self, resolution: float = TIMER_RESOLUTION) -> None:
        self._resolution = resolution
        self._slots: dict[int, list[asyncio.Future[None]]] = {}
        self._order: list[int] = []
        """Heap of the slots that hold futures."""
        self._armed: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def pending(self) -> int:
        return sum(1 for waits in self._slots.values() for w in waits if not w.done())

    def due_in(self, seconds: float, exact: bool = False) -> asyncio.Future[None]:
        """A future resolved once `seconds` have passed (rounded up to the next slot), or
        `exact`ly then, on a timer of its own: a busy shard's wait for Kinesis's read limit
        is on a drain's critical path, where rounding up would add up to a slot each read."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
            self._slots.clear()
            self._order.clear()
            self._armed, self._handle = None, None
        future: asyncio.Future[None] = loop.create_future()
        if exact:
            loop.call_later(max(0.0, seconds), _resolve, future)
            return future
        slot = math.ceil((loop.time() + max(0.0, seconds)) / self._resolution)
        waits = self._slots.get(slot)
        if waits is not None:
            waits.append(future)
            return future
        self._slots[slot] = [future]
        heapq.heappush(self._order, slot)
        if self._armed is None or slot < self._armed:
            self._arm(loop, slot)
        return future

    def _arm(self, loop: asyncio.AbstractEventLoop, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = slot
        self._handle = loop.call_at(slot * self._resolution, self._fire)

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        self._armed, self._handle = None, None
        now = loop.time()
        order, slots = self._order, self._slots
        # A slot is due once its time has come (the loop may call back a hair early).
        while order and order[0] * self._resolution <= now + self._resolution / 2:
            for future in slots.pop(heapq.heappop(order)):
                if not future.done():
                    future.set_result(None)
        if order:
            self._arm(loop, order[0])
