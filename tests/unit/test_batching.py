"""Batch limits: the bulk paths give exactly BatchBudget's record-by-record answer."""

from __future__ import annotations

from collections import deque

import orjson
from hypothesis import given
from hypothesis import strategies as st

from esm.batching import ENVELOPE_BYTES, MAX_PAYLOAD_BYTES, BatchBudget, fitting_prefix
from esm.sources.streams.lane import _take_runs
from esm.sources.streams.records import RecordFields, RecordRun, joined

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


FIELDS = RecordFields(key=lambda event: "k", arrival=lambda event: 0.0)


def run_of(sizes: list[int], first: int, measured: bool, slack: int) -> RecordRun:
    """A run of records whose sizes are known, or only bounded (measured on demand)."""
    events = [{"n": first + i, "size": size} for i, size in enumerate(sizes)]
    return RecordRun(
        events,
        [str(first + i) for i in range(len(sizes))],
        list(sizes) if measured else None,
        sum(sizes) + slack,
        FIELDS,
        lambda events: [event["size"] for event in events],
        range(first, first + len(sizes)),
    )


@given(
    runs=st.lists(
        st.tuples(
            st.lists(st.integers(1, 3 * MAX_PAYLOAD_BYTES // 4), min_size=1, max_size=8),
            st.booleans(),
            st.integers(0, MAX_PAYLOAD_BYTES),
        ),
        min_size=1,
        max_size=6,
    ),
    batch_size=st.integers(1, 12),
)
def test_a_lane_cuts_the_batches_the_budget_rule_allows(
    runs: list[tuple[list[int], bool, int]], batch_size: int
) -> None:
    """Lanes cut batches off their runs by slicing (`_take_runs`), measuring records only
    when the runs' size bounds do not fit: the same records, in order, as BatchBudget's
    record-by-record rule takes from the whole sequence."""
    buffer: deque[RecordRun] = deque()
    sizes: list[int] = []
    for run_sizes, measured, slack in runs:
        buffer.append(run_of(run_sizes, len(sizes), measured, slack))
        sizes.extend(run_sizes)
    offset, taken = 0, 0
    while buffer:
        batch, offset = _take_runs(buffer, offset, batch_size)
        expected = fitting_prefix(sizes[taken:], batch_size)
        assert list(batch.indices) == list(range(taken, taken + expected))
        assert [e["n"] for e in batch.events] == list(range(taken, taken + expected))
        assert batch.sequence_numbers == [str(i) for i in batch.indices]
        taken += expected
    assert taken == len(sizes)


def test_a_run_becomes_the_stream_records_of_its_lists_wherever_it_was_cut() -> None:
    """Slices, filtered copies and joins keep every record's event, sequence number and
    read index together; as StreamRecords (a failed batch) each gets its key and arrival
    from its event and a size (measured by the page's rule, or exactly once joined)."""
    fields = RecordFields(key=lambda e: f"k{e['n'] % 3}", arrival=lambda e: float(e["n"]))
    first, second = run_of([10, 20, 30, 40], 0, False, 5), run_of([50, 60], 4, True, 0)
    first.fields = second.fields = fields
    kept = first.keep([True, False, True, True])
    assert list(kept.indices) == [0, 2, 3] and kept.sequence_numbers == ["0", "2", "3"]
    batch = joined([kept.slice(1, 3), second])
    assert list(batch.indices) == [2, 3, 4, 5] and batch.sizes is None
    records = batch.records()
    assert [(r.index, r.sequence_number, r.key, r.arrival) for r in records] == [
        (2, "2", "k2", 2.0),
        (3, "3", "k0", 3.0),
        (4, "4", "k1", 4.0),
        (5, "5", "k2", 5.0),
    ]
    assert [r.size for r in records] == [len(orjson.dumps(r.event)) for r in records]
    assert [r.size for r in first.records()] == [10, 20, 30, 40]  # the page's own measure
    contiguous = joined([first.slice(0, 2), first.slice(2, 4)])
    assert contiguous.indices == range(0, 4) and contiguous.events == first.events
