"""The idle read budget: Lambda's once-a-second reads until caught-up shards outnumber it."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest

from esm.idle_pacing import (
    FIRST_READ_GATHER,
    JITTER,
    TICK,
    TIMER_RESOLUTION,
    FirstReadGate,
    IdleReadPacer,
    ReadTimer,
)


def test_a_shard_that_just_went_quiet_backs_off_from_a_quarter_second_to_one_second() -> None:
    pacing = IdleReadPacer(reads_per_second=50).shard()
    waits = [pacing.after_empty_read() for _ in range(6)]
    assert waits[:4] == pytest.approx([0.25, 0.375, 0.5625, 0.84375])
    for wait in waits[4:]:
        assert 1 - JITTER - TIMER_RESOLUTION <= wait <= 1 - TIMER_RESOLUTION


def test_many_caught_up_shards_share_the_budget() -> None:
    pacer = IdleReadPacer(reads_per_second=10)
    shards = [pacer.shard() for _ in range(100)]
    for pacing in shards:
        for _ in range(4):
            pacing.after_empty_read()
    assert pacer.caught_up == 100
    # 100 shards at 10 reads a second: each is read every 10 s. The first of those waits
    # is spread over 1..10 s so that shards started together don't read together; each
    # wait ends on the next tick (whole second), so that reads due together run together.
    first = [pacing.after_empty_read() for pacing in shards]
    assert all(1 <= wait <= 10 + TICK for wait in first)
    assert max(first) - min(first) > 5
    wait = shards[0].after_empty_read()
    assert 10 * (1 - JITTER) <= wait <= 10 * (1 + JITTER) + TICK


def test_waits_past_the_budget_end_on_a_tick() -> None:
    pacer = IdleReadPacer(reads_per_second=1)
    shards = [pacer.shard() for _ in range(5)]
    for pacing in shards:
        for _ in range(5):
            pacing.after_empty_read()
    wait = shards[0].after_empty_read()
    assert (time.monotonic() + wait) % TICK == pytest.approx(0, abs=1e-3) or (
        (time.monotonic() + wait) % TICK == pytest.approx(TICK, abs=1e-3)
    )


def test_a_shard_with_records_leaves_the_budget_and_starts_its_backoff_again() -> None:
    pacer = IdleReadPacer(reads_per_second=1)
    busy, quiet = pacer.shard(), pacer.shard()
    for _ in range(5):
        busy.after_empty_read()
        quiet.after_empty_read()
    assert pacer.caught_up == 2
    busy.after_records()
    assert pacer.caught_up == 1
    assert busy.after_empty_read() == pytest.approx(0.25)
    assert pacer.caught_up == 2


def test_a_stopped_poller_is_counted_out_once() -> None:
    pacer = IdleReadPacer(reads_per_second=1)
    pacing = pacer.shard()
    pacing.after_empty_read()
    pacing.stop()
    pacing.stop()
    assert pacer.caught_up == 0


def test_the_longest_wait_gauge_bounds_every_wait_handed_out() -> None:
    """The gauge was the shared interval (1.33 s for 40 shards at 30 reads/s) while jitter and
    tick alignment made real waits up to 1.97 s measured; now no wait exceeds it."""
    pacer = IdleReadPacer(reads_per_second=30)
    shards = [pacer.shard() for _ in range(40)]
    waits = []
    for _ in range(12):
        for pacing in shards:
            gauge_before = pacer.longest_wait()
            wait = pacing.after_empty_read()
            waits.append(wait)
            assert wait <= gauge_before, (wait, gauge_before)
            assert wait <= pacer.longest_wait() + 1e-3
    assert max(waits) > pacer.shared_interval()  # what the old gauge said was the longest


def test_the_longest_wait_gauge_counts_waits_still_running() -> None:
    """Shards that turn busy shrink the shared interval, but waits handed out before still run."""
    pacer = IdleReadPacer(reads_per_second=1)
    shards = [pacer.shard() for _ in range(20)]
    for pacing in shards:
        for _ in range(6):
            pacing.after_empty_read()
    longest = max(pacing.after_empty_read() for pacing in shards)
    for pacing in shards[1:]:
        pacing.after_records()
    assert pacer.shared_interval() == 1.0
    assert pacer.longest_wait() >= longest - 0.1


def test_within_the_budget_the_longest_wait_is_lambdas_second() -> None:
    pacer = IdleReadPacer(reads_per_second=30)
    pacing = pacer.shard()
    waits = [pacing.after_empty_read() for _ in range(50)]
    assert max(waits) <= pacer.longest_wait() == pytest.approx(1.0)


def test_by_default_every_caught_up_shard_is_read_about_once_a_second() -> None:
    """Lambda reads each shard about once a second: with no budget configured, 1,000
    caught-up shards are each read 0.9-1 s after their last read started, not every
    1,000/30 s as before."""
    pacer = IdleReadPacer()
    assert pacer.reads_per_second is None
    shards = [pacer.shard() for _ in range(1_000)]
    for pacing in shards:
        for _ in range(4):
            pacing.after_empty_read()
    # Each wait counts from the start of the read that came back empty (here 20 ms ago),
    # and the read timer may round it up by less than a slot: never past a second.
    waits = [pacing.after_empty_read(read_took=0.02) for pacing in shards]
    assert pacer.caught_up == 1_000
    assert all(
        0.9 - 0.02 - TIMER_RESOLUTION <= wait <= 1 - 0.02 - TIMER_RESOLUTION for wait in waits
    )
    assert pacer.shared_interval() == 1.0
    assert pacer.longest_wait() == pytest.approx(1.0)


@pytest.mark.anyio
async def test_the_read_timer_resolves_each_wait_once_its_time_has_come() -> None:
    timer = ReadTimer()
    loop = asyncio.get_running_loop()
    start = loop.time()
    delays = [0.05 + i * 0.003 for i in range(100)][::-1]
    futures = [(delay, timer.due_in(delay)) for delay in delays]
    done_at: dict[float, float] = {}
    for delay, future in sorted(futures, key=lambda pair: pair[0]):
        await future
        done_at[delay] = loop.time() - start
    for delay, at in done_at.items():
        # Never early (the loop may call back a hair before its time); within a slot or so.
        assert at >= delay - TIMER_RESOLUTION / 2, (delay, at)
    assert timer.pending == 0


@pytest.mark.anyio
async def test_a_wait_resolved_early_is_skipped_and_a_later_earlier_wait_rearms() -> None:
    timer = ReadTimer()
    late = timer.due_in(30)
    stopped = timer.due_in(20)
    stopped.set_result(None)  # what a poller told to stop does with its own wait
    soon = timer.due_in(0.01)  # earlier than every filed wait: the one timer moves up
    with anyio.fail_after(5):
        await soon
    assert not late.done()
    assert timer.pending == 1
    late.cancel()
    assert timer.pending == 0


@pytest.mark.anyio
async def test_an_exact_wait_is_not_rounded_up_to_a_slot() -> None:
    """A busy shard's wait for the read limit is on a drain's critical path: with 1 s slots
    a rounded wait of 10 ms would end at the next whole second."""
    timer = ReadTimer(resolution=1.0)
    loop = asyncio.get_running_loop()
    start = loop.time()
    if start % 1.0 > 0.5:  # keep the next slot boundary more than 0.5 s away
        await asyncio.sleep(1.0 - start % 1.0 + 0.01)
        start = loop.time()
    exact = timer.due_in(0.01, exact=True)
    rounded = timer.due_in(0.01)
    assert timer.pending == 1  # only the rounded wait is filed under a slot
    with anyio.fail_after(5):
        await exact
    assert loop.time() - start >= 0.01 - 0.002
    assert not rounded.done()
    rounded.cancel()


@pytest.mark.anyio
async def test_shards_started_together_read_first_once_the_last_has_its_iterator() -> None:
    gate = FirstReadGate()
    for _ in range(3):
        gate.joined()
    first, second = gate.positioned(), gate.positioned()
    assert first is not None and second is not None
    assert not first.done() and not second.done()
    assert gate.positioned() is None  # the last one reads at once, and so do the others
    assert first.done() and second.done()
    gate.joined()
    assert gate.positioned() is None  # a shard started alone never waits


@pytest.mark.anyio
async def test_a_shard_waits_for_the_others_first_iterators_at_most_the_gather_time() -> None:
    gate = FirstReadGate()
    gate.joined()
    gate.joined()  # this one never gets its iterator
    waiting = gate.positioned()
    assert waiting is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    with anyio.fail_after(5):
        await waiting
    assert loop.time() - start >= FIRST_READ_GATHER - 0.002
