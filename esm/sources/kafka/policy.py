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
- `bisect_batch_on_function_error`: a failed batch of more than one record is split in
  half and the first half retried; splitting does not use up a retry attempt (as for
  streams). A single failing record is retried, then given up, alone.
- `maximum_record_age_in_seconds`: records older than this are given up without invoking
  the function (condition `RecordAgeExceeded`).
- With an on-failure destination and infinite retries AWS applies at most 10 retries
  (kafka-on-failure-destination: "Lambda automatically applies a maximum of 10 retry
  attempts").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from esm.invocation import InvocationResult

DESTINATION_RETRY_CAP = 10
"""AWS's retry limit when a destination is set and maximum_retry_attempts is -1."""


@dataclass(frozen=True)
class Decision:
    action: Literal["commit", "retry", "give_up", "split"]
    offset: int
    """commit/give_up: the next offset to read (commit up to it); retry/split: retry from it."""
    reason: str = ""
    counts_attempt: bool = True
    """False for throttles and splits: AWS does not use up a retry attempt for them."""
    failed_from: int | None = None
    """give_up: the first offset given up (earlier offsets of the batch succeeded)."""
    function_error: str | None = None
    """give_up: "Unhandled" when the function raised; None when it reported the failure."""
    split_size: int = 0
    """split: how many records the retried first half has."""


def retry_limit(maximum_retry_attempts: int, has_destination: bool) -> int:
    """The effective `maximum_retry_attempts` (-1: forever)."""
    if maximum_retry_attempts == -1 and has_destination:
        return DESTINATION_RETRY_CAP
    return maximum_retry_attempts


def expired_prefix(timestamps_ms: Sequence[int], now_ms: int, maximum_age_s: int) -> int:
    """How many leading records of a batch are older than `maximum_age_s` (-1: none).

    Only a leading run is given up so that offsets stay committed in order; a partition's
    timestamps are non-decreasing in practice (CreateTime per producer, LogAppendTime)."""
    if maximum_age_s < 0:
        return 0
    oldest_allowed = now_ms - maximum_age_s * 1000
    count = 0
    for stamp in timestamps_ms:
        if stamp >= oldest_allowed:
            break
        count += 1
    return count


def decide(
    result: InvocationResult,
    partition_key: str,
    offsets: Sequence[int],
    retries_done: int,
    maximum_retry_attempts: int,
    report_batch_item_failures: bool,
    bisect: bool = False,
) -> Decision:
    """The outcome of one invocation of `offsets` (ascending) of one partition.

    `maximum_retry_attempts` is the effective limit (`retry_limit`)."""
    first, after_last = offsets[0], offsets[-1] + 1
    if result.throttled:
        return Decision("retry", first, "throttled", counts_attempt=False)
    failed = _Failure(offsets, retries_done, maximum_retry_attempts, bisect)
    if result.failure is not None:
        return failed(first, "function error", "Unhandled")
    if not report_batch_item_failures:
        return Decision("commit", after_last)
    if result.invalid_response:
        return failed(first, "invalid JSON", None)
    lowest, problem = lowest_failed_offset(result.response, partition_key, offsets)
    if problem:
        return failed(first, problem, None)
    if lowest is None:
        return Decision("commit", after_last)
    return failed(lowest, "partial failure", None)


@dataclass(frozen=True)
class _Failure:
    offsets: Sequence[int]
    retries_done: int
    maximum: int
    bisect: bool

    def __call__(self, failed_from: int, reason: str, function_error: str | None) -> Decision:
        remaining = [o for o in self.offsets if o >= failed_from]
        if self.bisect and len(remaining) > 1:
            return Decision(
                "split", failed_from, reason, counts_attempt=False, split_size=len(remaining) // 2
            )
        if 0 <= self.maximum <= self.retries_done:
            return Decision(
                "give_up",
                self.offsets[-1] + 1,
                f"{reason}; retries exhausted",
                failed_from=failed_from,
                function_error=function_error,
            )
        return Decision("retry", failed_from, reason)


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
