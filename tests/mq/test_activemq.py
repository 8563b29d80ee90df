"""ActiveMQ mappings against a real ActiveMQ broker over STOMP: the event Lambda sends,
five batches at once, redelivery by AWS's policy and then the DLQ, and a refused login."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.data_classes.active_mq_event import ActiveMQEvent
from brokers import ACTIVEMQ_USER, Broker
from helpers import (
    RunningMapping,
    activemq_mapping,
    handled_lines,
    start_worker,
    stomp_receive,
    stomp_send,
    stomp_send_text,
    wait_until,
)
from mq_handlers import MAX_RUNNING, bodies_for, events_for, messages_of

pytest_plugins = ["mq_fixtures"]  # the session brokers (see mq_fixtures.py)


@pytest.fixture(autouse=True)
def login() -> Iterator[None]:
    """The mappings read BASIC_AUTH from env:ESM_TEST_AMQ (the broker's one user)."""
    os.environ["ESM_TEST_AMQ_USERNAME"], os.environ["ESM_TEST_AMQ_PASSWORD"] = ACTIVEMQ_USER
    yield
    del os.environ["ESM_TEST_AMQ_USERNAME"], os.environ["ESM_TEST_AMQ_PASSWORD"]


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:8]}"


def test_event_has_lambdas_activemq_shape(activemq: Broker, queue: str) -> None:
    running = RunningMapping(activemq_mapping(activemq.url, queue))
    try:
        wait_until(lambda: running.mapping.ready)
        stomp_send_text(
            activemq.port,
            ACTIVEMQ_USER,
            queue,
            '{"order": 7}',
            {
                "persistent": "true",
                "correlation-id": "corr-7",
                "reply-to": "/queue/replies",
                "type": "order.created",
                "priority": "7",
                "region": "eu",
            },
        )
        stomp_send(activemq.port, ACTIVEMQ_USER, queue, [b"\x00\x01binary"])
        events = wait_until(
            lambda: (
                (found := events_for(running.arn))
                and sum(len(messages_of(e)) for e in found) == 2
                and found
            )
        )
    finally:
        running.stop()
    text, binary = [m for e in events for m in ActiveMQEvent(e).messages]
    assert ActiveMQEvent(events[0]).event_source == "aws:mq"
    assert text.message_type == "jms/text-message"
    assert text.json_data == {"order": 7}
    assert text.destination_physicalname == queue
    assert (text.delivery_mode, text.priority) == (2, 7)
    assert (text.correlation_id, text.reply_to, text.get_type) == (
        "corr-7",
        "replies",
        "order.created",
    )
    assert text.redelivered is False
    assert text.properties == {"region": "eu"}
    assert text.message_id.startswith("ID:")
    assert 0 < text.broker_in_time <= text.broker_out_time
    assert binary.message_type == "jms/bytes-message"
    assert binary.delivery_mode == 1
    assert binary.decoded_data.encode() == b"\x00\x01binary"


def test_five_batches_at_once_as_lambda_allows(activemq: Broker, queue: str) -> None:
    table = activemq_mapping(
        activemq.url, queue, batch_size=1, maximum_batching_window_in_seconds=0
    )
    running = RunningMapping(table, handler="record_concurrency")
    sent = [f"c-{i}".encode() for i in range(15)]
    try:
        wait_until(lambda: running.mapping.ready)
        stomp_send(activemq.port, ACTIVEMQ_USER, queue, sent)
        wait_until(lambda: len(bodies_for(running.arn)) == len(sent))
        wait_until(lambda: running.metric("esm_acknowledged_events_total") == len(sent))
    finally:
        running.stop()
    assert MAX_RUNNING[running.arn] == 5
    assert sorted(bodies_for(running.arn)) == sorted(b.decode() for b in sent)


def test_failing_message_redelivered_six_times_then_dlq(activemq: Broker, queue: str) -> None:
    """AWS's redelivery policy: ActiveMQ's defaults with maximumRedeliveries 6, then the
    broker's DLQ (ActiveMQ.DLQ; persistent messages only, ActiveMQ's default)."""
    running = RunningMapping(
        activemq_mapping(activemq.url, queue, batch_size=1, maximum_batching_window_in_seconds=0)
    )
    body = f"please fail {queue}"
    try:
        wait_until(lambda: running.mapping.ready)
        stomp_send_text(activemq.port, ACTIVEMQ_USER, queue, body, {"persistent": "true"})
        wait_until(lambda: running.metric("esm_dead_lettered_events_total") == 1, timeout=30)
        dead = stomp_receive(
            activemq.port, ACTIVEMQ_USER, "ActiveMQ.DLQ", lambda b: b == body.encode()
        )
    finally:
        running.stop()
    flags = [m["redelivered"] for e in events_for(running.arn) for m in messages_of(e)]
    assert flags == [False] + [True] * 6
    assert body.encode() in dead
    assert running.metric("esm_acknowledged_events_total") == 0


def test_refused_login_keeps_the_mapping_not_ready(activemq: Broker, queue: str) -> None:
    os.environ["ESM_TEST_AMQ_PASSWORD"] = "wrong"
    running = RunningMapping(activemq_mapping(activemq.url, queue))
    try:
        error = wait_until(lambda: running.mapping.last_error)
        assert "login was refused" in error
        stomp_send(activemq.port, ACTIVEMQ_USER, queue, [b"kept"])
        assert not running.mapping.ready
        assert bodies_for(running.arn) == []
    finally:
        running.stop()


def test_sigkill_mid_batch_then_restart_loses_nothing(
    activemq: Broker, queue: str, tmp_path: Path
) -> None:
    """The broker redelivers what a killed worker never acknowledged."""
    sent = [f"slow-{i}".encode() for i in range(30)]
    stomp_send(activemq.port, ACTIVEMQ_USER, queue, sent, {"persistent": "true"})
    handled = tmp_path / "handled.txt"
    table = activemq_mapping(
        activemq.url, queue, batch_size=10, scaling_config={"maximum_concurrency": 1}
    )
    worker = start_worker(table, handled)
    try:
        wait_until(lambda: len(handled_lines(handled)) >= 10)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        assert len(handled_lines(handled)) < len(sent)
        worker = start_worker(table, handled)
        wait_until(lambda: set(handled_lines(handled)) == {b.decode() for b in sent}, timeout=60)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert worker.returncode == 0
