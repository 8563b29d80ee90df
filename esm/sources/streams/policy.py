"""What happens to a batch after an invocation: Lambda's error rules for ordered sources, as
pure functions (no I/O, no clock, no awaits).

Given a verdict, a batch, the attempts it has used and the mapping's rules, `decide` answers
one of `Done`, `RetryFrom` (a record on), `Bisect`, `RetryAfter` (the whole batch, after a
delay) or `GiveUp` (and why); `expired` says which leading records are too old to invoke.
`Segment` and `next_segments` keep the work left on one batch (bisect halves included), so
the lane loops over segments instead of recursing. The rules (spec section 3; Lambda's docs
"Kinesis/DynamoDB error handling"):

- A function error retries the batch until it succeeds, `maximum_retry_attempts` is used up
  (-1: until the records expire), or its records are older than
  `maximum_record_age_in_seconds` (-1: never). A record too old is given up *before* it is
  invoked again.
- `bisect_batch_on_function_error` splits a failed batch in halves, first half first.
  Splitting does not use up an attempt: each half starts with the attempts of the batch.
- With ReportBatchItemFailures, the records before the lowest reported item are done and the
  batch is retried from it; each such retry counts as an attempt. A report that does not
  parse, or names an item not in the batch, fails the whole batch (`esm.batch_response`).
- Throttles and unreachable functions retry the whole batch after `THROTTLE_DELAY`, without
  using up an attempt.
- Retries back off exponentially from `RETRY_BACKOFF[0]` to `RETRY_BACKOFF[1]` seconds.

Nothing here knows shards or sequence numbers: a batch is an ordered sequence of items with
an `item_id` (what a partial batch response names) and an `arrival` time, so a family with
partitions and offsets uses it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from esm.batch_response import BatchVerdict

RETRY_BACKOFF = (0.1, 10.0)
"""First and longest wait (seconds) between retries of a failed batch."""
THROTTLE_DELAY = RETRY_BACKOFF[1]
"""Wait before retrying a throttled batch (no attempt is used up)."""

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]
"""Why records were given up, in the words of Lambda's on-failure record."""


class Item(Protocol):
    @property
    def item_id(self) -> str: ...

    @property
    def arrival(self) -> float: ...


ItemT = TypeVar("ItemT", bound=Item)


@dataclass(frozen=True)
class RetryRules:
    """The mapping settings the policy reads (from `MappingConfig`)."""

    maximum_retry_attempts: int = -1
    maximum_record_age_in_seconds: int = -1
    bisect_batch_on_function_error: bool = False
    report_batch_item_failures: bool = False


@dataclass(frozen=True)
class Done:
    """Every record of the batch succeeded."""


@dataclass(frozen=True)
class RetryFrom:
    """Partial failure: the first `succeeded` records are done; retry the rest after `delay`."""

    succeeded: int
    attempts: int
    delay: float


@dataclass(frozen=True)
class RetryAfter:
    """Retry the whole batch after `delay`; a throttle keeps `attempts` unchanged."""

    attempts: int
    delay: float
    throttled: bool = False


@dataclass(frozen=True)
class Bisect:
    """Invoke `batch[:at]` then `batch[at:]`, each with the batch's attempts."""

    at: int


@dataclass(frozen=True)
class GiveUp:
    """The first `succeeded` records are done; the `count` records after them are given up
    (on-failure destination, or dropped) for `condition`; any after those go on."""

    condition: Condition
    count: int
    attempts: int
    succeeded: int = 0


Decision = Done | RetryFrom | RetryAfter | Bisect | GiveUp


def backoff(attempts: int) -> float:
    """Seconds before the retry that follows the `attempts`-th failed attempt."""
    return min(RETRY_BACKOFF[0] * 2.0 ** max(attempts - 1, 0), RETRY_BACKOFF[1])


def expired(batch: Sequence[ItemT], now: float, rules: RetryRules) -> GiveUp | None:
    """The leading records older than maximum_record_age_in_seconds at `now`, given up
    without being invoked (records arrive in order, so the old ones come first)."""
    max_age = rules.maximum_record_age_in_seconds
    if max_age < 0:
        return None
    oldest_allowed = now - max_age
    cut = 0
    while cut < len(batch) and batch[cut].arrival < oldest_allowed:
        cut += 1
    return GiveUp("RecordAgeExceeded", cut, attempts=0) if cut else None


def decide(
    verdict: BatchVerdict,
    batch: Sequence[ItemT],
    attempts: int,
    rules: RetryRules,
    *,
    throttled: bool = False,
) -> Decision:
    """What to do after invoking `batch`, which had used `attempts` attempts before."""
    if throttled:
        return RetryAfter(attempts, THROTTLE_DELAY, throttled=True)
    failed = verdict.failed_ids
    if failed is not None and not failed:
        return Done()
    if failed is not None:
        # Partial failure: the lowest reported item in batch order (ids were checked to be
        # in the batch, else the verdict is a whole-batch failure).
        cut = next(i for i, item in enumerate(batch) if item.item_id in failed)
        return _retry_or_give_up(attempts + 1, len(batch), rules, succeeded=cut)
    if rules.bisect_batch_on_function_error and len(batch) > 1:
        return Bisect(len(batch) // 2)
    return _retry_or_give_up(attempts + 1, len(batch), rules, succeeded=0)


def _retry_or_give_up(attempts: int, size: int, rules: RetryRules, *, succeeded: int) -> Decision:
    if 0 <= rules.maximum_retry_attempts < attempts:
        return GiveUp("RetryAttemptsExhausted", size - succeeded, attempts, succeeded)
    if succeeded:
        return RetryFrom(succeeded, attempts, backoff(attempts))
    return RetryAfter(attempts, backoff(attempts))


@dataclass(frozen=True)
class Segment(Generic[ItemT]):
    """Records of one batch still to be handled, the attempts they used and how often this
    segment was invoked (the on-failure record's approximateInvokeCount)."""

    records: Sequence[ItemT]
    attempts: int = 0
    invocations: int = 0


def next_segments(segment: Segment[ItemT], decision: Decision) -> list[Segment[ItemT]]:
    """The work left after `decision` on an invoked `segment`, in the order to handle it:
    a retry, both bisect halves (each with fresh invocation counts), or nothing."""
    records, invoked = segment.records, segment.invocations + 1
    if isinstance(decision, RetryFrom):
        return [Segment(records[decision.succeeded :], decision.attempts, invoked)]
    if isinstance(decision, RetryAfter):
        return [Segment(records, decision.attempts, invoked)]
    if isinstance(decision, Bisect):
        return [
            Segment(records[: decision.at], segment.attempts),
            Segment(records[decision.at :], segment.attempts),
        ]
    if isinstance(decision, GiveUp):
        rest = records[decision.succeeded + decision.count :]
        return [Segment(rest, segment.attempts, invoked)] if rest else []
    return []


def without_expired(segment: Segment[ItemT], decision: GiveUp) -> Segment[ItemT] | None:
    """The segment after its too-old leading records were given up (not an invocation)."""
    rest = segment.records[decision.count :]
    return Segment(rest, segment.attempts, segment.invocations) if rest else None
