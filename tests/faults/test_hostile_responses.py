"""Handler failures of every kind: AWS's treatment, a log line naming why, never a crash.

Part one checks `esm.batch_response` against an oracle written from the spec (sections 2
and 3) and the README's behaviour notes, on hypothesis-generated responses. Part two runs
real daemons against moto whose handler answers with a fixed, seeded list of hostile
responses, raises, and sleeps past its timeout: the daemon stays healthy, failed SQS
messages reappear, failed stream records are retried and then given up as configured.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import boto3
import hostile_handlers
import pytest
from conftest import (
    HANDLERS,
    build_config,
    free_port,
    queue_counts,
    stop_process,
    stored_checkpoint,
    wait_for_http,
    wait_until,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from esm.batch_response import BatchVerdict, judge, parse_batch_item_failures
from esm.config import FunctionConfig, parse_config
from esm.invokers import FunctionFailure, InvocationResult
from esm.invokers.python import PythonInvoker

SEED = 20261124
CASES = sorted(hostile_handlers.CASES)
WHOLE = "whole batch"


# --- the oracle: AWS's partial batch response rules, from the spec's text -------------------


def aws_outcome(
    kind: str, response: Any, report_batch_item_failures: bool, batch_ids: set[str]
) -> str | frozenset[str]:
    """WHOLE when the whole batch is retried, else the ids that stay (maybe none).

    Spec 2/3: a function error (or a throttle, an error before invocation) fails the batch.
    Without ReportBatchItemFailures the response is not read. With it: full success for
    null, "", [], {} and for an object whose batchItemFailures is absent, null or []; full
    failure for invalid JSON, any other non-object response, a batchItemFailures that is not
    a list, or an entry whose itemIdentifier is missing, null, empty, not a string or not
    an id of the batch. Otherwise exactly the listed ids stay.
    """
    if kind in ("failure", "throttled"):
        return WHOLE
    if not report_batch_item_failures:
        return frozenset()
    if kind == "invalid_json":
        return WHOLE
    if response is None:
        return frozenset()
    if type(response) in (str, list, dict) and len(response) == 0:
        return frozenset()
    if type(response) is not dict:
        return WHOLE
    if "batchItemFailures" not in response or response["batchItemFailures"] is None:
        return frozenset()
    entries = response["batchItemFailures"]
    if type(entries) is not list:
        return WHOLE
    stay: set[str] = set()
    for entry in entries:
        if type(entry) is not dict or "itemIdentifier" not in entry:
            return WHOLE
        identifier = entry["itemIdentifier"]
        if type(identifier) is not str or identifier == "" or identifier not in batch_ids:
            return WHOLE
        stay.add(identifier)
    return frozenset(stay)


# --- strategies ---------------------------------------------------------------------------

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
batch_ids_strategy = st.lists(
    st.text(min_size=1, max_size=40), min_size=1, max_size=12, unique=True
)


class BatchRef:
    """Stands for the k-th id of the batch (modulo its size) until the batch is known."""

    def __init__(self, k: int) -> None:
        self.k = k


def resolve(value: Any, batch_ids: list[str]) -> Any:
    if isinstance(value, BatchRef):
        return batch_ids[value.k % len(batch_ids)]
    if isinstance(value, list):
        return [resolve(v, batch_ids) for v in value]
    if isinstance(value, dict):
        return {k: resolve(v, batch_ids) for k, v in value.items()}
    return value


batch_ref = st.builds(BatchRef, st.integers(0, 50))
identifiers = st.one_of(
    batch_ref,
    batch_ref,
    st.sampled_from(["", "unknown-id", "0", " "]),
    st.text(max_size=12),
    json_values,
)
good_entries = st.builds(lambda i: {"itemIdentifier": i}, batch_ref)
entries = st.one_of(
    good_entries,
    st.builds(lambda i: {"itemIdentifier": i}, identifiers),
    st.builds(
        lambda i, extra: {"itemIdentifier": i, **extra},
        identifiers,
        st.dictionaries(st.text(max_size=6), json_values, max_size=2),
    ),
    st.dictionaries(
        st.sampled_from(["foo", "itemidentifier", "ItemIdentifier"]), identifiers, max_size=2
    ),
    json_values,
)
huge_lists = st.one_of(
    st.builds(lambda e, n: [e] * n, good_entries, st.integers(1000, 20_000)),
    st.builds(
        lambda e, n: [{"itemIdentifier": f"unknown-{i}"} for i in range(n)] + [e],
        entries,
        st.integers(1000, 5000),
    ),
    st.builds(lambda e, bad, n: [e] * n + [bad], good_entries, entries, st.integers(1000, 20_000)),
)
failure_lists = st.one_of(
    st.lists(entries, max_size=8), st.lists(good_entries, max_size=8), huge_lists, json_values
)
extra_keys = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k != "batchItemFailures"), json_values, max_size=3
)
response_templates = st.one_of(
    st.builds(lambda f, extra: {"batchItemFailures": f, **extra}, failure_lists, extra_keys),
    st.sampled_from([None, "", [], {}, {"batchItemFailures": None}, {"batchItemFailures": []}]),
    st.lists(st.builds(lambda f: {"batchItemFailures": f}, failure_lists), min_size=1, max_size=2),
    json_values,
)
"""A response shaped like a partial batch response, broken at any level (or not)."""


@st.composite
def judged_cases(draw: st.DrawFn) -> tuple[str, InvocationResult, bool, list[str]]:
    batch_ids = draw(batch_ids_strategy)
    kind = draw(st.sampled_from(["ok", "ok", "ok", "failure", "throttled", "invalid_json"]))
    response = resolve(draw(response_templates), batch_ids)
    result = InvocationResult(
        "req",
        0.01,
        response=response if kind != "invalid_json" else None,
        failure=FunctionFailure("ValueError", "boom") if kind == "failure" else None,
        throttled=kind == "throttled",
        invalid_response=kind == "invalid_json",
    )
    return kind, result, draw(st.booleans()), batch_ids


def _same(expected: str | frozenset[str], verdict: BatchVerdict) -> bool:
    return verdict.failed_ids is None if expected == WHOLE else verdict.failed_ids == expected


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(judged_cases())
def test_judge_follows_aws_rules_and_never_raises(
    case: tuple[str, InvocationResult, bool, list[str]],
) -> None:
    kind, result, report, batch_ids = case
    ids = set(batch_ids)
    verdict = judge(result, ids, report)
    assert verdict.failed_ids is None or verdict.failed_ids <= ids
    assert _same(aws_outcome(kind, result.response, report, ids), verdict), verdict
    if verdict.failed_ids is None:
        assert verdict.reason, "a whole-batch failure must say why (it is logged)"


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.data())
def test_parse_batch_item_failures_follows_aws_rules_and_never_raises(data: st.DataObject) -> None:
    batch_ids = data.draw(batch_ids_strategy)
    response = resolve(data.draw(response_templates), batch_ids)
    ids = set(batch_ids)
    verdict = parse_batch_item_failures(response, ids)
    assert verdict.failed_ids is None or verdict.failed_ids <= ids
    assert _same(aws_outcome("ok", response, True, ids), verdict), verdict


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # AWS-recorded full successes (spec section 3).
        ("", frozenset()),
        ([], frozenset()),
        (None, frozenset()),
        ({}, frozenset()),
        ({"batchItemFailures": []}, frozenset()),
        ({"batchItemFailures": None}, frozenset()),
        # Full failures named by the spec (sections 2 and 3).
        ({"batchItemFailures": [{"itemIdentifier": ""}]}, WHOLE),
        ({"batchItemFailures": [{"itemIdentifier": None}]}, WHOLE),
        ({"batchItemFailures": [{"foo": "1"}]}, WHOLE),
        ({"batchItemFailures": [{"itemIdentifier": "9"}]}, WHOLE),
        # A valid report, and a report listing one id thousands of times.
        ({"batchItemFailures": [{"itemIdentifier": "2"}]}, frozenset({"2"})),
        ({"batchItemFailures": [{"itemIdentifier": "1"}] * 10_000}, frozenset({"1"})),
    ],
)
def test_spec_examples(response: Any, expected: str | frozenset[str]) -> None:
    verdict = parse_batch_item_failures(response, {"1", "2", "3"})
    assert _same(expected, verdict)
    assert _same(aws_outcome("ok", response, True, {"1", "2", "3"}), verdict)


# --- the in-process invoker: responses Lambda itself would refuse --------------------------


def _invoke(handler: str, timeout: float = 3.0) -> InvocationResult:
    function = FunctionConfig(
        name="f", kind="python", handler=handler, code_path=HANDLERS, timeout=timeout
    )

    async def go() -> InvocationResult:
        invoker = PythonInvoker(function)
        try:
            return await invoker.invoke({"Records": [{"messageId": "m-1", "body": "x"}]})
        finally:
            await invoker.aclose()

    try:
        return anyio.run(go)
    except BaseException as exc:  # noqa: BLE001 - KeyboardInterrupt must not end the session
        pytest.fail(f"{handler}: {type(exc).__name__} escaped PythonInvoker.invoke: {exc!r}")


def test_response_too_deep_to_serialise_is_a_function_error() -> None:
    """Lambda serialises the response to JSON; a response it cannot serialise is a function
    error (the batch is retried), whatever the reason, not an exception out of the invoker."""
    result = _invoke("hostile_handlers.deeply_nested_response")
    assert result.failure is not None


def test_response_over_6_mb_is_a_function_error() -> None:
    """Lambda refuses responses over 6 MB (6,291,556 bytes) with Function.ResponseSizeTooLarge,
    as esm's process and http kinds do; the batch must not count as a success."""
    result = _invoke("hostile_handlers.oversized_response")
    assert (
        result.failure is not None and result.failure.error_type == "Function.ResponseSizeTooLarge"
    )


@pytest.mark.parametrize(
    "handler",
    [
        "hostile_handlers.calls_sys_exit",
        "hostile_handlers.async_calls_sys_exit",
        "hostile_handlers.raises_keyboard_interrupt",
        "hostile_handlers.raises_base_exception",
    ],
)
def test_handler_base_exceptions_are_function_errors(handler: str) -> None:
    """In Lambda a handler that exits ends its own sandbox (Runtime.ExitError), never the
    event source mapping: the invocation is a function error."""
    result = _invoke(handler)
    assert result.failure is not None


# --- real daemons against moto -------------------------------------------------------------


def make_queue(sqs: Any, name: str, **attributes: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "1", **attributes})[
        "QueueUrl"
    ]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def queue_depth(sqs: Any, url: str) -> int:
    return sum(queue_counts(sqs, url))


def metric(text: str, name: str, mapping: str) -> float:
    match = re.search(rf'^{name}{{mapping="{re.escape(mapping)}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def seeded_cases() -> list[str]:
    cases = list(CASES)
    random.Random(SEED).shuffle(cases)
    return cases


def _failed_batches(logs: list[dict[str, Any]], mapping: str) -> list[dict[str, Any]]:
    return [e for e in logs if e.get("event") == "batch.failed" and e.get("mapping") == mapping]


def test_sqs_hostile_responses_keep_messages_and_the_daemon(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"hostile-{unique}")
    cases = seeded_cases()
    ids = {case: f"{unique}-{case}" for case in cases}
    for start in range(0, len(cases), 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": json.dumps({"id": ids[case], "case": case})}
                for i, case in enumerate(cases[start : start + 10])
            ],
        )
    name = f"hostile-sqs-{unique}"
    config = build_config(
        endpoint,
        {"h": {"handler": "hostile_handlers.sqs_hostile", "timeout": 1}},
        [
            {
                "name": name,
                "function": "h",
                "event_source_arn": arn,
                "batch_size": 1,
                "function_response_types": ["ReportBatchItemFailures"],
                "scaling_config": {"maximum_concurrency": 25},
            }
        ],
    )

    def handled(item_id: str) -> bool:
        return any(not a["hostile"] for a in hostile_handlers.attempts_for(item_id))

    with capture_logs() as logs:
        daemon = run_daemon(config)
        wait_until(lambda: all(handled(i) for i in ids.values()), timeout=25)
        wait_until(lambda: queue_depth(sqs, url) == 0, timeout=10)
        assert daemon.get("/healthz") == (200, "ok\n")
        assert daemon.get("/readyz")[0] == 200
        assert not daemon.future.done(), "the daemon stopped by itself"
        _, metrics = daemon.get("/metrics")
        daemon.stop()

    # Every message was deleted after a successful receive (at least once: a receive that
    # outlives the 1 s visibility timeout may be delivered again, as in Lambda).
    assert metric(metrics, "esm_deleted_events_total", name) >= len(cases)
    failed = {e.get("request_id"): e for e in _failed_batches(logs, name)}
    problems = []
    for case in cases:
        attempts = hostile_handlers.attempts_for(ids[case])
        first = next((a for a in attempts if a["attempt"] == 1), None)
        # The hostile answer did not delete the message: it was received again.
        if first is None or not any(a["attempt"] >= 2 for a in attempts):
            problems.append(f"{case}: not redelivered after the hostile answer: {attempts}")
            continue
        line = failed.get(first["request_id"])
        reason, error_type = hostile_handlers.CASES[case]
        if line is None:
            problems.append(f"{case}: no batch.failed log line for request {first['request_id']}")
        elif (line.get("reason"), line.get("error_type")) != (reason, error_type):
            logged = f"{line.get('reason')!r}/{line.get('error_type')!r}"
            problems.append(f"{case}: logged {logged}, expected {reason!r}/{error_type!r}")
    assert not problems, "\n".join(problems)
    assert not [e for e in logs if e.get("event") == "sqs.batch_crashed"]


def _checkpoint(path: Path) -> str | None:
    return stored_checkpoint(path)


def test_kinesis_hostile_responses_are_retried_then_given_up_and_counted(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    stream = f"hostile-{unique}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamARN"]
    items = [
        {"id": f"{'p' if permanent else 't'}-{unique}-{case}", "case": case, "permanent": permanent}
        for case in CASES
        for permanent in (False, True)
    ]
    random.Random(SEED).shuffle(items)
    response = kinesis.put_records(
        StreamName=stream,
        Records=[{"PartitionKey": item["id"], "Data": json.dumps(item).encode()} for item in items],
    )
    assert response["FailedRecordCount"] == 0
    last_sequence_number = max((r["SequenceNumber"] for r in response["Records"]), key=int)
    name = f"hostile-kinesis-{unique}"
    state = tmp_path / "state.sqlite3"
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": {"path": str(state)},
            "functions": {
                "h": {
                    "handler": "hostile_handlers.stream_hostile",
                    "code_path": str(HANDLERS),
                    "timeout": 1,
                }
            },
            "mappings": [
                {
                    "name": name,
                    "function": "h",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 1,
                    "parallelization_factor": 4,
                    "maximum_retry_attempts": 1,
                    "function_response_types": ["ReportBatchItemFailures"],
                }
            ],
        }
    )
    transient = [i["id"] for i in items if not i["permanent"]]
    permanent = [i for i in items if i["permanent"]]

    def settled() -> bool:
        done = all(
            any(not a["hostile"] for a in hostile_handlers.attempts_for(i)) for i in transient
        )
        return done and metric(daemon.get("/metrics")[1], "esm_dropped_events_total", name) == len(
            permanent
        )

    with capture_logs() as logs:
        daemon = run_daemon(config)
        wait_until(settled, timeout=25)
        # Given up or handled, every record is done: the checkpoint reaches the last one.
        wait_until(lambda: _checkpoint(state) == last_sequence_number, timeout=10)
        assert daemon.get("/healthz") == (200, "ok\n")
        assert daemon.get("/readyz")[0] == 200
        assert not daemon.future.done(), "the daemon stopped by itself"
        daemon.stop()

    for item in permanent:
        attempts = hostile_handlers.attempts_for(item["id"])
        assert [a["attempt"] for a in attempts] == [1, 2], (item, attempts)
    dropped = [e for e in logs if e.get("event") == "batch.dropped" and e.get("mapping") == name]
    assert sum(e["size"] for e in dropped) == len(permanent)
    assert {e["condition"] for e in dropped} == {"RetryAttemptsExhausted"}
    expected = Counter(
        hostile_handlers.CASES[i["case"]] for i in items for _ in range(2 if i["permanent"] else 1)
    )
    logged = Counter((e.get("reason"), e.get("error_type")) for e in _failed_batches(logs, name))
    assert logged == expected
    assert not [e for e in logs if e.get("event") == "shard.failed"]


def test_kinesis_unserialisable_response_is_given_up_per_config(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """A response json cannot serialise is a function error like any other: with
    maximum_retry_attempts = 0 the batch is given up after one invocation, counted and
    logged with its reason; the shard poller does not fail over it."""
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    stream = f"deep-{unique}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    arn = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamARN"]
    kinesis.put_record(StreamName=stream, PartitionKey="p", Data=b"x")
    name = f"deep-{unique}"
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "state": {"path": str(tmp_path / "state.sqlite3")},
            "functions": {
                "h": {
                    "handler": "hostile_handlers.deeply_nested_response",
                    "code_path": str(HANDLERS),
                }
            },
            "mappings": [
                {
                    "name": name,
                    "function": "h",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                    "maximum_retry_attempts": 0,
                }
            ],
        }
    )
    with capture_logs() as logs:
        daemon = run_daemon(config)
        try:
            wait_until(
                lambda: metric(daemon.get("/metrics")[1], "esm_dropped_events_total", name) == 1,
                timeout=10,
            )
        except AssertionError:
            seen = sorted({str(e.get("event")) for e in logs if e.get("mapping") == name})
            raise AssertionError(f"the record was never given up; events logged: {seen}") from None
        daemon.stop()
    failed = _failed_batches(logs, name)
    assert failed and failed[0]["reason"] == "function error", failed
    assert not [e for e in logs if e.get("event") == "shard.failed"]


def test_handler_calling_sys_exit_does_not_stop_the_daemon(endpoint, sqs, unique, tmp_path):  # type: ignore[no-untyped-def]
    """`esm run` as a process: a handler that calls sys.exit fails its batch; the daemon
    goes on and handles the next message."""
    url, arn = make_queue(sqs, f"exit-{unique}", VisibilityTimeout="30")
    record_path = tmp_path / "records.txt"
    port = free_port()
    config = tmp_path / "esm.toml"
    config.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
[functions.h]
handler = "hostile_handlers.exit_or_record"
code_path = "{HANDLERS}"
timeout = 2
environment = {{ RECORD_PATH = "{record_path}" }}
[[mappings]]
function = "h"
event_source_arn = "{arn}"
batch_size = 1
"""
    )
    log_path = tmp_path / "esm.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=20)
            sqs.send_message(QueueUrl=url, MessageBody="exit")

            def lines() -> list[str]:
                return record_path.read_text().splitlines() if record_path.exists() else []

            wait_until(lambda: "exit" in lines() or proc.poll() is not None, timeout=15)
            sqs.send_message(QueueUrl=url, MessageBody="after-exit")
            wait_until(lambda: "after-exit" in lines() or proc.poll() is not None, timeout=15)
            assert proc.poll() is None, (
                f"esm exited with {proc.returncode} after a handler called sys.exit:\n"
                + log_path.read_text()[-2000:]
            )
        finally:
            stop_process(proc, timeout=20)
    output = log_path.read_text()
    assert "Traceback" not in output
    failed = [json.loads(line) for line in output.splitlines() if '"batch.failed"' in line]
    assert failed and failed[0]["error_type"], output[-2000:]
