"""SASL against real brokers, with the secret in moto's Secrets Manager, through `esm run`.

Rotation (a refused login reads the secret again): noida-db accepts any password, so the
refusal of the old one is the byte-level proxy's (tests/faults/fault_proxy.py) resetting
a connection whose PLAIN login carries it, as a broker that no longer knows the password
closes the login; the proxy also sees which password each later login carried.

Two brokers, because neither one does all of it (README, Kafka: "SASL"):
- noida-db's Kafka offers SASL/PLAIN only and accepts any username/password: it shows esm
  reading the BASIC_AUTH secret from Secrets Manager, doing the PLAIN handshake the broker
  asks for and draining the topic; it cannot show a wrong password being refused.
- Tansu with `--authentication` offers SCRAM-SHA-256/512 but its only storage engine here
  (memory / object store) keeps no users, so every SCRAM login is refused: it shows a
  refused login as a clear mapping error (AWS's "SASL authentication failed"), the daemon
  up and not ready, and the password in no log line.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from kafka_fixtures import free_port, readyz_status, start_tansu, until

from esm.config import _Table
from esm.sources.kafka.auth import KafkaLoginFailed, check_login
from esm.sources.kafka.config import parse_kafka_mapping

sys.path.insert(0, str(Path(__file__).parent.parent / "faults"))
from fault_proxy import TcpFaultProxy  # noqa: E402

pytest_plugins = ["kafka_fixtures"]  # the session Tansu broker (see kafka_fixtures.py)

HANDLERS = Path(__file__).parent.parent / "handlers"
PASSWORD = "pw-" + uuid.uuid4().hex  # never to appear in a log line


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, f"broker exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.02)


@pytest.fixture(scope="module")
def noida_bootstrap() -> Iterator[str]:
    """`host:port` of noida-db's Kafka service (the binary its wheel ships), killed at the end."""
    binary = str(files("noida_db").joinpath("noida-db"))
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="esm-noida-") as data:
        proc = subprocess.Popen(
            [binary, "start", "--only", "kafka", "--kafka-port", str(port), "--data-dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port(port, proc)
            yield f"127.0.0.1:{port}"
        finally:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def tansu_with_auth() -> Iterator[str]:
    """A Tansu broker that requires SASL (SCRAM only) and knows no user."""
    port = free_port()
    proc = start_tansu(port, "--authentication")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _login(user: str) -> dict[str, str]:
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": user,
        "sasl_plain_password": PASSWORD,
    }


async def _create_and_fill(bootstrap: str, topic: str, values: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_login("setup"))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **_login("setup"))
    await producer.start()
    try:
        for i, value in enumerate(values):
            await producer.send_and_wait(topic, value.encode(), partition=i % 3)
    finally:
        await producer.stop()


def _secret(endpoint: str, username: str, password: str = PASSWORD) -> str:
    sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    return str(
        sm.create_secret(
            Name=f"kafka-{uuid.uuid4().hex[:8]}",
            SecretString=json.dumps({"username": username, "password": password}),
        )["ARN"]
    )


def _config(
    tmp_path: Path, endpoint: str, bootstrap: str, topic: str, port: int, auth: str
) -> Path:
    path = tmp_path / "esm.toml"
    path.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
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
starting_position = "TRIM_HORIZON"
batch_size = 10
maximum_batching_window_in_seconds = 0.1
source_access_configurations = [{auth}]
kafka_security_protocol = "SASL_PLAINTEXT"
"""
    )
    return path


def _handled(tmp_path: Path) -> list[str]:
    path = tmp_path / "handled.txt"
    if not path.exists():
        return []
    return sorted(line.split(" ", 2)[2] for line in path.read_text().splitlines())


def test_basic_auth_secret_from_secrets_manager_logs_in_with_plain_and_drains(
    noida_bootstrap: str,
    endpoint: str,
    tmp_path: Path,
    daemon: Callable[[Path], subprocess.Popen[str]],
) -> None:
    topic = f"t-{uuid.uuid4().hex[:10]}"
    sent = [f"v{i}" for i in range(12)]
    asyncio.run(_create_and_fill(noida_bootstrap, topic, sent))
    arn = _secret(endpoint, "esm-reader")
    port = free_port()
    auth = f'{{ type = "BASIC_AUTH", uri = "{arn}" }}'
    proc = daemon(_config(tmp_path, endpoint, noida_bootstrap, topic, port, auth))
    until(lambda: _handled(tmp_path) == sorted(sent))
    assert readyz_status(port) == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = (tmp_path / "esm.log").read_text()
    # aiokafka warns so only when it sends a PLAIN login over SASL_PLAINTEXT.
    assert "Sending username and password in the clear" in log
    assert PASSWORD not in log


def test_a_refused_scram_login_is_a_clear_mapping_error_and_the_daemon_stays_up(
    tansu_with_auth: str,
    endpoint: str,
    tmp_path: Path,
    daemon: Callable[[Path], subprocess.Popen[str]],
) -> None:
    arn = _secret(endpoint, "nobody")
    port = free_port()
    auth = f'{{ type = "SASL_SCRAM_512_AUTH", uri = "{arn}" }}'
    config = _config(tmp_path, endpoint, tansu_with_auth, "orders", port, auth)
    proc = daemon(config)
    log_path = tmp_path / "esm.log"
    until(lambda: "SASL authentication failed" in log_path.read_text())
    assert proc.poll() is None, log_path.read_text()
    assert readyz_status(port) == 503
    line = next(x for x in log_path.read_text().splitlines() if "SASL authentication" in x)
    event = json.loads(line)
    assert event["event"] == "kafka.consumer.unavailable"
    assert event["mapping"] == "orders" and event["error"] == "KafkaLoginFailed"
    assert "SCRAM-SHA-512 refused" in event["detail"] and arn in event["detail"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    log = log_path.read_text()
    assert PASSWORD not in log and "Traceback" not in log
    # esm status says the same in the mapping's one `unreachable (...)` row, as for any
    # broker it cannot read (the other mappings would still be listed).
    status = subprocess.run(
        [sys.executable, "-m", "esm", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    (row,) = [line for line in status.stdout.splitlines() if line.startswith("orders")]
    assert "unreachable (mapping orders: SASL authentication failed (SCRAM-SHA-512" in row
    assert PASSWORD not in status.stderr + status.stdout and "Traceback" not in status.stderr


def _mapping(bootstrap: str, access: str) -> Any:
    problems: list[str] = []
    table = {
        "name": "m",
        "function": "f",
        "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
        "topics": ["t"],
        "starting_position": "LATEST",
        "source_access_configurations": [{"type": access, "uri": "env:KAFKA_LOGIN"}],
        "kafka_security_protocol": "SASL_PLAINTEXT",
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    return config


@pytest.mark.anyio
async def test_check_login_names_a_mechanism_the_broker_does_not_offer(
    noida_bootstrap: str, tansu_with_auth: str
) -> None:
    scram = {**_login("alice"), "sasl_mechanism": "SCRAM-SHA-256"}
    with pytest.raises(KafkaLoginFailed) as info:
        await check_login(
            _mapping(noida_bootstrap, "SASL_SCRAM_256_AUTH"), [noida_bootstrap], scram
        )
    text = str(info.value)
    assert text.startswith("mapping m: SASL authentication failed (")
    assert "SCRAM-SHA-256" in text and "['PLAIN']" in text  # what the broker offers instead
    assert "env:KAFKA_LOGIN" in text and PASSWORD not in text and "alice" not in text
    # Tansu answers a PLAIN handshake by closing the connection (it offers SCRAM only).
    with pytest.raises(KafkaLoginFailed, match="closed the connection during the PLAIN login"):
        await check_login(_mapping(tansu_with_auth, "BASIC_AUTH"), [tansu_with_auth], _login("a"))


@pytest.mark.anyio
async def test_check_login_passes_where_the_broker_accepts_and_skips_unreachable_ones(
    noida_bootstrap: str,
) -> None:
    config = _mapping(noida_bootstrap, "BASIC_AUTH")
    closed = f"127.0.0.1:{free_port()}"  # nothing listens: left to the consumer
    await check_login(config, [closed, noida_bootstrap], _login("alice"))
    await check_login(config, [closed], _login("alice"))
    await check_login(config, [noida_bootstrap], {"security_protocol": "PLAINTEXT"})


def _refusing_proxy(bootstrap: str, old: str, new: str) -> tuple[TcpFaultProxy, list[str]]:
    """A proxy to `bootstrap` that resets every connection whose PLAIN login carries `old`
    (a broker that no longer knows it), and the password each login carried, in order."""
    host, _, port_text = bootstrap.rpartition(":")
    proxy = TcpFaultProxy(host, int(port_text)).start()
    logins: list[str] = []

    def refuse_old(chunk: bytes) -> bool:
        if old.encode() in chunk or new.encode() in chunk:
            logins.append(old if old.encode() in chunk else new)
        return old.encode() in chunk

    proxy.reset_when(refuse_old, times=1_000)
    return proxy, logins


def test_a_refused_login_reads_the_rotated_secret_again_and_the_next_login_uses_it(
    noida_bootstrap: str,
    endpoint: str,
    tmp_path: Path,
    daemon: Callable[[Path], subprocess.Popen[str]],
) -> None:
    """The secret's password is rotated in Secrets Manager while esm runs and the broker
    refuses the old one: esm reads the secret again before it reconnects (riding out a
    moment when the secret is not JSON), logs in with the new password and drains, without
    a restart. Before, it retried the old password until restarted (the secret was read
    only at start)."""
    old, new = "pw-old-" + uuid.uuid4().hex, "pw-new-" + uuid.uuid4().hex
    topic = f"t-{uuid.uuid4().hex[:10]}"
    sent = [f"v{i}" for i in range(6)]
    asyncio.run(_create_and_fill(noida_bootstrap, topic, sent))
    proxy, logins = _refusing_proxy(noida_bootstrap, old, new)
    try:
        arn = _secret(endpoint, "esm-reader", old)
        port = free_port()
        auth = f'{{ type = "BASIC_AUTH", uri = "{arn}" }}'
        proc = daemon(_config(tmp_path, endpoint, proxy.address, topic, port, auth))
        log_path = tmp_path / "esm.log"
        until(lambda: log_path.exists() and "SASL authentication failed" in log_path.read_text())
        assert readyz_status(port) == 503 and _handled(tmp_path) == []
        sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
        # A rotation half done: the secret is not JSON for a while. The re-read fails, the
        # mapping stays not ready naming the secret, and it is read again at the next attempt.
        sm.put_secret_value(SecretId=arn, SecretString="{not json")
        until(lambda: "not a JSON object" in log_path.read_text())
        assert readyz_status(port) == 503
        sm.put_secret_value(
            SecretId=arn, SecretString=json.dumps({"username": "esm-reader", "password": new})
        )
        until(lambda: _handled(tmp_path) == sorted(sent))
        assert readyz_status(port) == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proxy.stop()
    # Every login before the rotation carried the old password and was refused; the first
    # one after it carried the new one, and so did every later one.
    first_new = logins.index(new)
    assert first_new > 0 and set(logins[:first_new]) == {old}
    assert set(logins[first_new:]) == {new}
    events = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    rereads = [e for e in events if e["event"] == "kafka.secret.reread"]
    unreadable = [
        e
        for e in events
        if e["event"] == "kafka.consumer.unavailable" and e["error"] == "SourceUnavailable"
    ]
    assert unreadable and all(
        e["detail"] == f"secret secretsmanager:{arn}: not a JSON object" for e in unreadable
    )
    assert rereads and all(e["secret"] == f"secretsmanager:{arn}" for e in rereads)
    assert rereads[-1]["changed"] is True
    # Bounded: one read per reconnect attempt, on the reconnect backoff (0.5 s doubling).
    assert len(rereads) == first_new
    log = log_path.read_text()
    assert old not in log and new not in log and "Traceback" not in log


async def _read_topic(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every message of `topic` (noida-db, read directly), JSON-decoded."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        **_login("setup"),
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=2_000)
        return [json.loads(m.value) for ms in batches.values() for m in ms]
    finally:
        await consumer.stop()


def test_a_kafka_topic_destination_logs_in_with_the_rotated_secret_after_a_refused_produce(
    noida_bootstrap: str,
    endpoint: str,
    tmp_path: Path,
    daemon: Callable[[Path], subprocess.Popen[str]],
) -> None:
    """The password is rotated while esm runs; the consumer reads it again after its refused
    login, and the mapping's Kafka topic destination, whose producer still had the options
    read at start, is refused once, reads the secret again and delivers the given-up record.
    Before, the destination kept the old password and was refused until a restart (the
    partition blocked behind the undelivered record)."""
    old, new = "pw-old-" + uuid.uuid4().hex, "pw-new-" + uuid.uuid4().hex
    topic, dlq = f"t-{uuid.uuid4().hex[:10]}", f"dlq-{uuid.uuid4().hex[:10]}"
    asyncio.run(_create_and_fill(noida_bootstrap, topic, ["poison"]))
    asyncio.run(_create_and_fill(noida_bootstrap, dlq, []))
    proxy, logins = _refusing_proxy(noida_bootstrap, old, new)
    try:
        arn = _secret(endpoint, "esm-reader", old)
        port = free_port()
        auth = f'{{ type = "BASIC_AUTH", uri = "{arn}" }}'
        config = _config(tmp_path, endpoint, proxy.address, topic, port, auth)
        text = config.read_text().replace("kafka_write_to_file", "kafka_fail_on_poison")
        config.write_text(
            text
            + "maximum_retry_attempts = 0\n"
            + f'destination_config = {{ on_failure = {{ destination = "kafka://{dlq}" }} }}\n'
        )
        proc = daemon(config)
        log_path = tmp_path / "esm.log"
        until(lambda: log_path.exists() and "SASL authentication failed" in log_path.read_text())
        sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
        sm.put_secret_value(
            SecretId=arn, SecretString=json.dumps({"username": "esm-reader", "password": new})
        )
        delivered = until(lambda: asyncio.run(_read_topic(noida_bootstrap, dlq)))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proxy.stop()
    assert _handled(tmp_path) == ["poison"]
    (record,) = delivered
    assert record["requestContext"]["condition"] == "RetryAttemptsExhausted"
    (given_up,) = record["payload"]["records"][f"{topic}-0"]
    assert given_up["value"] == "cG9pc29u"  # base64 of b"poison"
    # The consumer's first new login came before the destination's refused old one; the
    # destination's next login (and every later one) carried the new password.
    first_new = logins.index(new)
    assert old in logins[first_new:] and logins[-1] == new
    events = [
        json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
    ]
    rereads = [e for e in events if e["event"] == "kafka.on_failure.secret.reread"]
    assert rereads and rereads[0]["destination"] == f"kafka://{dlq}" and rereads[0]["changed"]
    log = log_path.read_text()
    assert old not in log and new not in log and "Traceback" not in log


@pytest.mark.anyio
async def test_aiokafkas_scram_keyerror_on_a_refusal_is_told_from_other_keyerrors(
    tansu_with_auth: str,
) -> None:
    """Tansu refuses every SCRAM login with RFC 5802's `e=` answer; aiokafka's SCRAM client
    then raises KeyError('v'). Raised by a consumer's own connection (a reconnect after the
    password was rotated), the runtime treats it as a refused login and reads the secret
    again; a KeyError from anywhere else stays a bug and is not retried as a login."""
    from aiokafka.conn import create_conn

    from esm.sources.kafka.auth import is_scram_refusal

    host, _, port = tansu_with_auth.rpartition(":")
    scram = {**_login("alice"), "sasl_mechanism": "SCRAM-SHA-512"}
    with pytest.raises(KeyError) as info:
        await create_conn(host, int(port), **scram)
    assert is_scram_refusal(info.value)
    with pytest.raises(KeyError) as other:
        _ = {}["v"]
    assert not is_scram_refusal(other.value)
