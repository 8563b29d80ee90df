"""The outcome policy of stream batches (esm.sources.streams.policy), with no endpoint:
tables of single decisions, and properties of whole batches driven through `decide` and
`next_segments` the way a lane loops over them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from esm.batch_response import BatchVerdict, judge, string_identifier
from esm.invokers import FunctionFailure, InvocationResult
from esm.sources.streams.policy import (
    DESTINATION_RETRY_CAP,
    RETRY_BACKOFF,
    THROTTLE_DELAY,
    Bisect,
    Decision,
    Done,
    GiveUp,
    RetryAfter,
    RetryFrom,
    RetryRules,
    Segment,
    backoff,
    capped_for_destination,
    decide,
    expired,
    next_segments,
    without_expired,
)

NOW = 1_000_000.0


@dataclass(frozen=True)
class Rec:
    item_id: str
    arrival: float = NOW


def batch(n: int, first: int = 1) -> list[Rec]:
    return [Rec(str(i)) for i in range(first, first + n)]


SUCCESS = BatchVerdict(frozenset())
WHOLE = BatchVerdict(None, "function error")


def partial(*ids: str) -> BatchVerdict:
    return BatchVerdict(frozenset(ids))


@pytest.mark.parametrize(
    ("verdict", "size", "attempts", "rules", "throttled", "expected"),
    [
        (SUCCESS, 5, 0, RetryRules(), False, Done()),
        (SUCCESS, 5, 3, RetryRules(maximum_retry_attempts=0), False, Done()),
        (WHOLE, 5, 0, RetryRules(), True, RetryAfter(0, THROTTLE_DELAY, throttled=True)),
        (
            WHOLE,
            5,
            2,
            RetryRules(maximum_retry_attempts=2),
            True,
            RetryAfter(2, THROTTLE_DELAY, throttled=True),
        ),
        (WHOLE, 5, 0, RetryRules(), False, RetryAfter(1, RETRY_BACKOFF[0])),
        (
            WHOLE,
            5,
            0,
            RetryRules(maximum_retry_attempts=0),
            False,
            GiveUp("RetryAttemptsExhausted", 5, 1),
        ),
        (WHOLE, 5, 1, RetryRules(maximum_retry_attempts=2), False, RetryAfter(2, 0.2)),
        (
            WHOLE,
            5,
            2,
            RetryRules(maximum_retry_attempts=2),
            False,
            GiveUp("RetryAttemptsExhausted", 5, 3),
        ),
        (
            WHOLE,
            5,
            40,
            RetryRules(maximum_retry_attempts=-1),
            False,
            RetryAfter(41, RETRY_BACKOFF[1]),
        ),
        (WHOLE, 5, 0, RetryRules(bisect_batch_on_function_error=True), False, Bisect(2)),
        (
            WHOLE,
            4,
            9,
            RetryRules(maximum_retry_attempts=0, bisect_batch_on_function_error=True),
            False,
            Bisect(2),
        ),
        (
            WHOLE,
            1,
            0,
            RetryRules(bisect_batch_on_function_error=True),
            False,
            RetryAfter(1, RETRY_BACKOFF[0]),
        ),
        (
            partial("3"),
            5,
            0,
            RetryRules(report_batch_item_failures=True),
            False,
            RetryFrom(2, 1, RETRY_BACKOFF[0]),
        ),
        (
            partial("4", "2"),
            5,
            0,
            RetryRules(report_batch_item_failures=True),
            False,
            RetryFrom(1, 1, RETRY_BACKOFF[0]),
        ),
        (
            partial("1"),
            5,
            0,
            RetryRules(report_batch_item_failures=True),
            False,
            RetryAfter(1, RETRY_BACKOFF[0]),
        ),
        (
            partial("3"),
            5,
            0,
            RetryRules(report_batch_item_failures=True, bisect_batch_on_function_error=True),
            False,
            RetryFrom(2, 1, RETRY_BACKOFF[0]),
        ),
        (
            partial("3"),
            5,
            1,
            RetryRules(report_batch_item_failures=True, maximum_retry_attempts=1),
            False,
            GiveUp("RetryAttemptsExhausted", 3, 2, succeeded=2),
        ),
    ],
)
def test_decisions(
    verdict: BatchVerdict,
    size: int,
    attempts: int,
    rules: RetryRules,
    throttled: bool,
    expected: Decision,
) -> None:
    assert decide(verdict, batch(size), attempts, rules, throttled=throttled) == expected


@pytest.mark.parametrize(
    ("attempts", "seconds"),
    [(0, 0.1), (1, 0.1), (2, 0.2), (3, 0.4), (7, 6.4), (8, 10.0), (60, 10.0)],
)
def test_backoff_doubles_up_to_ten_seconds(attempts: int, seconds: float) -> None:
    assert backoff(attempts) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("ages", "max_age", "given_up"),
    [
        ([100, 50, 5], -1, 0),
        ([100, 50, 5], 60, 1),
        ([100, 50, 5], 10, 2),
        ([100, 50, 5], 1, 3),
        ([5, 100], 60, 0),  # only the leading ones: records arrive in order
    ],
)
def test_expired_leading_records(ages: list[float], max_age: int, given_up: int) -> None:
    records = [Rec(str(i), NOW - age) for i, age in enumerate(ages)]
    decision = expired(records, NOW, RetryRules(maximum_record_age_in_seconds=max_age))
    assert (decision.count if decision else 0) == given_up
    if decision is not None:
        assert decision.condition == "RecordAgeExceeded"


def test_next_segments_of_each_decision() -> None:
    segment = Segment(batch(5), attempts=1, invocations=2)
    assert next_segments(segment, Done()) == []
    assert next_segments(segment, RetryFrom(2, 2, 0.2)) == [Segment(batch(3, first=3), 2, 3)]
    assert next_segments(segment, RetryAfter(1, 10.0, throttled=True)) == [Segment(batch(5), 1, 3)]
    assert next_segments(segment, Bisect(2)) == [
        Segment(batch(2), 1, 0),
        Segment(batch(3, first=3), 1, 0),
    ]
    assert next_segments(segment, GiveUp("RetryAttemptsExhausted", 3, 2, succeeded=2)) == []
    assert without_expired(segment, GiveUp("RecordAgeExceeded", 2, 0)) == Segment(
        batch(3, first=3), 1, 2
    )
    assert without_expired(segment, GiveUp("RecordAgeExceeded", 5, 0)) is None


# --- whole batches, driven the way a lane drives them ------------------------------------

Respond = Callable[[Sequence[Rec]], tuple[InvocationResult, bool]]
"""Answers one invocation of the given records: the result, and whether it was throttled."""


@dataclass
class Run:
    done: list[str]
    given_up: list[tuple[str, str]]
    invoked: list[Segment[Rec]]
    decisions: list[tuple[Segment[Rec], Decision]]


def drive(records: list[Rec], rules: RetryRules, respond: Respond, now: float = NOW) -> Run:
    run = Run([], [], [], [])
    work: list[Segment[Rec]] = [Segment(records)]
    while work:
        segment: Segment[Rec] | None = work.pop()
        assert segment is not None
        too_old = expired(segment.records, now, rules)
        if too_old is not None:
            run.given_up += [
                (r.item_id, too_old.condition) for r in segment.records[: too_old.count]
            ]
            segment = without_expired(segment, too_old)
            if segment is None:
                continue
        run.invoked.append(segment)
        result, _ = respond(segment.records)
        ids = {r.item_id for r in segment.records}
        verdict = judge(result, ids, rules.report_batch_item_failures)
        decision = decide(
            verdict, segment.records, segment.attempts, rules, throttled=result.throttled
        )
        run.decisions.append((segment, decision))
        if isinstance(decision, Done):
            run.done += [r.item_id for r in segment.records]
        elif isinstance(decision, RetryFrom):
            run.done += [r.item_id for r in segment.records[: decision.succeeded]]
        elif isinstance(decision, GiveUp):
            run.done += [r.item_id for r in segment.records[: decision.succeeded]]
            given = segment.records[decision.succeeded : decision.succeeded + decision.count]
            run.given_up += [(r.item_id, decision.condition) for r in given]
        work.extend(reversed(next_segments(segment, decision)))
    return run


OK = InvocationResult("req", 0.0)
THROTTLED = InvocationResult("req", 0.0, throttled=True)
ERROR = InvocationResult("req", 0.0, failure=FunctionFailure("ValueError", "boom"))


def report(*ids: str) -> InvocationResult:
    return InvocationResult(
        "req", 0.0, response={"batchItemFailures": [{"itemIdentifier": i} for i in ids]}
    )


RULES = st.builds(
    RetryRules,
    maximum_retry_attempts=st.integers(-1, 3),
    maximum_record_age_in_seconds=st.just(-1),
    bisect_batch_on_function_error=st.booleans(),
    report_batch_item_failures=st.booleans(),
)
MAX_INVOCATIONS = 300


def responder(data: st.DataObject) -> Respond:
    """Random answers (success, throttle, error, partial report, an unknown identifier);
    after MAX_INVOCATIONS every answer is a success, so every run ends."""
    calls = [0]

    def respond(records: Sequence[Rec]) -> tuple[InvocationResult, bool]:
        calls[0] += 1
        if calls[0] > MAX_INVOCATIONS:
            return OK, False
        kind = data.draw(st.sampled_from(["ok", "throttle", "error", "partial", "unknown"]))
        if kind == "ok":
            return OK, False
        if kind == "throttle":
            return THROTTLED, True
        if kind == "error":
            return ERROR, False
        if kind == "unknown":
            return report("not-in-the-batch"), False
        failed = data.draw(
            st.lists(st.sampled_from([r.item_id for r in records]), min_size=1, unique=True)
        )
        return report(*failed), False

    return respond


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), rules=RULES, data=st.data())
def test_every_record_ends_done_or_given_up_exactly_once(
    size: int, rules: RetryRules, data: st.DataObject
) -> None:
    records = batch(size)
    run = drive(records, rules, responder(data))
    given = [item for item, _ in run.given_up]
    assert len(given) == len(set(given)), "a record was given up twice"
    assert len(run.done) == len(set(run.done)), "a record was done twice"
    assert sorted(run.done + given, key=int) == [r.item_id for r in records]
    if rules.maximum_retry_attempts < 0:
        assert given == []


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, 40), rules=RULES, data=st.data())
def test_bisect_never_uses_up_an_attempt(size: int, rules: RetryRules, data: st.DataObject) -> None:
    run = drive(batch(size), rules, responder(data))
    for segment, decision in run.decisions:
        if isinstance(decision, Bisect):
            halves = next_segments(segment, decision)
            assert [h.attempts for h in halves] == [segment.attempts, segment.attempts]
            assert [r for h in halves for r in h.records] == list(segment.records)
        elif isinstance(decision, RetryAfter) and decision.throttled:
            assert decision.attempts == segment.attempts
        elif not isinstance(decision, Done):
            assert decision.attempts == segment.attempts + 1


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), data=st.data())
def test_with_reported_failures_the_records_before_the_lowest_are_done(
    size: int, data: st.DataObject
) -> None:
    records = batch(size)
    failed = data.draw(
        st.lists(st.sampled_from([r.item_id for r in records]), min_size=1, unique=True)
    )
    rules = RetryRules(
        report_batch_item_failures=True, maximum_retry_attempts=data.draw(st.integers(-1, 3))
    )
    verdict = judge(report(*failed), {r.item_id for r in records}, True)
    decision = decide(verdict, records, 0, rules)
    lowest = min(int(i) for i in failed)
    succeeded = 0 if isinstance(decision, RetryAfter) else getattr(decision, "succeeded", None)
    assert succeeded == lowest - 1
    assert not isinstance(decision, Bisect | Done)


@settings(max_examples=200, deadline=None)
@given(
    ages=st.lists(st.integers(0, 200), min_size=1, max_size=30).map(
        lambda a: sorted(a, reverse=True)
    ),
    max_age=st.integers(60, 120),
    rules=RULES,
    data=st.data(),
)
def test_a_record_older_than_the_maximum_age_is_given_up_without_being_invoked(
    ages: list[int], max_age: int, rules: RetryRules, data: st.DataObject
) -> None:
    records = [Rec(str(i), NOW - age) for i, age in enumerate(ages, start=1)]
    rules = RetryRules(
        rules.maximum_retry_attempts,
        max_age,
        rules.bisect_batch_on_function_error,
        rules.report_batch_item_failures,
    )
    run = drive(records, rules, responder(data))
    too_old = {r.item_id for r in records if r.arrival < NOW - max_age}
    invoked = {r.item_id for segment in run.invoked for r in segment.records}
    assert not too_old & invoked
    assert {(item, "RecordAgeExceeded") for item in too_old} <= set(run.given_up)


@settings(max_examples=100, deadline=None)
@given(size=st.integers(1, 40), rules=RULES, attempts=st.integers(0, 5))
def test_an_unknown_item_identifier_fails_the_whole_batch(
    size: int, rules: RetryRules, attempts: int
) -> None:
    records = batch(size)
    rules = RetryRules(rules.maximum_retry_attempts, -1, rules.bisect_batch_on_function_error, True)
    verdict = judge(report("2", "no-such-item"), {r.item_id for r in records}, True)
    assert verdict.whole_batch_failed
    decision = decide(verdict, records, attempts, rules)
    assert not isinstance(decision, Done | RetryFrom)
    if isinstance(decision, GiveUp):
        assert (decision.succeeded, decision.count) == (0, size)


# --- records that are not Items (Kafka's shaped dicts): positions and an arrival accessor ---


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 40), data=st.data())
def test_positions_give_the_same_decisions_as_item_ids(size: int, data: st.DataObject) -> None:
    """A family passing `positions` (id -> index) for plain records decides exactly as one
    whose records carry `item_id`."""
    records = batch(size)
    plain = [{"offset": int(r.item_id) * 10} for r in records]  # ids unrelated to indices
    positions = {str(d["offset"]): i for i, d in enumerate(plain)}
    picked = data.draw(st.lists(st.integers(0, size - 1), unique=True))
    rules = RetryRules(
        maximum_retry_attempts=data.draw(st.integers(-1, 3)),
        bisect_batch_on_function_error=data.draw(st.booleans()),
        report_batch_item_failures=True,
    )
    attempts = data.draw(st.integers(0, 4))
    by_item = decide(partial(*(records[i].item_id for i in picked)), records, attempts, rules)
    by_position = decide(
        partial(*(str(plain[i]["offset"]) for i in picked)),
        plain,
        attempts,
        rules,
        positions=positions,
    )
    assert by_position == by_item


def test_positions_cut_at_the_lowest_reported_position_not_the_lowest_id() -> None:
    plain = ["a", "b", "c", "d"]
    positions = {"9": 0, "30": 1, "4": 2, "100": 3}  # string order differs from batch order
    decision = decide(partial("4", "100"), plain, 0, RetryRules(), positions=positions)
    assert decision == RetryFrom(2, 1, backoff(1))


def test_expired_reads_arrival_through_the_accessor() -> None:
    plain = [{"ms": (NOW - age) * 1000} for age in (100, 61, 60, 5, 100)]
    decision = expired(
        plain, NOW, RetryRules(maximum_record_age_in_seconds=60), arrival=lambda d: d["ms"] / 1000
    )
    assert decision == GiveUp("RecordAgeExceeded", 2, attempts=0)  # a leading run only
    assert expired(plain, NOW, RetryRules(), arrival=lambda d: d["ms"] / 1000) is None


def test_segments_hold_any_record_type() -> None:
    segment: Segment[dict[str, int]] = Segment([{"offset": o} for o in range(4)], 1, 2)
    halves = next_segments(segment, Bisect(2))
    assert [[d["offset"] for d in h.records] for h in halves] == [[0, 1], [2, 3]]
    assert [(h.attempts, h.invocations) for h in halves] == [(1, 0), (1, 0)]


@pytest.mark.parametrize(
    ("configured", "effective"),
    [(-1, DESTINATION_RETRY_CAP), (0, 0), (3, 3), (10_000, 10_000)],
)
def test_capped_for_destination_caps_only_infinite_retries(configured: int, effective: int) -> None:
    rules = RetryRules(maximum_retry_attempts=configured, bisect_batch_on_function_error=True)
    capped = capped_for_destination(rules)
    assert capped.maximum_retry_attempts == effective
    assert capped.bisect_batch_on_function_error
    assert DESTINATION_RETRY_CAP == 10


def test_capped_infinite_retries_give_up_after_the_tenth_retry() -> None:
    """`attempts` is the failed invocations before this one: the 10th retry still follows
    the 10th failure; the 11th failure (initial + 10 retries) gives up."""
    rules = capped_for_destination(RetryRules())
    assert decide(WHOLE, batch(3), 9, rules) == RetryAfter(10, backoff(10))
    assert decide(WHOLE, batch(3), 10, rules) == GiveUp("RetryAttemptsExhausted", 3, 11)


# --- batch_response: a family's own identifier shape through `identify` ---


def _offset_of(identifier: object) -> str:
    if not isinstance(identifier, dict) or not isinstance(identifier.get("n"), int):
        raise ValueError("an itemIdentifier is not an {n} object")
    return str(identifier["n"])


def test_identify_maps_objects_to_batch_ids() -> None:
    ids = {"1", "2", "3"}
    response = {"batchItemFailures": [{"itemIdentifier": {"n": 3}}, {"itemIdentifier": {"n": 2}}]}
    verdict = judge(InvocationResult("r", 0.0, response=response), ids, True, _offset_of)
    assert verdict.failed_ids == frozenset({"2", "3"})


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"itemIdentifier": "2"}, "an itemIdentifier is not an {n} object"),
        ({"itemIdentifier": {"n": "2"}}, "an itemIdentifier is not an {n} object"),
        ({"itemIdentifier": {"n": 9}}, "an itemIdentifier is not in the batch"),
    ],
)
def test_identify_problems_fail_the_whole_batch_with_its_reason(
    entry: dict[str, object], reason: str
) -> None:
    response = {"batchItemFailures": [entry]}
    verdict = judge(InvocationResult("r", 0.0, response=response), {"1", "2"}, True, _offset_of)
    assert verdict == BatchVerdict(None, reason)


def test_string_identifier_is_the_default_rule() -> None:
    assert string_identifier("abc") == "abc"
    for bad in ("", None, 3, {"n": 1}):
        with pytest.raises(ValueError, match="missing, null or empty"):
            string_identifier(bad)
