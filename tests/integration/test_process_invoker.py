"""kind = "process": real execution environments speaking esm's Lambda Runtime API.

Runtimes under test: esm's built-in Python client, the official `awslambdaric` (PyPI) and
a bash `bootstrap` custom runtime (curl-based, as in AWS's tutorial).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from conftest import HANDLERS, assert_deleted_after_success, build_config, wait_until
from test_sqs_mapping import make_queue, mapping, queue_depth

from esm.config import FunctionConfig, parse_config
from esm.invokers import Function, InvocationResult, create_invoker, function_concurrency
from esm.invokers.process import ProcessInvoker
from esm.observability import Metrics

AWSLAMBDARIC = [sys.executable, "-m", "awslambdaric"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def function_config(**settings: Any) -> FunctionConfig:
    section = {"kind": "process", "code_path": str(HANDLERS), **settings}
    return parse_config({"functions": {"f": section}}).functions["f"]


def process_invoker(**settings: Any) -> ProcessInvoker:
    invoker = create_invoker(function_config(**settings))
    assert isinstance(invoker, ProcessInvoker)
    return invoker


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def receive_counts(seen: list[dict[str, Any]], body: str) -> list[str]:
    """The ApproximateReceiveCount of every delivery of `body` the function recorded."""
    pairs = (zip(r["bodies"], r["receive_counts"], strict=True) for r in seen)
    return [count for delivered in pairs for b, count in delivered if b == body]


def reused(seen: list[dict[str, Any]], failing: str) -> list[dict[str, Any]] | None:
    """The batches recorded once `failing` was delivered again and some environment served
    two of them (one environment serves all unless a copy ran beside the first batch)."""
    again = len(receive_counts(seen, failing)) >= 2
    return seen if again and len({r["pid"] for r in seen}) < len(seen) else None


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- end to end, from an SQS mapping -------------------------------------------------------


def test_awslambdaric_runs_an_sqs_mapping_through_the_runtime_api(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon, tmp_path
):
    url, arn = make_queue(sqs, f"ric-{unique}", VisibilityTimeout="1")
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": "1", "MessageBody": "ok-1"}, {"Id": "2", "MessageBody": "fail-2"}],
    )
    record_path = tmp_path / "records.jsonl"
    config = build_config(
        endpoint,
        {
            "f": {
                "kind": "process",
                "command": [*AWSLAMBDARIC, "process_app.sqs_report_failures"],
                "timeout": 1,
                "environment": {"RECORD_PATH": str(record_path)},
            }
        },
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    daemon = run_daemon(config)
    # fail-2 again and a warm environment reused, not merely two batches: moto may hand a
    # copy of the batch to a second receiver, which runs at once in a second environment.
    seen = wait_until(lambda: reused(records(record_path), "fail-2"), timeout=30)
    bodies = [b for r in seen for b in r["bodies"]]
    # ok-1 succeeded and was deleted (each delivery a receive of its own: five receivers).
    assert_deleted_after_success(sqs, url, receive_counts(seen, "ok-1"), left=1)
    assert bodies.count("fail-2") >= 2, "fail-2 was reported and delivered again"
    _, metrics = daemon.get("/metrics")
    assert 'esm_function_errors_total{function="f"} 0.0' in metrics


def test_handler_sleeping_past_its_timeout_is_killed_and_the_batch_retried(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon, tmp_path
):
    url, arn = make_queue(sqs, f"hang-{unique}", VisibilityTimeout="2")
    sqs.send_message(QueueUrl=url, MessageBody="sleep")
    record_path = tmp_path / "records.jsonl"
    config = build_config(
        endpoint,
        {
            "f": {
                "kind": "process",
                "handler": "process_app.sqs_sleep_on_first_receive",
                "timeout": 1,
                "environment": {"RECORD_PATH": str(record_path)},
            }
        },
        [mapping(arn)],
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(records(record_path)) >= 2 and queue_depth(sqs, url) == 0, timeout=30)
    first, second = records(record_path)[:2]
    assert (first["receive_counts"], second["receive_counts"]) == (["1"], ["2"])
    assert first["pid"] != second["pid"], "the timed-out environment was replaced"
    assert not alive(first["pid"]), "the timed-out environment was killed"
    _, metrics = daemon.get("/metrics")
    assert 'esm_function_errors_total{function="f"} 1.0' in metrics


# --- runtimes --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_bash_bootstrap_custom_runtime_answers_and_reports_errors() -> None:
    invoker = process_invoker(
        command=["./bootstrap"],
        handler="function.handler",
        code_path=str(HANDLERS / "custom_runtime"),
        memory_size=256,
    )
    try:
        result = await invoker.invoke({"hello": "world"})
        assert result.ok, result
        answer = result.response
        assert answer["event"] == {"hello": "world"}
        assert answer["request_id"] == result.request_id
        assert (answer["handler"], answer["function"], answer["memory"]) == (
            "function.handler",
            "f",
            "256",
        )
        failed = await invoker.invoke({"body": "please fail"})
        assert failed.failure is not None
        assert (failed.failure.error_type, failed.failure.error_message) == (
            "HandlerFailed",
            "the handler failed",
        )
        again = await invoker.invoke({"n": 2})
        assert again.ok and again.response["tmpdir"] == answer["tmpdir"], (
            "still the same warm environment"
        )
    finally:
        await invoker.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("client", ["built-in", "awslambdaric"])
async def test_context_and_lambda_environment_reach_the_handler(
    client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESM_TEST_SECRET", "daemon-only")
    settings: dict[str, Any] = {
        "handler": "process_app.echo",
        "timeout": 5,
        "memory_size": 512,
        "environment": {"ESM_TEST_ENV": "visible"},
    }
    if client == "awslambdaric":
        settings["command"] = [*AWSLAMBDARIC, "process_app.echo"]
    invoker = process_invoker(**settings)
    try:
        result = await invoker.invoke({"n": 1})
    finally:
        await invoker.aclose()
    assert result.ok, result
    answer = result.response
    assert answer["event"] == {"n": 1}
    context = answer["context"]
    assert context["aws_request_id"] == result.request_id
    assert context["function_name"] == "f"
    assert context["function_version"] == "$LATEST"
    assert context["invoked_function_arn"] == invoker.arn
    assert context["memory_limit_in_mb"] == "512"
    assert context["log_group_name"] == "/aws/lambda/f"
    assert 0 < context["remaining"] <= 5000
    env = answer["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "f"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "512"
    assert env["AWS_LAMBDA_RUNTIME_API"].startswith("127.0.0.1:")
    assert env["LAMBDA_TASK_ROOT"] == str(HANDLERS.resolve()) == answer["cwd"]
    assert env["ESM_TEST_ENV"] == "visible"
    assert env["ESM_TEST_SECRET"] is None, "esm's own environment is not inherited"
    assert env["AWS_REGION"]
    assert Path(env["TMPDIR"]).name.startswith("esm-f-")


@pytest.mark.anyio
async def test_async_handler_runs_on_the_built_in_client() -> None:
    invoker = process_invoker(handler="process_app.echo_async")
    try:
        result = await invoker.invoke({"n": 3})
    finally:
        await invoker.aclose()
    assert result.ok and result.response["event"] == {"n": 3}


# --- environment lifecycle ----------------------------------------------------------------


@pytest.mark.anyio
async def test_warm_environment_is_reused_and_survives_a_handler_exception() -> None:
    invoker = process_invoker(handler="process_app.behave")
    try:
        first = await invoker.invoke({})
        failed = await invoker.invoke({"raise": "bad input"})
        second = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert failed.failure is not None
    assert (failed.failure.error_type, failed.failure.error_message) == ("ValueError", "bad input")
    assert any("process_app.py" in line for line in failed.failure.stack_trace)
    assert not any("runtime_client" in line for line in failed.failure.stack_trace)
    assert first.response["pid"] == second.response["pid"]


@pytest.mark.anyio
async def test_an_environment_idle_past_its_lifetime_is_stopped_and_the_next_call_starts_cold() -> (
    None
):
    invoker = ProcessInvoker(
        function_config(handler="process_app.behave"), "us-east-1", idle_lifetime=0.5
    )
    try:
        first = await invoker.invoke({})
        pid = first.response["pid"]
        with anyio.fail_after(30):
            while alive(pid):
                await anyio.sleep(0.05)
        second = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert first.ok and second.ok
    assert second.response["pid"] != pid


@pytest.mark.anyio
async def test_crashing_environment_is_a_function_error_and_is_replaced() -> None:
    invoker = process_invoker(handler="process_app.behave")
    try:
        before = await invoker.invoke({})
        crashed = await invoker.invoke({"crash": 7})
        after = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert crashed.failure is not None
    assert crashed.failure.error_type == "Runtime.ExitError"
    assert crashed.failure.error_message == (
        f"RequestId: {crashed.request_id} Error: Runtime exited with error: exit status 7"
    )
    assert after.ok and after.response["pid"] != before.response["pid"]


@pytest.mark.anyio
async def test_timeout_kills_the_environment_and_reports_lambdas_message() -> None:
    invoker = process_invoker(handler="process_app.behave", timeout=1)
    try:
        warm = await invoker.invoke({})
        timed_out = await invoker.invoke({"sleep": 60})
        fresh = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert timed_out.failure is not None
    assert timed_out.failure.error_type == "Sandbox.Timedout"
    assert timed_out.failure.error_message == "Task timed out after 1.00 seconds"
    assert not alive(warm.response["pid"])
    assert fresh.ok and fresh.response["pid"] != warm.response["pid"]


@pytest.mark.anyio
@pytest.mark.parametrize("client", ["built-in", "awslambdaric"])
async def test_init_error_is_a_function_error_with_the_runtimes_message(client: str) -> None:
    command = [*AWSLAMBDARIC, "no_such_module.handler"] if client == "awslambdaric" else None
    invoker = process_invoker(
        handler="no_such_module.handler", **({"command": command} if command else {})
    )
    try:
        result = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert result.failure is not None
    assert result.failure.error_type == "Runtime.ImportModuleError"
    assert "Unable to import module 'no_such_module'" in result.failure.error_message


@pytest.mark.anyio
async def test_missing_entrypoint_is_a_function_error() -> None:
    invoker = process_invoker(command=["./no-such-bootstrap"])
    try:
        result = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert result.failure is not None and result.failure.error_type == "Runtime.InvalidEntrypoint"


@pytest.mark.anyio
async def test_memory_size_limits_the_environment() -> None:
    invoker = process_invoker(handler="process_app.behave", memory_size=128)
    try:
        small = await invoker.invoke({"allocate_mb": 8})
        large = await invoker.invoke({"allocate_mb": 512})
    finally:
        await invoker.aclose()
    assert small.ok and small.response == 8 * 1024 * 1024
    assert large.failure is not None and large.failure.error_type == "MemoryError"


@pytest.mark.anyio
async def test_output_is_forwarded_as_log_events_and_tmpdir_is_private() -> None:
    with structlog.testing.capture_logs() as logs:
        invoker = process_invoker(handler="process_app.behave")
        try:
            await invoker.invoke({"print": "hello from the handler"})
            written = await invoker.invoke({"write_tmp": "scratch data"})
            await anyio.sleep(0)
        finally:
            await invoker.aclose()
    lines = [e for e in logs if e["event"] == "function.log"]
    assert {"line": "hello from the handler", "stream": "stdout", "function": "f"}.items() <= next(
        e for e in lines if e["line"] == "hello from the handler"
    ).items()
    tmpdir = Path(written.response["path"]).parent
    assert tmpdir.name.startswith("esm-f-")
    assert not tmpdir.exists(), "the environment's TMPDIR is removed with it"


@pytest.mark.anyio
async def test_aclose_kills_every_environment() -> None:
    invoker = process_invoker(handler="process_app.behave")
    results: list[InvocationResult] = []

    async def call() -> None:
        results.append(await invoker.invoke({"sleep": 0.2}))

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
    pids = {r.response["pid"] for r in results}
    assert len(pids) == 3 and all(alive(pid) for pid in pids)
    await invoker.aclose()
    assert not any(alive(pid) for pid in pids)


@pytest.mark.anyio
async def test_reserved_concurrency_caps_environments_and_counts_throttles() -> None:
    config = function_config(
        handler="process_app.behave", reserved_concurrent_executions=2, timeout=10
    )
    metrics = Metrics()
    function = Function(create_invoker(config), metrics, function_concurrency(config))
    results: list[InvocationResult] = []

    async def call() -> None:
        results.append(await function.invoke({"sleep": 0.2}))

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(call)
    finally:
        await function.invoker.aclose()
    assert all(r.ok for r in results)
    assert len({r.response["pid"] for r in results}) <= 2
    throttles = metrics.registry.get_sample_value("esm_function_throttles_total", {"function": "f"})
    invocations = metrics.registry.get_sample_value(
        "esm_function_invocations_total", {"function": "f"}
    )
    assert (throttles, invocations) == (4.0, 6.0)
