"""How often caught-up shards are read: once a second, as Lambda does, until there are many.

Every GetRecords costs esm a few hundred microseconds of CPU whether or not it returns
records (signing, HTTP, the event loop). Lambda reads each shard about once a second; at
1,000 idle shards that is half a core spent on empty reads. So the reads of *caught-up*
shards (the last read returned nothing) share one budget per process, `[daemon]
idle_shard_reads_per_second`: with fewer caught-up shards than the budget, each is read
once a second; with more, each is read every `caught_up / budget` seconds. The price is
latency for the first record written to a long-quiet shard; a shard whose read returns
records is read again at once, so busy shards are never slowed.
"""

from __future__ import annotations

import math
import random
import time

DEFAULT_IDLE_SHARD_READS_PER_SECOND = 30.0
"""An empty read costs 0.5 ms of CPU on a fast endpoint, up to ~1.4 ms on a slow one (the
answers then come one by one): 1.5-4% of a core however many shards are idle."""
LAMBDA_IDLE_READ_INTERVAL = 1.0
"""Seconds between reads of a caught-up shard while the budget allows it."""
FIRST_IDLE_READ_INTERVAL = 0.25
"""The first wait after records stopped: a short pause in a busy shard costs little."""
IDLE_BACKOFF = 1.5
TICK = 1.0
"""Reads of caught-up shards run on whole seconds (see IdleReadPacer.on_tick)."""
JITTER = 0.1
"""Spread of each wait (±10%), so shards that started together don't read in bursts."""


class IdleReadPacer:
    """One per process: counts caught-up shards and says how long each waits."""

    def __init__(self, reads_per_second: float) -> None:
        self.reads_per_second = reads_per_second
        self.caught_up = 0
        self._random = random.Random()
        self._latest_wake = 0.0
        """Monotonic time at which the longest wait handed out so far ends."""

    def shared_interval(self) -> float:
        """The wait that keeps all caught-up shards together within the budget (the mean
        spacing of a shard's reads, before jitter and tick alignment)."""
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
            bound = LAMBDA_IDLE_READ_INTERVAL * (1 + JITTER)
        return max(bound, self._latest_wake - time.monotonic())

    def issued(self, seconds: float) -> float:
        """Note a wait handed to a shard (for `longest_wait`) and return it."""
        self._latest_wake = max(self._latest_wake, time.monotonic() + seconds)
        return seconds

    def shard(self) -> ShardPacing:
        return ShardPacing(self)

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

    def after_empty_read(self) -> float:
        """Seconds to wait before the next read of a shard whose last read was empty."""
        pacer = self._pacer
        if not self._counted:
            self._counted = True
            pacer.caught_up += 1
        return pacer.issued(self._next_wait())

    def _next_wait(self) -> float:
        pacer = self._pacer
        ramp = self._next
        if ramp < LAMBDA_IDLE_READ_INTERVAL:
            self._next = min(ramp * IDLE_BACKOFF, LAMBDA_IDLE_READ_INTERVAL)
            return ramp
        shared = pacer.shared_interval()
        if shared <= LAMBDA_IDLE_READ_INTERVAL:
            return pacer.jittered(shared)  # within budget: Lambda's pace
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
