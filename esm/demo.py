"""`esm demo`: the daemon on an embedded local SQS endpoint, no AWS account needed.

Starts moto's server on loopback, creates a queue with a dead-letter queue, writes a config
that maps it to the sample handler in `examples/handlers.py` (a plain Lambda handler using
partial batch responses), sends messages, and runs the daemon until Ctrl-C (or until the
queue is drained, with --exit-when-drained). One message in fifty is not JSON: the handler
reports it failed, and the queue's redrive policy moves it to the DLQ after three tries.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import anyio

from esm.config import Config, parse_config
from esm.observability import configure_logging

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REGION = "us-east-1"
ACCOUNT = "123456789012"


def run_demo(messages: int, port: int = 0, exit_when_drained: bool = False) -> int:
    try:
        import moto  # noqa: F401
    except ImportError:
        print("esm demo needs the embedded endpoint: pip install 'esm[test]'", file=sys.stderr)
        return 1
    port = port or _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(f"{endpoint}/moto-api/")
        with tempfile.TemporaryDirectory() as state_dir:
            config = _demo_config(endpoint, Path(state_dir))
            configure_logging("console", "info")
            print(f"esm demo: local SQS endpoint at {endpoint}; sending {messages} messages", file=sys.stderr)
            anyio.run(_run, config, endpoint, messages, exit_when_drained)
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


def _demo_config(endpoint: str, state_dir: Path) -> Config:
    return parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:9464", "log_format": "console"},
            "state": {"path": str(state_dir / "esm-state.sqlite3")},
            "functions": {
                "orders": {"handler": "handlers.handle", "code_path": str(EXAMPLES), "timeout": 5}
            },
            "mappings": [
                {
                    "name": "orders-queue",
                    "function": "orders",
                    "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders",
                    "batch_size": 10,
                    "function_response_types": ["ReportBatchItemFailures"],
                    "scaling_config": {"maximum_concurrency": 5},
                }
            ],
        }
    )


async def _run(config: Config, endpoint: str, messages: int, exit_when_drained: bool) -> None:
    from esm.daemon import Daemon

    import boto3

    sqs = boto3.client(
        "sqs", endpoint_url=endpoint, region_name=REGION,
        aws_access_key_id="esm-local", aws_secret_access_key="esm-local",
    )
    dlq = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]
    redrive = json.dumps({"deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-dlq", "maxReceiveCount": "3"})
    url = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "5", "RedrivePolicy": redrive})["QueueUrl"]
    for start in range(0, messages, 10):
        entries = [
            {"Id": str(i), "MessageBody": "not json" if i % 50 == 49 else json.dumps({"order": i})}
            for i in range(start, min(start + 10, messages))
        ]
        sqs.send_message_batch(QueueUrl=url, Entries=entries)
    daemon = Daemon(config)
    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: daemon.run(handle_signals=True))
        await _report_when_drained(sqs, url, dlq, messages, started)
        if exit_when_drained:
            daemon.request_stop()
        else:
            print("esm demo: metrics at http://127.0.0.1:9464/metrics; Ctrl-C to stop", file=sys.stderr)


async def _report_when_drained(sqs: object, url: str, dlq: str, messages: int, started: float) -> None:
    def depth(queue: str) -> int:
        attributes = sqs.get_queue_attributes(  # type: ignore[attr-defined]
            QueueUrl=queue,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    while await anyio.to_thread.run_sync(depth, url) > 0:
        await anyio.sleep(0.5)
    elapsed = time.monotonic() - started
    dead = await anyio.to_thread.run_sync(depth, dlq)
    print(
        f"esm demo: {messages} messages handled in {elapsed:.1f} s "
        f"({messages / elapsed:.0f} messages/s including retries); {dead} in the DLQ",
        file=sys.stderr,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
