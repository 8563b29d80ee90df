"""`esm run` as a real subprocess: SIGTERM drains in-flight batches and loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import HANDLERS, free_port, wait_for_http, wait_until
from test_sqs_mapping import make_queue, queue_depth, receive_all


def write_config(tmp_path: Path, endpoint: str, arn: str, port: int, timeout: int = 10) -> Path:
    path = tmp_path / "esm.toml"
    path.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"

[functions.writer]
handler = "recorder.write_to_file"
code_path = "{HANDLERS}"
timeout = {timeout}
environment = {{ RECORD_PATH = "{tmp_path / "handled.jsonl"}", HANDLER_SLEEP = "1" }}

[[mappings]]
name = "drain"
function = "writer"
event_source_arn = "{arn}"
batch_size = 5
scaling_config = {{ maximum_concurrency = 2 }}
"""
    )
    return path


def handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["body"] for line in path.read_text().splitlines()]


def test_sigterm_finishes_in_flight_batches_and_loses_nothing(endpoint, sqs, unique, tmp_path):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"drain-{unique}", VisibilityTimeout="30")
    sent = [f"m{i}" for i in range(40)]
    for start in range(0, 40, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": b} for i, b in enumerate(sent[start : start + 10])
            ],
        )
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esm",
            "run",
            "-c",
            str(write_config(tmp_path, endpoint, arn, port)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        wait_until(lambda: handled(tmp_path), timeout=30)
        time.sleep(0.3)  # let the receivers have batches in flight
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "daemon.draining" in stderr and "daemon.stopped" in stderr
    done = handled(tmp_path)
    assert done, "the handler ran before the signal"
    # Everything not handled is still in the queue; nothing handled was left undeleted.
    remaining_visible = receive_all(sqs, url)
    left = sorted(m["Body"] for m in remaining_visible)
    assert sorted(set(done) | set(left)) == sorted(sent)
    assert not set(done) & set(left), "a handled message was not deleted"
    assert queue_depth(sqs, url) == len(left)
