"""Kafka batches through the shared ordered-source policy: the {partition, offset}
identifier, offsets as positions, AWS's retry cap with a destination. Pure, no broker."""

from __future__ import annotations

from typing import Any

import pytest
from test_kafka_config import self_managed

from esm.batch_response import judge
from esm.invokers import FunctionFailure, InvocationResult
from esm.sources.kafka.items import OffsetPositions, item_identifier, retry_rules
from esm.sources.streams.policy import (
    Bisect,
    Done,
    GiveUp,
    RetryAfter,
    RetryFrom,
    RetryRules,
    backoff,
    decide,
)

KEY = "orders-2"
DOCS = [{"offset": o} for o in (10, 11, 13, 20)]  # offsets need not be contiguous
REPORT = RetryRules(report_batch_item_failures=True)


def ok(response: Any = None) -> InvocationResult:
    return InvocationResult("r", 0.01, response=response)


def failed() -> InvocationResult:
    return InvocationResult("r", 0.01, failure=FunctionFailure("Error", "boom"))


def item(offset: Any, partition: str = KEY) -> dict[str, Any]:
    return {"itemIdentifier": {"partition": partition, "offset": offset}}


def outcome(result: InvocationResult, rules: RetryRules = REPORT, attempts: int = 0) -> Any:
    positions = OffsetPositions(DOCS)
    verdict = judge(result, positions, rules.report_batch_item_failures, item_identifier(KEY))
    return decide(verdict, DOCS, attempts, rules, positions=positions), verdict


def test_partial_failure_retries_from_the_lowest_reported_offset() -> None:
    decision, _ = outcome(ok({"batchItemFailures": [item(20), item(13)]}))
    assert decision == RetryFrom(2, 1, backoff(1))  # 10 and 11 are done


def test_empty_failure_lists_are_success() -> None:
    for response in (None, "", {}, [], {"batchItemFailures": []}, {"batchItemFailures": None}):
        assert outcome(ok(response))[0] == Done()


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"batchItemFailures": [{"itemIdentifier": "13"}]}, "not a {partition, offset} object"),
        ({"batchItemFailures": [item(12)]}, "not in the batch"),
        ({"batchItemFailures": [item(11, "orders-3")]}, "another partition"),
        ({"batchItemFailures": [item(True)]}, "no integer offset"),
        ({"batchItemFailures": [item("11")]}, "no integer offset"),
        ({"batchItemFailures": "x"}, "not a list"),
        ("not an object", "not a JSON object"),
    ],
)
def test_malformed_identifiers_fail_the_whole_batch(response: Any, reason: str) -> None:
    decision, verdict = outcome(ok(response))
    assert verdict.whole_batch_failed and reason in verdict.reason
    assert decision == RetryAfter(1, backoff(1))


def test_function_error_gives_up_the_whole_batch_once_retries_are_used_up() -> None:
    rules = RetryRules(maximum_retry_attempts=2)
    assert outcome(failed(), rules, attempts=1)[0] == RetryAfter(2, backoff(2))
    assert outcome(failed(), rules, attempts=2)[0] == GiveUp("RetryAttemptsExhausted", 4, 3)


def test_bisect_splits_a_failed_batch_in_halves() -> None:
    rules = RetryRules(bisect_batch_on_function_error=True, maximum_retry_attempts=0)
    assert outcome(failed(), rules)[0] == Bisect(2)


def test_offset_positions_are_lazy_and_complete() -> None:
    positions = OffsetPositions(DOCS)
    assert len(positions) == 4
    assert positions._index is None  # nothing built until a failure list is read
    assert dict(positions) == {"10": 0, "11": 1, "13": 2, "20": 3}
    assert "12" not in positions


@pytest.mark.parametrize(
    ("configured", "destination", "effective"),
    [(-1, False, -1), (-1, True, 10), (3, True, 3), (0, False, 0), (10_000, True, 10_000)],
)
def test_retry_rules_cap_infinite_retries_at_10_with_a_destination(
    configured: int, destination: bool, effective: int
) -> None:
    raw: dict[str, Any] = {"maximum_retry_attempts": configured}
    if destination:
        arn = "arn:aws:sqs:us-east-1:123456789012:dlq"
        raw["destination_config"] = {"on_failure": {"destination": arn}}
    rules = retry_rules(self_managed(**raw))
    assert rules.maximum_retry_attempts == effective


def test_retry_rules_read_the_mapping() -> None:
    config = self_managed(
        bisect_batch_on_function_error=True,
        maximum_record_age_in_seconds=60,
        function_response_types=["ReportBatchItemFailures"],
    )
    assert retry_rules(config) == RetryRules(-1, 60, True, True)


@pytest.mark.parametrize(
    ("high", "next_offset", "lag"),
    [(10, 4, 6), (10, 10, 0), (None, 4, None), (10, None, None), (3, 5, 0)],
)
def test_offset_lag(high: int | None, next_offset: int | None, lag: int | None) -> None:
    from esm.sources.kafka.metrics import offset_lag

    assert offset_lag(high, next_offset) == lag
