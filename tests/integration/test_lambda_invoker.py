"""kind = "lambda": the Invoke API through aiobotocore, against a real local endpoint that
answers as AWS Lambda and the Runtime Interface Emulator do (moto's Lambda needs Docker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from conftest import assert_deleted_after_success, free_port, wait_until
from fake_endpoints import InvokeApi, serve
from test_http_invoker import receive_counts
from test_sqs_mapping import make_queue, mapping

from esm.config import Config, DaemonConfig, FunctionConfig, parse_config
from esm.invokers import Function, create_invoker, function_concurrency
from esm.observability import Metrics

ARN = "arn:aws:lambda:eu-west-1:123456789012:function:orders:live"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def invoke_api() -> Iterator[tuple[InvokeApi, str]]:
    app = InvokeApi()
    with serve(app.app()) as base:
        yield app, base


def lambda_config(endpoint_url: str | None, **settings: Any) -> FunctionConfig:
    section = {"kind": "lambda", "function_name": "orders", **settings}
    if endpoint_url is not None:
        section["endpoint_url"] = endpoint_url
    return parse_config({"functions": {"f": section}}).functions["f"]


def daemon_config(endpoint: str, functions: dict[str, Any], mappings: list[Any]) -> Config:
    """conftest's build_config gives every function a code_path, which this kind rejects."""
    daemon = {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"}
    return parse_config({"daemon": daemon, "functions": functions, "mappings": mappings})


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(f"esm_function_{name}_total", {"function": "f"})


def test_sqs_mapping_invokes_through_the_invoke_api(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon, invoke_api
):
    app, base = invoke_api
    queue_url, arn = make_queue(sqs, f"invoke-{unique}", VisibilityTimeout="1")
    sqs.send_message_batch(
        QueueUrl=queue_url,
        Entries=[{"Id": "1", "MessageBody": "ok-1"}, {"Id": "2", "MessageBody": "fail-2"}],
    )
    config = daemon_config(
        endpoint,
        {
            "f": {
                "kind": "lambda",
                "function_name": "orders:live",
                "endpoint_url": base,
                "timeout": 1,
            }
        },
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    wait_until(lambda: app.bodies().count("fail-2") >= 2, timeout=30)
    # ok-1 succeeded and was deleted (each delivery a receive of its own: five receivers).
    assert_deleted_after_success(sqs, queue_url, receive_counts(app.events(), "ok-1"), left=1)
    first = app.requests[0]
    assert first["name"] == "orders:live"
    assert first["invocation_type"] == "RequestResponse"


@pytest.mark.anyio
async def test_response_payload_and_arn_with_qualifier(invoke_api: tuple[InvokeApi, str]) -> None:
    app, base = invoke_api
    invoker = create_invoker(
        lambda_config(base, function_name=ARN), DaemonConfig(region="us-east-2")
    )
    try:
        result = await invoker.invoke({"n": 1})
    finally:
        await invoker.aclose()
    assert result.ok and result.response == {"function": ARN, "event": {"n": 1}}
    assert invoker.arn == ARN
    assert "/eu-west-1/lambda/aws4_request" in app.requests[0]["headers"]["Authorization"], (
        "the request is signed for the ARN's region"
    )


@pytest.mark.anyio
async def test_function_error_header_is_a_function_error_with_the_payload(
    invoke_api: tuple[InvokeApi, str],
) -> None:
    _, base = invoke_api
    metrics = Metrics()
    config = lambda_config(base)
    function = Function(create_invoker(config), metrics, function_concurrency(config))
    try:
        result = await function.invoke({"raise": "bad order"})
    finally:
        await function.invoker.aclose()
    assert result.failure is not None
    assert (result.failure.error_type, result.failure.error_message) == ("ValueError", "bad order")
    assert result.failure.stack_trace == ('  File "/var/task/app.py", line 3, in handler\n',)
    assert (sample(metrics, "errors"), sample(metrics, "invocations")) == (1.0, 1.0)


@pytest.mark.anyio
async def test_emulator_errors_without_the_header_and_empty_bodies_are_failures(
    invoke_api: tuple[InvokeApi, str],
) -> None:
    _, base = invoke_api
    invoker = create_invoker(lambda_config(base))
    try:
        error = await invoker.invoke({"raise": "from the emulator", "rie": True})
        died = await invoker.invoke({"empty": True})
    finally:
        await invoker.aclose()
    assert error.failure is not None and error.failure.error_message == "from the emulator"
    assert died.failure is not None and died.failure.error_type == "Runtime.ExitError"


@pytest.mark.anyio
async def test_too_many_requests_is_a_throttle_retried_with_backoff(
    invoke_api: tuple[InvokeApi, str],
) -> None:
    app, base = invoke_api
    metrics = Metrics()
    config = lambda_config(base, timeout=10)
    function = Function(create_invoker(config), metrics, function_concurrency(config))
    try:
        result = await function.invoke({"key": "busy", "throttle_times": 2})
    finally:
        await function.invoker.aclose()
    assert result.ok and result.response["event"] == {"key": "busy", "throttle_times": 2}
    assert len(app.requests) == 3
    assert (
        sample(metrics, "throttles"),
        sample(metrics, "errors"),
        sample(metrics, "invocations"),
    ) == (
        2.0,
        0.0,
        1.0,
    )


@pytest.mark.anyio
async def test_missing_function_or_unreachable_endpoint_is_not_run_and_not_an_error(
    invoke_api: tuple[InvokeApi, str],
) -> None:
    _, base = invoke_api
    missing = create_invoker(lambda_config(base, function_name="missing"))
    unreachable = create_invoker(lambda_config(f"http://127.0.0.1:{free_port()}"))
    try:
        not_found = await missing.invoke({})
        refused = await unreachable.invoke({})
    finally:
        await missing.aclose()
        await unreachable.aclose()
    assert not_found.throttled and not_found.failure is None
    assert refused.throttled and refused.failure is None
