"""What happens to a Kafka batch after its invocation: commit, retry, or give up. Pure.

The single decision point of the family, kept small on purpose so that the streams
family's shared pure outcome policy can replace it without touching the runtime. Must not
do I/O or know about the client.

AWS rules (Lambda developer guide, kafka-retry-configurations and with-kafka "partial
batch responses"):
- A batch that succeeded (or whose records were all filtered out) is committed past its
  last record.
- A failed batch is retried from its first record, blocking only its partition, until it
  succeeds or `maximum_retry_attempts` (-1: forever) retries are used up; then it is given
  up and committed past. A throttle (the function could not run) is retried without using
  up an attempt.
- With ReportBatchItemFailures a response lists
  `{"itemIdentifier": {"partition": "<topic>-<partition>", "offset": N}}`; everything
  before the lowest reported offset is done and the batch is retried from that offset.
  A malformed response, or an identifier not in the batch, fails the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from esm.invocation import InvocationResult


@dataclass(frozen=True)
class Decision:
    action: Literal["commit", "retry", "give_up"]
    offset: int
    """commit/give_up: the next offset to read (commit up to it); retry: retry from it."""
    reason: str = ""
    counts_attempt: bool = True
    """False for throttles: AWS does not use up a retry attempt for them."""


def decide(
    result: InvocationResult,
    partition_key: str,
    offsets: Sequence[int],
    retries_done: int,
    maximum_retry_attempts: int,
    report_batch_item_failures: bool,
) -> Decision:
    """The outcome of one invocation of `offsets` (ascending) of one partition."""
    first, after_last = offsets[0], offsets[-1] + 1
    if result.throttled:
        return Decision("retry", first, "throttled", counts_attempt=False)
    if result.failure is not None:
        return _failed(first, after_last, retries_done, maximum_retry_attempts, "function error")
    if not report_batch_item_failures:
        return Decision("commit", after_last)
    if result.invalid_response:
        return _failed(first, after_last, retries_done, maximum_retry_attempts, "invalid JSON")
    lowest, problem = lowest_failed_offset(result.response, partition_key, offsets)
    if problem:
        return _failed(first, after_last, retries_done, maximum_retry_attempts, problem)
    if lowest is None:
        return Decision("commit", after_last)
    return _failed(lowest, after_last, retries_done, maximum_retry_attempts, "partial failure")


def _failed(first: int, after_last: int, retries_done: int, maximum: int, reason: str) -> Decision:
    if 0 <= maximum <= retries_done:
        return Decision("give_up", after_last, f"{reason}; retries exhausted")
    return Decision("retry", first, reason)


def lowest_failed_offset(
    response: Any, partition_key: str, offsets: Sequence[int]
) -> tuple[int | None, str]:
    """(lowest reported offset or None for full success, problem or "") of a response."""
    if response is None or response == "" or response == [] or response == {}:
        return None, ""
    if not isinstance(response, dict):
        return None, "response is not a JSON object"
    failures = response.get("batchItemFailures")
    if failures is None or failures == []:
        return None, ""
    if not isinstance(failures, list):
        return None, "batchItemFailures is not a list"
    known = set(offsets)
    lowest: int | None = None
    for entry in failures:
        identifier = entry.get("itemIdentifier") if isinstance(entry, dict) else None
        if not isinstance(identifier, dict):
            return None, "an itemIdentifier is not a {partition, offset} object"
        offset = identifier.get("offset")
        if identifier.get("partition") != partition_key or not _is_int(offset):
            return None, "an itemIdentifier names another partition or no integer offset"
        if offset not in known:
            return None, "an itemIdentifier offset is not in the batch"
        lowest = offset if lowest is None else min(lowest, offset)
    return lowest, ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
