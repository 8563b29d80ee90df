"""kind = "http": events POSTed to a real aiohttp server (the sidecar pattern)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_deleted_after_success, free_port, wait_until
from fake_endpoints import Sidecar, self_signed_tls, serve
from test_sqs_mapping import make_queue, mapping

from esm.config import Config, FunctionConfig, parse_config
from esm.errors import HandlerLoadError
from esm.invokers import Function, create_invoker, function_concurrency
from esm.invokers.http import HttpInvoker
from esm.observability import Metrics

TOKEN_ENV = "ESM_TEST_SIDECAR_TOKEN"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def sidecar() -> Iterator[tuple[Sidecar, str]]:
    app = Sidecar()
    with serve(app.app()) as base:
        yield app, f"{base}/invoke"


def http_config(url: str, **settings: Any) -> FunctionConfig:
    return parse_config({"functions": {"f": {"kind": "http", "url": url, **settings}}}).functions[
        "f"
    ]


def metered(config: FunctionConfig) -> tuple[Function, Metrics]:
    metrics = Metrics()
    return Function(create_invoker(config), metrics, function_concurrency(config)), metrics


def daemon_config(endpoint: str, functions: dict[str, Any], mappings: list[Any]) -> Config:
    """conftest's build_config gives every function a code_path, which this kind rejects."""
    daemon = {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"}
    return parse_config({"daemon": daemon, "functions": functions, "mappings": mappings})


def sample(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(f"esm_function_{name}_total", {"function": "f"})


def receive_counts(events: list[Any], body: str) -> list[str]:
    """The ApproximateReceiveCount of every SQS delivery of `body` in the events posted."""
    return [
        r["attributes"]["ApproximateReceiveCount"]
        for e in events
        if "Records" in e
        for r in e["Records"]
        if r["body"] == body
    ]


def test_sqs_mapping_posts_each_batch_and_honours_batch_item_failures(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon, sidecar, monkeypatch
):
    app, url = sidecar
    monkeypatch.setenv(TOKEN_ENV, "s3cret-token")
    queue_url, arn = make_queue(sqs, f"sidecar-{unique}", VisibilityTimeout="1")
    sqs.send_message_batch(
        QueueUrl=queue_url,
        Entries=[{"Id": "1", "MessageBody": "ok-1"}, {"Id": "2", "MessageBody": "fail-2"}],
    )
    config = daemon_config(
        endpoint,
        {
            "f": {
                "kind": "http",
                "url": url,
                "timeout": 1,
                "headers": {"X-Tenant": "blue"},
                "bearer_token_env": TOKEN_ENV,
            }
        },
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    wait_until(lambda: app.bodies().count("fail-2") >= 2, timeout=30)
    # ok-1 succeeded and was deleted (each delivery a receive of its own: five receivers).
    assert_deleted_after_success(sqs, queue_url, receive_counts(app.events(), "ok-1"), left=1)
    headers = app.requests[0]["headers"]
    assert headers["Authorization"] == "Bearer s3cret-token"
    assert headers["X-Tenant"] == "blue"
    assert headers["Content-Type"] == "application/json"
    assert headers["Lambda-Runtime-Aws-Request-Id"]
    assert headers["Lambda-Runtime-Invoked-Function-Arn"].endswith(":function:f")
    assert app.requests[0]["event"]["Records"][0]["eventSource"] == "aws:sqs"


@pytest.mark.anyio
async def test_2xx_json_body_is_the_response(sidecar: tuple[Sidecar, str]) -> None:
    _, url = sidecar
    invoker = create_invoker(http_config(url))
    try:
        answered = await invoker.invoke({"answer": {"batchItemFailures": []}})
        empty = await invoker.invoke({"status": 204})
        not_json = await invoker.invoke({"raw": "plain text"})
    finally:
        await invoker.aclose()
    assert answered.ok and answered.response == {"batchItemFailures": []}
    assert empty.ok and empty.response is None
    assert not_json.ok and not_json.invalid_response


@pytest.mark.anyio
async def test_500_is_a_function_error_carrying_the_body(sidecar: tuple[Sidecar, str]) -> None:
    _, url = sidecar
    function, metrics = metered(http_config(url))
    try:
        plain = await function.invoke({"status": 500, "body": "database is down"})
        document = await function.invoke(
            {"status": 502, "body": '{"errorType": "DbError", "errorMessage": "no connection"}'}
        )
    finally:
        await function.invoker.aclose()
    assert plain.failure is not None
    assert (plain.failure.error_type, plain.failure.error_message) == (
        "HTTP500",
        "HTTP 500: database is down",
    )
    assert document.failure is not None
    assert (document.failure.error_type, document.failure.error_message) == (
        "DbError",
        "no connection",
    )
    assert (sample(metrics, "errors"), sample(metrics, "throttles")) == (2.0, 0.0)


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 503])
async def test_429_and_503_are_throttles_retried_without_counting_errors(
    sidecar: tuple[Sidecar, str], status: int
) -> None:
    app, url = sidecar
    function, metrics = metered(http_config(url, timeout=10))
    try:
        result = await function.invoke(
            {"key": f"t{status}", "throttle_times": 2, "throttle_status": status}
        )
    finally:
        await function.invoker.aclose()
    assert result.ok and result.response == {
        "echo": {"key": f"t{status}", "throttle_times": 2, "throttle_status": status}
    }
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
async def test_no_answer_within_the_timeout_is_lambdas_timeout_error(
    sidecar: tuple[Sidecar, str],
) -> None:
    _, url = sidecar
    invoker = create_invoker(http_config(url, timeout=1))
    try:
        result = await invoker.invoke({"sleep": 30})
    finally:
        await invoker.aclose()
    assert result.failure is not None
    assert (result.failure.error_type, result.failure.error_message) == (
        "Sandbox.Timedout",
        "Task timed out after 1.00 seconds",
    )


@pytest.mark.anyio
async def test_unreachable_endpoint_is_a_throttle_not_an_error() -> None:
    invoker = create_invoker(http_config(f"http://127.0.0.1:{free_port()}/invoke"))
    try:
        result = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert result.throttled and result.failure is None


def test_bearer_token_variable_must_be_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with pytest.raises(HandlerLoadError, match=TOKEN_ENV):
        HttpInvoker(http_config("http://127.0.0.1:1/x", bearer_token_env=TOKEN_ENV))


@pytest.fixture
def self_signed(tmp_path: Path) -> ssl.SSLContext:
    context = self_signed_tls(tmp_path)
    return context


@pytest.mark.anyio
async def test_tls_is_verified_unless_verify_tls_is_false(self_signed: ssl.SSLContext) -> None:
    app = Sidecar()
    with serve(app.app(), ssl_context=self_signed) as base:
        verified = create_invoker(http_config(f"{base}/invoke"))
        unverified = create_invoker(http_config(f"{base}/invoke", verify_tls=False))
        try:
            refused = await verified.invoke({"n": 1})
            accepted = await unverified.invoke({"n": 2})
        finally:
            await verified.aclose()
            await unverified.aclose()
    assert refused.throttled, "an untrusted certificate never reaches the application"
    assert accepted.ok and accepted.response == {"echo": {"n": 2}}
    assert app.events() == [{"n": 2}]
