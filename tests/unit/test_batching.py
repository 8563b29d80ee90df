"""Batch limits: the bulk paths give exactly BatchBudget's record-by-record answer."""

from __future__ import annotations

from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from esm.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, BatchBudget, fitting_prefix
from esm.sources.streams.lane import _take_prefix
from esm.sources.streams.records import StreamRecord

SIZES = st.lists(st.integers(1, 3_000), max_size=30)
LIMITS = st.tuples(st.integers(1, 12), st.integers(ENVELOPE_BYTES, 20_000))


def one_by_one(budget: BatchBudget, sizes: list[int]) -> int:
    taken = 0
    for size in sizes:
        if not budget.fits(size):
            break
        budget.add(size)
        taken += 1
    return taken


@given(already=SIZES, sizes=SIZES, limits=LIMITS)
def test_add_fitting_takes_what_fits_and_add_would_take(
    already: list[int], sizes: list[int], limits: tuple[int, int]
) -> None:
    batch_size, max_bytes = limits
    bulk, single = BatchBudget(batch_size, max_bytes), BatchBudget(batch_size, max_bytes)
    one_by_one(bulk, already)
    one_by_one(single, already)
    assert bulk.add_fitting(sizes) == one_by_one(single, sizes)
    assert (bulk.count, bulk.size) == (single.count, single.size)


@given(sizes=SIZES, limits=LIMITS)
def test_fitting_prefix_is_the_budget_rule(sizes: list[int], limits: tuple[int, int]) -> None:
    batch_size, max_bytes = limits
    assert fitting_prefix(sizes, batch_size, max_bytes) == one_by_one(
        BatchBudget(batch_size, max_bytes), sizes
    )


def test_a_record_larger_than_the_cap_still_forms_a_batch_of_one() -> None:
    budget = BatchBudget(10)
    assert budget.add_fitting([MAX_PAYLOAD_BYTES + 1, 1]) == 1
    assert budget.add_fitting([1]) == 0


@given(
    sizes=st.lists(st.integers(1, 3 * MAX_PAYLOAD_BYTES // 4), min_size=1, max_size=30),
    batch_size=st.integers(1, 12),
)
def test_a_lane_takes_the_batch_the_budget_rule_allows(sizes: list[int], batch_size: int) -> None:
    """Lanes pop their next batch in bulk (`_take_prefix`): the same records, in order."""
    records = deque(StreamRecord({}, str(i), "k", 0.0, size, i) for i, size in enumerate(sizes))
    batch = _take_prefix(records, batch_size)
    expected = fitting_prefix(sizes, batch_size)
    assert [r.index for r in batch] == list(range(expected))
    assert [r.index for r in records] == list(range(expected, len(sizes)))
