"""Checkpoint arithmetic: the checkpoint never passes a record that is not done."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from esm.sources.streams.progress import ShardProgress


def test_checkpoint_waits_for_the_earliest_unfinished_record() -> None:
    progress = ShardProgress()
    progress.register(["10", "11", "12", "13"])
    progress.complete([1, 2])
    assert progress.checkpoint is None
    progress.complete([0])
    assert progress.checkpoint == "12"
    progress.complete([3])
    assert progress.checkpoint == "13"
    assert progress.outstanding == 0


def test_completing_twice_is_harmless() -> None:
    progress = ShardProgress()
    progress.register(["1", "2"])
    progress.complete([0])
    progress.complete([0, 0])
    assert progress.checkpoint == "1"
    assert progress.outstanding == 1


def test_indices_continue_across_registrations() -> None:
    progress = ShardProgress()
    assert progress.register(["1", "2"]) == 0
    assert progress.register(["3"]) == 2
    progress.complete([0, 1, 2])
    assert progress.checkpoint == "3"


@given(
    st.integers(min_value=1, max_value=60).flatmap(
        lambda n: st.tuples(st.just(n), st.permutations(range(n)), st.integers(0, n))
    )
)
def test_checkpoint_is_the_longest_done_prefix(case: tuple[int, list[int], int]) -> None:
    n, order, how_many = case
    progress = ShardProgress()
    progress.register(str(100 + i) for i in range(n))
    done = set(order[:how_many])
    progress.complete(order[:how_many])
    prefix = 0
    while prefix in done:
        prefix += 1
    expected = None if prefix == 0 else str(100 + prefix - 1)
    assert progress.checkpoint == expected
    assert progress.outstanding == n - prefix


@given(
    st.integers(min_value=1, max_value=40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.lists(st.tuples(st.integers(0, n), st.integers(0, n), st.booleans()), max_size=12),
        )
    )
)
def test_ranges_and_lists_complete_alike(case: tuple[int, list[tuple[int, int, bool]]]) -> None:
    """A batch completes as a range (the fast path) or as a list of indices: same result."""
    n, steps = case
    as_ranges, as_lists = ShardProgress(), ShardProgress()
    for progress in (as_ranges, as_lists):
        progress.register(str(100 + i) for i in range(n))
    done: set[int] = set()
    for a, b, use_range in steps:
        start, stop = min(a, b), max(a, b)
        as_ranges.complete(range(start, stop) if use_range else list(range(start, stop)))
        as_lists.complete(list(range(start, stop)))
        done.update(range(start, stop))
        prefix = 0
        while prefix in done:
            prefix += 1
        expected = None if prefix == 0 else str(100 + prefix - 1)
        assert as_ranges.checkpoint == as_lists.checkpoint == expected
        assert as_ranges.outstanding == as_lists.outstanding == n - prefix


def test_a_long_run_of_batches_keeps_its_checkpoint_right() -> None:
    progress = ShardProgress()
    for page in range(5):
        start = progress.register(str(10_000 * page + i) for i in range(3000))
        assert start == 3000 * page
        for batch in range(0, 3000, 700):
            progress.complete(range(start + batch, start + min(batch + 700, 3000)))
            assert progress.checkpoint == str(10_000 * page + min(batch + 700, 3000) - 1)
    assert progress.outstanding == 0
