"""Issue #15 item 4: a sync handler that hangs past its timeout leaves its thread running
(Python cannot kill a thread). The hung threads of a function are bounded: at the limit the
function is unhealthy, its invocations are throttled (retried, never lost), /readyz and
esm_function_hung_threads say why and the log names the function."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import anyio
import pytest
import structlog
from conftest import HANDLERS, wait_until
from test_sqs_mapping import make_queue, mapping, queue_depth

from esm.config import FunctionConfig, parse_config
from esm.invokers.python import MAX_HUNG_THREADS, PythonInvoker

HUNG_APP = HANDLERS / "lambda_apps" / "hung_app"


def hung_function(release: Path, timeout: float) -> FunctionConfig:
    return FunctionConfig(
        name="hung",
        kind="python",
        handler="app.lambda_handler",
        code_path=HUNG_APP,
        timeout=timeout,
        environment={"RELEASE_FILE": str(release)},
    )


def test_past_the_limit_invocations_are_throttled_without_a_new_thread(tmp_path: Path) -> None:
    release = tmp_path / "release"

    async def main() -> None:
        invoker = PythonInvoker(hung_function(release, timeout=0.1), max_hung_threads=2)
        try:
            for _ in range(2):
                result = await invoker.invoke({"Records": []})
                assert result.failure is not None
                assert result.failure.error_type == "Sandbox.Timedout"
            assert invoker.hung_threads == 2
            threads = threading.active_count()
            refused = await invoker.invoke({"Records": []})
            assert refused.throttled and refused.failure is None
            assert threading.active_count() == threads  # no thread started for it
            assert invoker.unhealthy is not None
            assert 'kind = "process"' in invoker.unhealthy
            release.touch()  # the hung handlers end; their threads are free again
            while invoker.hung_threads:
                await anyio.sleep(0.02)
            assert invoker.unhealthy is None
            result = await invoker.invoke({"Records": []})
            assert result.ok and not result.throttled
        finally:
            release.touch()
            await invoker.aclose()

    with structlog.testing.capture_logs() as logs:
        anyio.run(main)
    unhealthy = [e for e in logs if e["event"] == "function.unhealthy"]
    assert len(unhealthy) == 1  # once per episode, naming the function
    assert unhealthy[0]["function"] == "hung" and unhealthy[0]["hung_threads"] == 2
    assert [e["event"] for e in logs if e["event"] == "function.healthy"] == ["function.healthy"]


def test_readyz_and_metric_name_the_unhealthy_function_and_no_message_is_lost(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon, tmp_path
) -> None:
    release = tmp_path / "release"
    url, arn = make_queue(sqs, f"hung-{unique}", VisibilityTimeout="1")
    count = MAX_HUNG_THREADS + 4
    for start in range(0, count, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, min(count, start + 10))
            ],
        )
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "functions": {
                "hung": {
                    "handler": "app.lambda_handler",
                    "code_path": str(HUNG_APP),
                    "timeout": 1,
                    "environment": {"RELEASE_FILE": str(release)},
                }
            },
            "mappings": [
                mapping(
                    arn, function="hung", batch_size=1, scaling_config={"maximum_concurrency": 2}
                )
            ],
        }
    )
    # A 0.2 s timeout (the config's minimum is 1 s) keeps the test short.
    function = dataclasses.replace(config.functions["hung"], timeout=0.2)
    config = dataclasses.replace(config, functions={"hung": function})
    daemon = run_daemon(config)
    try:
        status, body = wait_until(
            lambda: (r := daemon.get("/readyz"))[0] == 503 and "function hung" in r[1] and r
        )
        # The limit stops new invocations; the ones already running when it was reached
        # (at most maximum_concurrency = 2) may still time out and add their thread.
        hung = int(re.search(r"function hung: (\d+) handler threads hung", body)[1])  # type: ignore[index]
        assert MAX_HUNG_THREADS <= hung <= MAX_HUNG_THREADS + 2, body
        assert f"(limit {MAX_HUNG_THREADS})" in body and 'use kind = \\"process\\"' in body
        metrics = daemon.get("/metrics")[1]
        gauge = re.search(r'esm_function_hung_threads\{function="hung"\} (\S+)', metrics)
        assert gauge is not None
        assert MAX_HUNG_THREADS <= float(gauge[1]) <= MAX_HUNG_THREADS + 2
        assert queue_depth(sqs, url) == count  # nothing deleted while the handler hangs
    finally:
        release.touch()
    wait_until(lambda: queue_depth(sqs, url) == 0, timeout=60)  # every message handled
    wait_until(lambda: daemon.get("/readyz")[0] == 200)


@pytest.fixture(autouse=True)
def _always_release(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A failing assertion must not leave handler threads hanging for the rest of the run."""
    yield
    (tmp_path / "release").touch()
