"""Broker queues under network faults, through a byte-level fault proxy (tests/faults/
fault_proxy.py) between esm and a real RabbitMQ node or ActiveMQ broker.

The proxy resets the connection exactly when esm sends an acknowledgement, dropping it: the
broker never reads that ack, so it must redeliver those messages (never lost), and esm must
reconnect by itself and drain the queue. An unreachable broker turns the mapping not ready,
naming the error, until it is back.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from brokers import ACTIVEMQ_USER, Broker
from helpers import (
    RunningMapping,
    activemq_mapping,
    declare,
    publish,
    queue_counts,
    rabbit_mapping,
    stomp_receive,
    stomp_send,
    wait_until,
)
from mq_handlers import events_for, messages_of

sys.path.insert(0, str(Path(__file__).parent.parent / "faults"))
from fault_proxy import TcpFaultProxy  # noqa: E402

pytest_plugins = ["mq_fixtures"]  # the session brokers (see mq_fixtures.py)

AMQP_BASIC_ACK = re.compile(rb"\x01..\x00\x00\x00\x0d\x00\x3c\x00\x50", re.DOTALL)
"""An AMQP 0-9-1 method frame (type 1, any channel, 13-byte payload) of Basic.Ack (60, 80)."""
STOMP_ACK = re.compile(rb"(?:^|\x00|\n)ACK\n")
"""A STOMP ACK frame."""
STOMP_NACK = re.compile(rb"(?:^|\x00|\n)NACK\n")
"""A STOMP NACK frame."""


@pytest.fixture(autouse=True)
def login() -> Iterator[None]:
    """ActiveMQ mappings read BASIC_AUTH from env:ESM_TEST_AMQ (the broker's one user)."""
    os.environ["ESM_TEST_AMQ_USERNAME"], os.environ["ESM_TEST_AMQ_PASSWORD"] = ACTIVEMQ_USER
    yield
    del os.environ["ESM_TEST_AMQ_USERNAME"], os.environ["ESM_TEST_AMQ_PASSWORD"]


def proxy_to(broker: Broker) -> Iterator[TcpFaultProxy]:
    proxy = TcpFaultProxy("127.0.0.1", broker.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def rabbit_proxy(rabbitmq: Broker) -> Iterator[TcpFaultProxy]:
    yield from proxy_to(rabbitmq)


@pytest.fixture
def activemq_proxy(activemq: Broker) -> Iterator[TcpFaultProxy]:
    yield from proxy_to(activemq)


def deliveries(arn: str) -> list[tuple[str, bool]]:
    """(body, redelivered) of every message invoked, in invocation order."""
    import base64

    return [
        (base64.b64decode(m["data"]).decode(), bool(m["redelivered"]))
        for event in events_for(arn)
        for m in messages_of(event)
    ]


def check_redeliveries(got: list[tuple[str, bool]], sent: set[str]) -> dict[str, int]:
    """Every message delivered; a message delivered again only after its first delivery and
    then marked redelivered (the broker redelivered what it never saw acknowledged)."""
    bodies = [b for b, _ in got]
    assert set(bodies) == sent, f"lost: {sorted(sent - set(bodies))[:5]}"
    seen: set[str] = set()
    for body, redelivered in got:
        if body in seen:
            assert redelivered, f"{body} delivered twice without the redelivered flag"
        seen.add(body)
    counts = Counter(bodies)
    return {"delivered": len(bodies), "duplicates": sum(c - 1 for c in counts.values())}


def test_rabbitmq_acks_lost_to_connection_resets_are_redelivered_never_lost(
    rabbitmq: Broker, rabbit_proxy: TcpFaultProxy
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq.url, queue)
    sent = [f"m{i}" for i in range(1000)]
    publish(rabbitmq.url, queue, sent)
    rabbit_proxy.reset_when(lambda chunk: bool(AMQP_BASIC_ACK.search(chunk)), times=3)
    table = rabbit_mapping(
        f"amqp://{rabbit_proxy.address}",
        queue,
        batch_size=10,
        maximum_batching_window_in_seconds=0.05,
    )
    running = RunningMapping(table)
    try:
        wait_until(lambda: rabbit_proxy.armed() == 0, timeout=60)
        wait_until(lambda: {b for b, _ in deliveries(running.arn)} == set(sent), timeout=60)
        wait_until(lambda: running.mapping.ready, timeout=30)
        wait_until(lambda: running.mapping.status().unacknowledged == 0, timeout=30)
        wait_until(lambda: queue_counts(rabbitmq.url, queue)[0] == 0, timeout=30)
        got = deliveries(running.arn)
    finally:
        running.stop()
    counts = check_redeliveries(got, set(sent))
    redelivered = sum(1 for _, r in got if r)
    print(
        "rabbitmq ack resets:",
        {**counts, "redelivered": redelivered, "connections": rabbit_proxy.accepted},
    )
    assert redelivered > 0  # the dropped acks' messages came back
    assert rabbit_proxy.accepted >= 4  # esm reconnected after each reset
    assert queue_counts(rabbitmq.url, queue) == (0, 0)  # everything acknowledged in the end


def test_activemq_acks_lost_to_connection_resets_are_redelivered_never_lost(
    activemq: Broker, activemq_proxy: TcpFaultProxy
) -> None:
    queue = f"q-{uuid.uuid4().hex[:8]}"
    sent = [f"m{i}" for i in range(300)]
    stomp_send(
        activemq.port, ACTIVEMQ_USER, queue, [s.encode() for s in sent], {"persistent": "true"}
    )
    activemq_proxy.reset_when(lambda chunk: bool(STOMP_ACK.search(chunk)), times=3)
    table = activemq_mapping(
        f"stomp://{activemq_proxy.address}",
        queue,
        batch_size=10,
        maximum_batching_window_in_seconds=0.05,
    )
    running = RunningMapping(table)
    try:
        wait_until(lambda: activemq_proxy.armed() == 0, timeout=60)
        wait_until(lambda: {b for b, _ in deliveries(running.arn)} == set(sent), timeout=90)
        wait_until(lambda: running.mapping.ready, timeout=30)
        wait_until(lambda: running.mapping.status().unacknowledged == 0, timeout=30)
        got = deliveries(running.arn)
    finally:
        running.stop()
    counts = check_redeliveries(got, set(sent))
    print("activemq ack resets:", {**counts, "connections": activemq_proxy.accepted})
    assert counts["duplicates"] > 0  # the dropped acks' messages came back
    # Nothing left behind unacknowledged: a fresh consumer finds the queue empty.
    marker = f"marker-{uuid.uuid4().hex[:6]}"
    stomp_send(activemq.port, ACTIVEMQ_USER, queue, [marker.encode()])
    left = stomp_receive(activemq.port, ACTIVEMQ_USER, queue, lambda b: b == marker.encode())
    assert left == [marker.encode()], left[:5]


def _one_at_a_time(proxy: TcpFaultProxy, queue: str) -> RunningMapping:
    """An ActiveMQ mapping through `proxy`, one message a batch, no batching window."""
    return RunningMapping(
        activemq_mapping(
            f"stomp://{proxy.address}", queue, batch_size=1, maximum_batching_window_in_seconds=0
        )
    )


def _send_when_ready(running: RunningMapping, activemq: Broker, queue: str, body: str) -> None:
    wait_until(lambda: running.mapping.ready)
    stomp_send(activemq.port, ACTIVEMQ_USER, queue, [body.encode()], {"persistent": "true"})


@pytest.mark.parametrize("cut", ["eof", "reset"])
def test_activemq_connection_drop_mid_redelivery_keeps_the_count_at_six(
    activemq: Broker, activemq_proxy: TcpFaultProxy, cut: str
) -> None:
    """The broker closes the connection (EOF, as ActiveMQ does on a missed heartbeat) or it
    is reset while esm is redelivering a failing message: stompman reconnects and the broker
    redelivers the message. It is still invoked 1 + 6 times in all, then dead-lettered, as
    AWS's maximumRedeliveries 6 allows: the count follows the message across the reconnect
    (old code: the dropped connection's copy went on being retried and the broker's copy
    started again from zero: 14 deliveries)."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    running = _one_at_a_time(activemq_proxy, queue)
    body = f"please fail {queue}"
    try:
        _send_when_ready(running, activemq, queue, body)
        wait_until(lambda: len(deliveries(running.arn)) >= 3)
        connections = activemq_proxy.accepted
        activemq_proxy.cut_all() if cut == "eof" else activemq_proxy.reset_all()
        wait_until(lambda: activemq_proxy.accepted > connections)  # stompman reconnected
        dead = stomp_receive(
            activemq.port, ACTIVEMQ_USER, "ActiveMQ.DLQ", lambda b: b == body.encode(), 60
        )
        got = deliveries(running.arn)  # the DLQ NACK came after the last invocation
        wait_until(lambda: running.metric("esm_dead_lettered_events_total") >= 1)
    finally:
        running.stop()
    assert body.encode() in dead
    assert got == [(body, False)] + [(body, True)] * 6, (len(got), got)
    assert running.metric("esm_dead_lettered_events_total") == 1  # the NACK actually sent


def test_activemq_dead_letter_nack_lost_with_its_connection_is_not_retried_again(
    activemq: Broker, activemq_proxy: TcpFaultProxy
) -> None:
    """The NACK that sends a message to the DLQ after its seventh failure is lost with its
    connection: the broker redelivers the message, and esm dead-letters it again without
    invoking it (it had its 1 + 6 tries)."""
    queue = f"q-{uuid.uuid4().hex[:8]}"
    activemq_proxy.reset_when(lambda chunk: bool(STOMP_NACK.search(chunk)), times=1)
    running = _one_at_a_time(activemq_proxy, queue)
    body = f"please fail {queue}"
    try:
        _send_when_ready(running, activemq, queue, body)
        dead = stomp_receive(
            activemq.port, ACTIVEMQ_USER, "ActiveMQ.DLQ", lambda b: b == body.encode(), 60
        )
        got = deliveries(running.arn)
    finally:
        running.stop()
    assert activemq_proxy.armed() == 0 and activemq_proxy.accepted >= 2  # lost, reconnected
    assert body.encode() in dead
    assert got == [(body, False)] + [(body, True)] * 6, (len(got), got)


@pytest.mark.parametrize("fault", ["refuse", "blackhole"])
@pytest.mark.parametrize("engine", ["rabbitmq", "activemq"])
def test_an_unreachable_broker_turns_the_mapping_not_ready_until_it_returns(
    engine: str, fault: str, request: pytest.FixtureRequest
) -> None:
    broker: Broker = request.getfixturevalue(engine)
    proxy: TcpFaultProxy = request.getfixturevalue(
        "rabbit_proxy" if engine == "rabbitmq" else "activemq_proxy"
    )
    queue = f"q-{uuid.uuid4().hex[:8]}"
    if engine == "rabbitmq":
        declare(broker.url, queue)
        table = rabbit_mapping(f"amqp://{proxy.address}", queue)
    else:
        table = activemq_mapping(f"stomp://{proxy.address}", queue)
    running = RunningMapping(table)
    try:
        wait_until(lambda: running.mapping.ready, timeout=30)
        proxy.set_mode(fault)
        wait_until(lambda: not running.mapping.ready, timeout=40)
        reason = running.mapping.not_ready_reason
        assert reason is not None and proxy.address in reason, reason
        proxy.set_mode("pass")
        wait_until(lambda: running.mapping.ready, timeout=40)
        assert running.mapping.not_ready_reason is None
        if engine == "rabbitmq":
            publish(broker.url, queue, ["back"])
        else:
            stomp_send(broker.port, ACTIVEMQ_USER, queue, [b"back"])
        wait_until(lambda: [b for b, _ in deliveries(running.arn)] == ["back"], timeout=30)
    finally:
        running.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


def test_esm_run_and_esm_status_name_an_unreachable_broker(
    rabbitmq: Broker, rabbit_proxy: TcpFaultProxy, tmp_path: Path
) -> None:
    """Under `esm run`, a RabbitMQ broker that refuses connections turns /readyz 503 naming
    the mapping and the error; `esm status` shows the queue unreachable; both recover."""
    import json
    import signal
    import subprocess

    from brokers import free_port

    queue = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq.url, queue)
    port, handled = free_port(), tmp_path / "handled.jsonl"
    config = tmp_path / "esm.toml"
    url = f"amqp://{rabbit_proxy.address}"
    config.write_text(
        f"""
[daemon]
http_address = "127.0.0.1:{port}"

[functions.rec]
handler = "recorder.write_broker_messages_to_file"
code_path = "{Path(__file__).parents[1] / "handlers"}"
environment = {{ RECORD_PATH = "{handled}" }}

[[mappings]]
name = "jobs"
function = "rec"
queues = ["{queue}"]
self_managed_event_source.endpoints.RABBITMQ_BROKER_URLS = ["{url}"]
"""
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "esm.log").open("w"),
    )
    try:
        wait_until(lambda: _get(port, "/readyz")[0] == 200, timeout=60)
        rabbit_proxy.set_mode("refuse")
        wait_until(lambda: _get(port, "/readyz")[0] == 503, timeout=30)
        answer = wait_until(
            lambda: (a := json.loads(_get(port, "/readyz")[1])).get("reasons") and a, timeout=10
        )
        assert answer["not_ready"] == ["jobs"], answer
        assert url in answer["reasons"]["jobs"], answer
        shown = subprocess.run(
            [sys.executable, "-m", "esm", "status", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stdout + shown.stderr
        row = next(line for line in shown.stdout.splitlines() if line.startswith("jobs"))
        assert "unreachable" in row and rabbit_proxy.address in row, row
        rabbit_proxy.set_mode("pass")
        wait_until(lambda: _get(port, "/readyz")[0] == 200, timeout=60)
        publish(rabbitmq.url, queue, ["after-outage"])
        wait_until(lambda: handled.exists() and "after-outage" in handled.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
