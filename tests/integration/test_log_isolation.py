"""esm's log stays JSON whatever an in-process handler does to the root logger.

In-process handlers share the interpreter, so a handler that calls `logging.basicConfig(
force=True)`, replaces the root logger's handlers or lowers its level used to route esm's own
library loggers (botocore, aiobotocore, aiohttp, asyncio) through the handler's plain-text
handler, at DEBUG: non-JSON lines, and botocore's DEBUG dumps of signed requests. The daemon
runs as `esm run`; its stdout and stderr are read separately.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HANDLERS, free_port, wait_for_http, wait_until
from test_sqs_mapping import make_queue

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("style", ["basicconfig", "handlers", "powertools"])
def test_a_handler_that_reconfigures_the_root_logger_leaves_esm_log_json(
    endpoint,
    sqs,
    unique,
    tmp_path: Path,
    style: str,  # type: ignore[no-untyped-def]
) -> None:
    url, arn = make_queue(sqs, f"logs-{style}-{unique}")
    record_path = tmp_path / "handled.jsonl"
    port = free_port()
    config = tmp_path / "esm.toml"
    config.write_text(
        f'[daemon]\nendpoint_url = "{endpoint}"\nhttp_address = "127.0.0.1:{port}"\n'
        f'[functions.f]\nhandler = "logging_reconfigurer.handle"\ncode_path = "{HANDLERS}"\n'
        f'environment = {{ RECORD_PATH = "{record_path}", LOGGING_STYLE = "{style}" }}\n'
        f'[[mappings]]\nfunction = "f"\nevent_source_arn = "{arn}"\n'
    )
    stdout_path, stderr_path = tmp_path / "stdout", tmp_path / "stderr"
    with stdout_path.open("w") as out, stderr_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=out,
            stderr=err,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"},
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz")
            sqs.send_message(QueueUrl=url, MessageBody="m1")
            wait_until(lambda: record_path.exists() and "m1" in record_path.read_text())
            wait_until(lambda: "reconfigurer handled a batch" in stdout_path.read_text())
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    stderr_lines = stderr_path.read_text().splitlines()
    for line in stderr_lines:
        event = json.loads(line)  # raises on a line that is not JSON
        assert "event" in event and "level" in event, line
    assert "daemon.stopped" in {json.loads(line)["event"] for line in stderr_lines}
    stdout = stdout_path.read_text().splitlines()
    # The handler's own logging works as it configured it (Lambda behaviour)...
    assert any("reconfigurer handled a batch" in line for line in stdout), stdout
    # ...and nothing of esm's (botocore, asyncio, ...) reaches the handler's handlers.
    leaked = [line for line in stdout if "reconfigurer" not in line]
    assert not leaked, leaked[:5]
