"""Broker-queue mappings through the real CLI: `esm run -c config.toml` as a subprocess
against the session's RabbitMQ and ActiveMQ brokers, with an in-process handler writing what
it got to a file; `esm status` while it runs, SIGTERM drains with exit 0, and `esm validate`
names the family's bad keys."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from brokers import ACTIVEMQ_USER, Broker, free_port
from helpers import declare, publish, queue_counts, stomp_send, wait_until

pytest_plugins = ["mq_fixtures"]  # the session brokers (see mq_fixtures.py)

HANDLERS = Path(__file__).parents[1] / "handlers"
"""tests/handlers (not imported from tests/conftest.py: in a full run the name `conftest`
may be tests/kafka/conftest.py, see mq_fixtures.py)."""


def wait_for_http(url: str) -> None:
    """Until the URL answers 200 (/readyz answers 503 until every mapping consumes)."""

    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_until(answers)


def write_config(tmp_path: Path, port: int, mapping: str) -> Path:
    path = tmp_path / "esm.toml"
    path.write_text(
        f"""
[daemon]
http_address = "127.0.0.1:{port}"

[functions.rec]
handler = "recorder.write_broker_messages_to_file"
code_path = "{HANDLERS}"
timeout = 10
environment = {{ RECORD_PATH = "{tmp_path / "handled.jsonl"}" }}

[[mappings]]
name = "jobs"
function = "rec"
batch_size = 10
maximum_batching_window_in_seconds = 0.2
{mapping}
"""
    )
    return path


def endpoints(key: str, url: str) -> str:
    """The mapping's `self_managed_event_source` line for one broker URL."""
    return f'self_managed_event_source = {{ endpoints = {{ {key} = ["{url}"] }} }}'


RABBIT = endpoints("RABBITMQ_BROKER_URLS", "amqp://h:5672")


def handled(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "handled.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def esm(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the daemon's exit code must be 0; returns its log."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "daemon.draining" in stderr and "daemon.stopped" in stderr
    return stderr


def test_rabbitmq_mapping_runs_under_esm_run(rabbitmq: Broker, tmp_path: Path) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq.url, queue)
    sent = [f"m{i}" for i in range(25)]
    publish(rabbitmq.url, queue, sent)
    port = free_port()
    mapping = f'queues = ["{queue}"]\n' + endpoints("RABBITMQ_BROKER_URLS", rabbitmq.url)
    config = write_config(tmp_path, port, mapping)
    assert esm("validate", "-c", str(config)).returncode == 0
    proc = start(config)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz")  # 200 only once consuming
        wait_until(lambda: len(handled(tmp_path)) >= len(sent))
        wait_until(lambda: queue_counts(rabbitmq.url, queue) == (0, 1))
        status = esm("status", "-c", str(config))
        assert status.returncode == 0, status.stdout + status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("jobs"))
        assert f"queue {queue}" in row and "0 ready" in row and "1 consumers" in row, row
    finally:
        if proc.poll() is None:
            stop(proc)
        proc.kill()
    got = handled(tmp_path)
    assert sorted(m["body"] for m in got) == sorted(sent)  # each once, nothing lost
    assert {m["eventSource"] for m in got} == {"aws:rmq"}
    assert queue_counts(rabbitmq.url, queue) == (0, 0)  # acknowledged, consumer gone


def test_status_reports_an_unreachable_broker_as_its_row(tmp_path: Path) -> None:
    mapping = 'queues = ["nowhere"]\n' + endpoints(
        "RABBITMQ_BROKER_URLS", f"amqp://127.0.0.1:{free_port()}"
    )
    status = esm("status", "-c", str(write_config(tmp_path, free_port(), mapping)))
    assert status.returncode == 0, status.stdout + status.stderr
    row = next(line for line in status.stdout.splitlines() if line.startswith("jobs"))
    assert "queue nowhere" in row and "unreachable (no RabbitMQ broker reachable" in row, row


def test_activemq_mapping_runs_under_esm_run(activemq: Broker, tmp_path: Path) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ESM_TEST_AMQ_USERNAME": ACTIVEMQ_USER[0],
        "ESM_TEST_AMQ_PASSWORD": ACTIVEMQ_USER[1],
    }
    port = free_port()
    mapping = (
        f'queues = ["{queue}"]\n' + endpoints("ACTIVEMQ_BROKER_URLS", activemq.url) + "\n"
        'source_access_configurations = [{ type = "BASIC_AUTH", uri = "env:ESM_TEST_AMQ" }]'
    )
    config = write_config(tmp_path, port, mapping)
    proc = start(config, env)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz")
        sent = [f"a{i}" for i in range(15)]
        stomp_send(activemq.port, ACTIVEMQ_USER, queue, [b.encode() for b in sent])
        wait_until(lambda: len(handled(tmp_path)) >= len(sent))
        status = esm("status", "-c", str(config), env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        row = next(line for line in status.stdout.splitlines() if line.startswith("jobs"))
        assert f"queue {queue}" in row and "STOMP reports no queue depth" in row, row
    finally:
        if proc.poll() is None:
            stop(proc)
        proc.kill()
    got = handled(tmp_path)
    assert sorted(m["body"] for m in got) == sorted(sent)
    assert {m["eventSource"] for m in got} == {"aws:mq"}


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        (
            'queues = ["jobs"]\nbatch_sise = 5\n' + RABBIT,
            "mappings[0].batch_sise: unknown key",
        ),
        (
            'queues = ["a", "b"]\n' + RABBIT,
            "mappings[0].queues: must be a list of exactly one queue name",
        ),
        (
            'queues = ["jobs"]\nscaling_config = { maximum_concurrency = 0 }\n'
            'event_source_arn = "arn:aws:mq:us-east-1:123456789012:broker:b:b-1"',
            "mappings[0].scaling_config.maximum_concurrency: 0 is below the minimum 1",
        ),
        (
            'queues = ["<unresolved: !Ref Queue>"]\n' + RABBIT,
            "mappings[0].queues[0]: <unresolved: !Ref Queue> is a placeholder left by esm import",
        ),
    ],
)
def test_validate_names_the_familys_bad_keys(tmp_path: Path, mapping: str, expected: str) -> None:
    result = esm("validate", "-c", str(write_config(tmp_path, free_port(), mapping)))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_esm_reload_restarts_a_changed_mapping_on_one_consumer(
    rabbitmq: Broker, tmp_path: Path
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq.url, queue)
    port = free_port()
    mapping = f'queues = ["{queue}"]\n' + endpoints("RABBITMQ_BROKER_URLS", rabbitmq.url)
    config = write_config(tmp_path, port, mapping)
    log = tmp_path / "daemon.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=sink,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz")
        publish(rabbitmq.url, queue, ["before-1", "before-2"])
        wait_until(lambda: len(handled(tmp_path)) >= 2)
        config.write_text(config.read_text().replace("batch_size = 10", "batch_size = 3"))
        reloaded = esm("reload", "-c", str(config))
        assert reloaded.returncode == 0, reloaded.stdout + reloaded.stderr
        wait_until(lambda: "daemon.reloaded" in log.read_text())
        assert "mapping.stopped" in log.read_text()  # changed: the old runtime stopped
        wait_for_http(f"http://127.0.0.1:{port}/readyz")
        publish(rabbitmq.url, queue, ["after-1", "after-2", "after-3", "after-4"])
        wait_until(lambda: len(handled(tmp_path)) >= 6)
        wait_until(lambda: queue_counts(rabbitmq.url, queue) == (0, 1))  # the old one closed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        proc.kill()
    bodies = sorted(m["body"] for m in handled(tmp_path))
    assert bodies == ["after-1", "after-2", "after-3", "after-4", "before-1", "before-2"]
    assert queue_counts(rabbitmq.url, queue) == (0, 0)
