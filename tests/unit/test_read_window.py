"""Kinesis's per-shard read limit (5 GetRecords in any one second) as the poller keeps it."""

from __future__ import annotations

import random

import pytest

from esm.sources.streams.poller import READS_PER_SECOND, ReadWindow


def test_a_shard_behind_reads_its_first_five_pages_at_once_and_the_sixth_a_second_later() -> None:
    """The old fixed 0.2 s spacing counted from each read's start added every slow read's
    delay to the next; the window lets 5 reads go as fast as they come back."""
    window = ReadWindow()
    now = 100.0
    for _ in range(READS_PER_SECOND):
        assert window.wait(now) <= 0
        window.started(now)
        now += 0.03  # a page read and handed on
    assert window.wait(now) == pytest.approx(100.0 + 1.0 - now)
    assert window.wait(101.0) == pytest.approx(0.0)


def test_no_second_ever_holds_more_than_five_read_starts() -> None:
    rng = random.Random(7)
    window = ReadWindow()
    now, starts = 0.0, []
    for _ in range(2_000):
        now += max(0.0, window.wait(now)) + rng.choice([0.0, 0.001, 0.05, 0.3])
        if window.wait(now) > 0:
            continue
        window.started(now)
        starts.append(now)
    for i in range(len(starts) - READS_PER_SECOND):
        assert starts[i + READS_PER_SECOND] - starts[i] >= 1.0 - 1e-9
