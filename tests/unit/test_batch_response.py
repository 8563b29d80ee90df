"""AWS's rules for partial batch responses (ReportBatchItemFailures), as recorded from AWS."""

from __future__ import annotations

import pytest

from esm.batch_response import judge, parse_batch_item_failures
from esm.invokers import FunctionFailure, InvocationResult

IDS = {"a", "b", "c"}


@pytest.mark.parametrize(
    "response",
    ["", None, [], {}, {"batchItemFailures": []}, {"batchItemFailures": None}, {"statusCode": 200}],
)
def test_full_success_responses(response: object) -> None:
    verdict = parse_batch_item_failures(response, IDS)
    assert verdict.failed_ids == frozenset()


@pytest.mark.parametrize(
    "response",
    [
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"itemIdentifier": None}]},
        {"batchItemFailures": [{"foo": "a"}]},
        {"batchItemFailures": [{"foo": None}]},
        {"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]},
        {"batchItemFailures": [{"itemIdentifier": 1}]},
        {"batchItemFailures": ["a"]},
        {"batchItemFailures": "a"},
        {"batchItemFailures": {"itemIdentifier": "a"}},
        "not an object",
        [1, 2],
        42,
    ],
)
def test_full_failure_responses(response: object) -> None:
    verdict = parse_batch_item_failures(response, IDS)
    assert verdict.whole_batch_failed
    assert verdict.reason


def test_listed_items_fail_and_only_those() -> None:
    verdict = parse_batch_item_failures(
        {"batchItemFailures": [{"itemIdentifier": "b"}, {"itemIdentifier": "c"}]}, IDS
    )
    assert verdict.failed_ids == {"b", "c"}


def test_function_error_fails_whole_batch_even_with_reporting_on() -> None:
    result = InvocationResult("r", 0.1, failure=FunctionFailure("ValueError", "x"))
    assert judge(result, IDS, report_batch_item_failures=True).whole_batch_failed


def test_response_ignored_without_report_batch_item_failures() -> None:
    result = InvocationResult("r", 0.1, response={"batchItemFailures": [{"itemIdentifier": "a"}]})
    assert judge(result, IDS, report_batch_item_failures=False).failed_ids == frozenset()


def test_invalid_json_body_fails_whole_batch() -> None:
    result = InvocationResult("r", 0.1, invalid_response=True)
    assert judge(result, IDS, report_batch_item_failures=True).whole_batch_failed
