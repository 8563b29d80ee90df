"""The idle read budget: Lambda's once-a-second reads until caught-up shards outnumber it."""

from __future__ import annotations

import time

import pytest

from esm.idle_pacing import JITTER, TICK, IdleReadPacer


def test_a_shard_that_just_went_quiet_backs_off_from_a_quarter_second_to_one_second() -> None:
    pacing = IdleReadPacer(reads_per_second=50).shard()
    waits = [pacing.after_empty_read() for _ in range(6)]
    assert waits[:4] == pytest.approx([0.25, 0.375, 0.5625, 0.84375])
    for wait in waits[4:]:
        assert 1 - JITTER <= wait <= 1 + JITTER


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
