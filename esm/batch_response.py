"""Partial batch responses (ReportBatchItemFailures): AWS's rules, as pure functions.

Full success: null, "", [], {}, a response without `batchItemFailures`, or one whose
`batchItemFailures` is null or []. Full failure (the whole batch is retried): a function
error, a body that is not valid JSON or not an object, `batchItemFailures` that is not a
list, an entry that is not an object with a non-empty string `itemIdentifier`, or an
identifier that is not in the batch. Otherwise exactly the listed items failed.
A family whose identifier is not a string (Kafka's `{"partition", "offset"}` object) passes
`identify`, which turns one into the string its batch ids use or raises `ValueError(reason)`.
Source of the rules: AWS's docs and recordings of AWS (see the spec, sections 2 and 3).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from esm.invokers import InvocationResult


@dataclass(frozen=True)
class BatchVerdict:
    """`failed_ids` is None when the whole batch failed, else the ids to retry (may be empty)."""

    failed_ids: frozenset[str] | None
    reason: str = ""

    @property
    def whole_batch_failed(self) -> bool:
        return self.failed_ids is None


SUCCESS = BatchVerdict(frozenset())


def string_identifier(identifier: Any) -> str:
    """SQS, Kinesis, DynamoDB: an itemIdentifier is a non-empty string."""
    if not isinstance(identifier, str) or not identifier:
        raise ValueError("an itemIdentifier is missing, null or empty")
    return identifier


Identify = Callable[[Any], str]
"""A raw itemIdentifier -> the id it names; raises ValueError(reason) when malformed."""


def judge(
    result: InvocationResult,
    batch_ids: Collection[str],
    report_batch_item_failures: bool,
    identify: Identify = string_identifier,
) -> BatchVerdict:
    """Decide which items of a batch failed, from the invocation result."""
    if result.throttled:
        return BatchVerdict(None, "throttled")
    if result.failure is not None:
        return BatchVerdict(None, "function error")
    if not report_batch_item_failures:
        return SUCCESS
    if result.invalid_response:
        return BatchVerdict(None, "response is not valid JSON")
    return parse_batch_item_failures(result.response, batch_ids, identify)


def parse_batch_item_failures(
    response: Any, batch_ids: Collection[str], identify: Identify = string_identifier
) -> BatchVerdict:
    if response is None or response == "" or response == [] or response == {}:
        return SUCCESS
    if not isinstance(response, dict):
        return BatchVerdict(None, "response is not a JSON object")
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return SUCCESS
    if not isinstance(failures, list):
        return BatchVerdict(None, "batchItemFailures is not a list")
    failed: set[str] = set()
    for entry in failures:
        raw = entry.get("itemIdentifier") if isinstance(entry, dict) else None
        try:
            identifier = identify(raw)
        except ValueError as exc:
            return BatchVerdict(None, str(exc))
        if identifier not in batch_ids:
            return BatchVerdict(None, "an itemIdentifier is not in the batch")
        failed.add(identifier)
    return BatchVerdict(frozenset(failed))
