"""Checkpoint arithmetic: the checkpoint never passes a record that is not done."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from esm.shard_progress import ShardProgress


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


@given(st.integers(min_value=1, max_value=60).flatmap(lambda n: st.tuples(st.just(n), st.permutations(range(n)), st.integers(0, n))))
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
