"""The SQS receive path sizes a receive's records with one dumps when they all fit
(`esm.sources.sqs.runtime.add_fitting`): it must take exactly what `BatchBudget.add_fitting`
takes given each record's own size, and leave the budget in the same state, so the 6 MB
and batch-size limits hold as before."""

from __future__ import annotations

import dataclasses

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from esm.batching import BatchBudget
from esm.events.sqs import sqs_records
from esm.sources.sqs.runtime import add_fitting, record_size

QUEUE = "arn:aws:sqs:us-east-1:000000000000:q"


def records(bodies: list[str]) -> list[dict[str, object]]:
    messages = [
        {"MessageId": f"m{i}", "ReceiptHandle": f"r{i}", "Body": body, "MD5OfBody": "x"}
        for i, body in enumerate(bodies)
    ]
    return sqs_records(messages, queue_arn=QUEUE, region="us-east-1")


@settings(max_examples=300)
@given(
    bodies=st.lists(st.text(max_size=300), max_size=10),
    batch_size=st.integers(1, 30),
    max_bytes=st.integers(200, 4_000),
    already=st.lists(st.integers(1, 600), max_size=12),
)
def test_add_fitting_takes_what_per_record_sizes_take(
    bodies: list[str], batch_size: int, max_bytes: int, already: list[int]
) -> None:
    # Bodies with quotes, backslashes, control and non-ASCII characters (hypothesis text)
    # serialise longer than their length: the sizes must be the records' own.
    budget = BatchBudget(batch_size, max_bytes)
    budget.add_fitting(already)  # a batch part-gathered by earlier receives
    expected = dataclasses.replace(budget, sizes=list(budget.sizes))
    batch = records(bodies)

    taken = add_fitting(budget, batch)

    assert taken == expected.add_fitting([record_size(r) for r in batch])
    assert (budget.count, budget.size) == (expected.count, expected.size)


def test_a_receive_that_fits_is_sized_by_one_dumps_of_the_list() -> None:
    batch = records(['{"a": "x"}', 'quote " and \\ and é', "plain"])
    budget = BatchBudget(10)
    assert add_fitting(budget, batch) == 3
    assert budget.size == len(b'{"Records":[]}') + len(orjson.dumps(batch)) - 2
    assert budget.size == len(orjson.dumps({"Records": batch}))


def test_a_lone_record_over_the_cap_still_forms_a_batch_of_one() -> None:
    (big,) = records(["x" * 5_000])
    budget = BatchBudget(10, max_bytes=1_000)
    assert add_fitting(budget, [big]) == 1
    assert add_fitting(budget, records(["y"])) == 0  # nothing joins it
