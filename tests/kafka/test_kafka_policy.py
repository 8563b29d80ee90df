"""The Kafka batch outcome policy: pure decisions from an invocation result."""

from __future__ import annotations

from typing import Any

import pytest

from esm.invocation import FunctionFailure, InvocationResult
from esm.sources.kafka.policy import decide, expired_prefix, retry_limit

KEY = "orders-2"
OFFSETS = [10, 11, 12]


def ok(response: Any = None) -> InvocationResult:
    return InvocationResult("r", 0.01, response=response)


def failed() -> InvocationResult:
    return InvocationResult("r", 0.01, failure=FunctionFailure("Error", "boom"))


def item(offset: Any, partition: str = KEY) -> dict[str, Any]:
    return {"itemIdentifier": {"partition": partition, "offset": offset}}


def test_success_commits_past_the_last_record() -> None:
    assert decide(ok(), KEY, OFFSETS, 0, -1, False).action == "commit"
    assert decide(ok(), KEY, OFFSETS, 0, -1, False).offset == 13


def test_function_error_retries_from_the_first_record_until_retries_run_out() -> None:
    retry = decide(failed(), KEY, OFFSETS, 1, 2, False)
    assert (retry.action, retry.offset, retry.counts_attempt) == ("retry", 10, True)
    given_up = decide(failed(), KEY, OFFSETS, 2, 2, False)
    assert (given_up.action, given_up.offset) == ("give_up", 13)
    assert decide(failed(), KEY, OFFSETS, 10_000, -1, False).action == "retry"


def test_throttle_does_not_use_up_an_attempt() -> None:
    throttled = decide(InvocationResult("r", 0, throttled=True), KEY, OFFSETS, 5, 0, False)
    assert (throttled.action, throttled.counts_attempt) == ("retry", False)


def test_partial_failure_retries_from_the_lowest_reported_offset() -> None:
    response = {"batchItemFailures": [item(12), item(11)]}
    decision = decide(ok(response), KEY, OFFSETS, 0, -1, True)
    assert (decision.action, decision.offset) == ("retry", 11)


def test_empty_failure_lists_are_success() -> None:
    for response in (None, "", {}, [], {"batchItemFailures": []}, {"batchItemFailures": None}):
        assert decide(ok(response), KEY, OFFSETS, 0, -1, True).action == "commit"


def test_malformed_identifiers_fail_the_whole_batch() -> None:
    for bad in (
        {"batchItemFailures": [{"itemIdentifier": "12"}]},
        {"batchItemFailures": [item(99)]},
        {"batchItemFailures": [item(11, "orders-3")]},
        {"batchItemFailures": [item(True)]},
        {"batchItemFailures": "x"},
        "not an object",
    ):
        decision = decide(ok(bad), KEY, OFFSETS, 0, -1, True)
        assert (decision.action, decision.offset) == ("retry", 10), bad


@pytest.mark.parametrize(
    ("configured", "has_destination", "effective"),
    [(-1, False, -1), (-1, True, 10), (3, True, 3), (0, False, 0), (10_000, True, 10_000)],
)
def test_retry_limit_caps_infinite_retries_at_10_with_a_destination(
    configured: int, has_destination: bool, effective: int
) -> None:
    assert retry_limit(configured, has_destination) == effective


NOW_MS = 1_000_000_000


@pytest.mark.parametrize(
    ("ages_s", "maximum", "expired"),
    [
        ([100, 90, 10], -1, 0),  # infinite
        ([100, 90, 10], 60, 2),  # the leading run older than 60 s
        ([100, 10, 90], 60, 1),  # only a leading run: order of commits stays
        ([10, 100], 60, 0),
        ([60, 61], 60, 0),  # exactly the maximum age is not older than it
        ([61], 60, 1),
    ],
)
def test_expired_prefix(ages_s: list[int], maximum: int, expired: int) -> None:
    stamps = [NOW_MS - age * 1000 for age in ages_s]
    assert expired_prefix(stamps, NOW_MS, maximum) == expired


@pytest.mark.parametrize(
    ("offsets", "result", "report", "retries", "maximum", "expected"),
    [
        # function error, bisect on: split in half, no attempt used
        ([10, 11, 12, 13], failed(), False, 0, 2, ("split", 10, 2, False)),
        ([10, 11, 12], failed(), False, 0, 2, ("split", 10, 1, False)),
        # a single record cannot be split: normal retries, then given up alone
        ([10], failed(), False, 0, 2, ("retry", 10, 0, True)),
        ([10], failed(), False, 2, 2, ("give_up", 11, 0, True)),
        # partial failure with bisect: split what is left from the reported offset
        (
            [10, 11, 12, 13],
            ok({"batchItemFailures": [item(11, "orders-2")]}),
            True,
            0,
            2,
            ("split", 11, 1, False),
        ),
        # retries exhausted is not checked before splitting: halves are new batches
        ([10, 11], failed(), False, 5, 2, ("split", 10, 1, False)),
    ],
)
def test_bisect(
    offsets: list[int],
    result: InvocationResult,
    report: bool,
    retries: int,
    maximum: int,
    expected: tuple[str, int, int, bool],
) -> None:
    decision = decide(result, "orders-2", offsets, retries, maximum, report, bisect=True)
    got = (decision.action, decision.offset, decision.split_size, decision.counts_attempt)
    assert got == expected


def test_give_up_says_where_the_failure_starts_and_whether_the_function_raised() -> None:
    raised = decide(failed(), KEY, OFFSETS, 1, 1, False)
    assert (raised.failed_from, raised.function_error) == (10, "Unhandled")
    reported = decide(ok({"batchItemFailures": [item(12)]}), KEY, OFFSETS, 1, 1, True)
    assert (reported.action, reported.offset) == ("give_up", 13)
    assert (reported.failed_from, reported.function_error) == (12, None)


@pytest.mark.parametrize(
    ("high", "next_offset", "lag"),
    [(10, 4, 6), (10, 10, 0), (None, 4, None), (10, None, None), (3, 5, 0)],
)
def test_offset_lag(high: int | None, next_offset: int | None, lag: int | None) -> None:
    from esm.sources.kafka.metrics import offset_lag

    assert offset_lag(high, next_offset) == lag
