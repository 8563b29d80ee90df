"""The Kafka batch outcome policy: pure decisions from an invocation result."""

from __future__ import annotations

from typing import Any

from esm.invocation import FunctionFailure, InvocationResult
from esm.sources.kafka.policy import decide

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
