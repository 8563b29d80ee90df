"""The Kafka family through the real CLI: `esm run -c config.toml` as a subprocess against
the Tansu broker (records arrive, /readyz, SIGTERM drain), `esm validate` naming a bad Kafka
key, `esm status` showing partitions, committed offsets and lag, and a broker that is not
there yet: the daemon keeps running, not ready, and reads once the broker comes up."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from aiokafka import AIOKafkaProducer
from kafka_fixtures import KafkaTopic, create_topic, free_port, readyz_status, start_tansu, until

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

HANDLERS = Path(__file__).parent.parent / "handlers"


def write_config(tmp_path: Path, bootstrap: str, topic: str, port: int, extra: str = "") -> Path:
    path = tmp_path / "esm.toml"
    path.write_text(
        f"""
[daemon]
http_address = "127.0.0.1:{port}"
region = "us-east-1"

[functions.recorder]
handler = "recorder.kafka_write_to_file"
code_path = "{HANDLERS}"
environment = {{ RECORD_PATH = "{tmp_path / "handled.txt"}" }}

[[mappings]]
name = "orders"
function = "recorder"
self_managed_event_source = {{ endpoints = {{ KAFKA_BOOTSTRAP_SERVERS = ["{bootstrap}"] }} }}
topics = ["{topic}"]
self_managed_kafka_event_source_config = {{ consumer_group_id = "g-{uuid.uuid4().hex[:8]}" }}
starting_position = "LATEST"
batch_size = 10
maximum_batching_window_in_seconds = 0.1
{extra}
"""
    )
    return path


def handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.txt"
    if not path.exists():
        return []
    return [line.split(" ", 2)[2] for line in path.read_text().splitlines()]


async def _produce(bootstrap: str, topic: str, values: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value.encode(), partition=i % 3)
    finally:
        await producer.stop()


def esm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm", *args], capture_output=True, text=True, timeout=60
    )


def test_esm_run_reads_the_topic_becomes_ready_and_drains_on_sigterm(
    kafka_topic: KafkaTopic, tmp_path: Path, daemon: Callable[[Path], subprocess.Popen[str]]
) -> None:
    port = free_port()
    config = write_config(tmp_path, kafka_topic.bootstrap, kafka_topic.name, port)
    proc = daemon(config)
    # LATEST: ready means positioned, so every record produced from now on is read.
    until(lambda: readyz_status(port) == 200)
    sent = [f"v{i}" for i in range(9)]
    asyncio.run(_produce(kafka_topic.bootstrap, kafka_topic.name, sent))
    until(lambda: sorted(handled(tmp_path)) == sorted(sent))

    # esm status: one row per partition, committed past every record, nothing behind.
    def caught_up() -> str | None:
        out = esm("status", "-c", str(config)).stdout
        rows = [line.split() for line in out.splitlines() if line.startswith("orders")]
        ok = len(rows) == 3 and all(row[-2:] == ["lag", "0"] for row in rows)
        return out if ok else None

    table = until(caught_up)
    for partition in range(3):
        assert f"{kafka_topic.name}-{partition}" in table
    assert sorted(int(line.split()[4]) for line in table.splitlines()[1:]) == [3, 3, 3]

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = (tmp_path / "esm.log").read_text()
    assert "daemon.draining" in log and "daemon.stopped" in log
    assert "kafka.consumer.stopped" in log


def test_esm_validate_names_the_bad_kafka_keys(tmp_path: Path) -> None:
    extra = 'kafka_security_protocol = "TLS"\nparallelization_factor = 2'
    config = write_config(tmp_path, "127.0.0.1:9092", "orders", 8080, extra)
    text = config.read_text().replace("batch_size = 10", "batch_size = 20000")
    config.write_text(text.replace('topics = ["orders"]', 'topics = ["a", "b"]'))
    result = esm("validate", "-c", str(config))
    assert result.returncode == 2, result
    problems = result.stderr.splitlines()
    assert any(p.startswith("mappings[0].batch_size:") and "10000" in p for p in problems)
    assert any(p.startswith("mappings[0].topics:") and "exactly one" in p for p in problems)
    assert any(
        p.startswith("mappings[0].kafka_security_protocol:") and "SASL_SSL" in p for p in problems
    )
    assert any(p.startswith("mappings[0].parallelization_factor:") for p in problems)
    assert "Traceback" not in result.stderr


def test_a_broker_that_is_not_up_yet_keeps_the_daemon_running_not_ready(
    tmp_path: Path, daemon: Callable[[Path], subprocess.Popen[str]]
) -> None:
    broker_port, port = free_port(), free_port()
    bootstrap = f"127.0.0.1:{broker_port}"
    topic = f"t-{uuid.uuid4().hex[:10]}"
    proc = daemon(write_config(tmp_path, bootstrap, topic, port))
    log = tmp_path / "esm.log"
    until(lambda: "kafka.consumer.unavailable" in log.read_text())
    assert proc.poll() is None, log.read_text()
    assert readyz_status(port) == 503
    broker = start_tansu(broker_port)
    try:
        asyncio.run(create_topic(bootstrap, topic, 3))
        until(lambda: readyz_status(port) == 200)
        asyncio.run(_produce(bootstrap, topic, ["after-outage"]))
        until(lambda: handled(tmp_path) == ["after-outage"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        broker.kill()
        broker.wait(timeout=10)


def test_esm_reload_restarts_a_changed_kafka_mapping(
    kafka_topic: KafkaTopic, tmp_path: Path, daemon: Callable[[Path], subprocess.Popen[str]]
) -> None:
    port = free_port()
    config = write_config(tmp_path, kafka_topic.bootstrap, kafka_topic.name, port)
    proc = daemon(config)
    until(lambda: readyz_status(port) == 200)
    # A new consumer group (write_config draws one) and another batch size: a changed mapping.
    changed = write_config(tmp_path, kafka_topic.bootstrap, kafka_topic.name, port)
    changed.write_text(changed.read_text().replace("batch_size = 10", "batch_size = 5"))
    result = esm("reload", "-c", str(config))
    assert result.returncode == 0, result.stderr
    log = tmp_path / "esm.log"
    until(lambda: '"restarted": ["orders"]' in log.read_text())
    until(lambda: readyz_status(port) == 200)
    asyncio.run(_produce(kafka_topic.bootstrap, kafka_topic.name, ["after-reload"]))
    until(lambda: handled(tmp_path) == ["after-reload"])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
