"""RabbitMQ mappings against a real RabbitMQ node: the event Lambda sends, order, redelivery
and dead-lettering, filters, oversize drops, credentials, and competing workers."""

from __future__ import annotations

import base64
import datetime as dt
import json
import signal
import uuid
from pathlib import Path

import pytest
from aws_lambda_powertools.utilities.data_classes.rabbit_mq_event import RabbitMQEvent
from brokers import Broker
from helpers import (
    RunningMapping,
    declare,
    drain,
    handled_lines,
    publish,
    queue_counts,
    rabbit_mapping,
    start_worker,
    wait_until,
)
from mq_handlers import bodies_for, events_for, messages_of

pytest_plugins = ["mq_fixtures"]  # the session brokers (see mq_fixtures.py)


@pytest.fixture
def queue(rabbitmq: Broker) -> str:
    name = f"q-{uuid.uuid4().hex[:8]}"
    declare(rabbitmq.url, name)
    return name


def test_event_has_lambdas_rabbitmq_shape(rabbitmq: Broker, queue: str) -> None:
    running = RunningMapping(rabbit_mapping(rabbitmq.url, queue))
    try:
        publish(
            rabbitmq.url,
            queue,
            ['{"order": 1}'],
            content_type="application/json",
            headers={"source": "shop", "attempt": 3},
            priority=5,
            correlation_id="corr-1",
            reply_to="replies",
            expiration=60,
            message_id="m-1",
            timestamp=dt.datetime(2026, 12, 1, 13, 5, 9, tzinfo=dt.UTC),
            type="order.created",
            app_id="shop",
            delivery_mode=2,
        )
        (event,) = wait_until(lambda: events_for(running.arn))
    finally:
        running.stop()
    parsed = RabbitMQEvent(event)
    assert parsed.event_source == "aws:rmq"
    assert parsed.event_source_arn == running.arn
    assert list(parsed.rmq_messages_by_queue) == [f"{queue}::/"]
    (message,) = parsed.rmq_messages_by_queue[f"{queue}::/"]
    assert message.json_data == {"order": 1}
    assert message.redelivered is False
    props = message.basic_properties
    assert props.content_type == "application/json"
    assert props.content_encoding is None
    assert props.headers == {"source": {"bytes": list(b"shop")}, "attempt": 3}
    assert (props.delivery_mode, props.priority) == (2, 5)
    assert (props.correlation_id, props.reply_to, props.message_id) == ("corr-1", "replies", "m-1")
    assert props.expiration == "60000"
    assert props.timestamp == "Dec 1, 2026, 1:05:09 PM"
    assert (props.get_type, props.app_id) == ("order.created", "shop")
    assert props.user_id is None
    assert props.cluster_id == ""  # aio-pika sends an empty cluster-id; passed on as is
    assert props.body_size == len(b'{"order": 1}')
    assert set(event["rmqMessagesByQueue"][f"{queue}::/"][0]) == {
        "basicProperties",
        "redelivered",
        "data",
    }


def test_messages_arrive_in_queue_order_in_batches(rabbitmq: Broker, queue: str) -> None:
    sent = [f"msg-{i:04d}" for i in range(350)]
    publish(rabbitmq.url, queue, sent)
    running = RunningMapping(
        rabbit_mapping(rabbitmq.url, queue, batch_size=100, maximum_batching_window_in_seconds=1)
    )
    try:
        wait_until(lambda: len(bodies_for(running.arn)) >= len(sent))
        wait_until(lambda: queue_counts(rabbitmq.url, queue)[0] == 0)
        acked = wait_until(lambda: running.metric("esm_acknowledged_events_total") == len(sent))
    finally:
        running.stop()
    assert acked
    assert bodies_for(running.arn) == sent
    assert [len(messages_of(e)) for e in events_for(running.arn)] == [100, 100, 100, 50]


def test_failed_batch_is_redelivered_then_dead_lettered(rabbitmq: Broker) -> None:
    """A quorum queue's delivery limit and dead-letter exchange end the poison message in
    the DLQ; until then every redelivery carries redelivered = true."""
    name = f"q-{uuid.uuid4().hex[:8]}"
    dlq = f"{name}-dlq"
    declare(rabbitmq.url, dlq)
    declare(
        rabbitmq.url,
        name,
        {
            "x-queue-type": "quorum",
            "x-delivery-limit": 2,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": dlq,
        },
    )
    running = RunningMapping(
        rabbit_mapping(rabbitmq.url, name, batch_size=1, maximum_batching_window_in_seconds=0)
    )
    try:
        publish(rabbitmq.url, name, ["please fail"])
        wait_until(lambda: queue_counts(rabbitmq.url, dlq)[0] == 1)
        dead = drain(rabbitmq.url, dlq)
    finally:
        running.stop()
    flags = [m["redelivered"] for e in events_for(running.arn) for m in messages_of(e)]
    assert flags == [False, True, True]  # first delivery plus x-delivery-limit = 2
    assert [m.body for m in dead] == [b"please fail"]
    assert running.metric("esm_acknowledged_events_total") == 0
    assert running.metric("esm_requeued_events_total") == 3


def test_filter_on_json_data_acknowledges_filtered_out(rabbitmq: Broker, queue: str) -> None:
    pattern = json.dumps({"data": {"kind": ["keep"]}})
    running = RunningMapping(
        rabbit_mapping(
            rabbitmq.url,
            queue,
            filter_criteria={"filters": [{"pattern": pattern}]},
            maximum_batching_window_in_seconds=0,
        )
    )
    try:
        publish(
            rabbitmq.url,
            queue,
            [
                '{"kind": "keep", "n": 1}',
                '{"kind": "drop", "n": 2}',
                "not json",
                '{"kind": "keep", "n": 3}',
            ],
        )
        wait_until(lambda: running.metric("esm_acknowledged_events_total") == 4)
        assert queue_counts(rabbitmq.url, queue)[0] == 0
    finally:
        running.stop()
    assert [json.loads(b)["n"] for b in bodies_for(running.arn)] == [1, 3]
    assert running.metric("esm_filtered_out_events_total") == 2


def test_message_over_6_mb_is_dropped_and_acknowledged(rabbitmq: Broker, queue: str) -> None:
    running = RunningMapping(rabbit_mapping(rabbitmq.url, queue))
    try:
        publish(rabbitmq.url, queue, [b"x" * (5 * 1024 * 1024), "small"])
        wait_until(lambda: bodies_for(running.arn) == ["small"])
        wait_until(lambda: running.metric("esm_acknowledged_events_total") == 2)
    finally:
        running.stop()
    assert running.metric("esm_oversize_dropped_events_total") == 1
    assert queue_counts(rabbitmq.url, queue)[0] == 0


def test_basic_auth_from_secrets_manager(rabbitmq: Broker, queue: str, endpoint: str) -> None:
    import boto3

    secrets = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    good = secrets.create_secret(
        Name=f"mq-{queue}", SecretString=json.dumps({"username": "guest", "password": "guest"})
    )["ARN"]
    bad = secrets.create_secret(
        Name=f"mq-bad-{queue}", SecretString=json.dumps({"username": "guest", "password": "no"})
    )["ARN"]
    auth = [{"type": "BASIC_AUTH", "uri": good}, {"type": "VIRTUAL_HOST", "uri": "/"}]
    running = RunningMapping(
        rabbit_mapping(rabbitmq.url, queue, source_access_configurations=auth), endpoint
    )
    refused = RunningMapping(
        rabbit_mapping(
            rabbitmq.url, queue, source_access_configurations=[{"type": "BASIC_AUTH", "uri": bad}]
        ),
        endpoint,
    )
    try:
        publish(rabbitmq.url, queue, ["hello"])
        wait_until(lambda: bodies_for(running.arn) == ["hello"])
        assert running.mapping.ready
        assert not refused.mapping.ready
        assert bodies_for(refused.arn) == []
    finally:
        running.stop()
        refused.stop()


def test_two_workers_share_a_queue_without_loss(rabbitmq: Broker, queue: str) -> None:
    table = rabbit_mapping(rabbitmq.url, queue, batch_size=10)
    first = RunningMapping(table)
    second = RunningMapping(dict(table, name=table["name"] + "-b"))
    sent = [f"w-{i}" for i in range(300)]
    try:
        wait_until(lambda: queue_counts(rabbitmq.url, queue)[1] == 2)
        publish(rabbitmq.url, queue, sent)
        wait_until(
            lambda: (
                first.metric("esm_acknowledged_events_total")
                + second.metric("esm_acknowledged_events_total")
                == len(sent)
            )
        )
    finally:
        first.stop()
        second.stop()
    got = bodies_for(first.arn) + bodies_for(second.arn)
    assert sorted(got) == sorted(sent)
    assert first.metric("esm_acknowledged_events_total") > 0
    assert second.metric("esm_acknowledged_events_total") > 0


def test_data_is_base64_of_the_raw_body(rabbitmq: Broker, queue: str) -> None:
    running = RunningMapping(rabbit_mapping(rabbitmq.url, queue))
    try:
        publish(rabbitmq.url, queue, [bytes(range(256))])
        (event,) = wait_until(lambda: events_for(running.arn))
    finally:
        running.stop()
    (message,) = messages_of(event)
    assert base64.b64decode(message["data"]) == bytes(range(256))


def test_sigkill_mid_batch_then_restart_loses_nothing(
    rabbitmq: Broker, queue: str, tmp_path: Path
) -> None:
    """Unacknowledged messages return to the queue when the worker dies; the restarted
    worker handles them (at-least-once: some may be handled twice, none lost)."""
    sent = [f"slow-{i}" for i in range(40)]
    publish(rabbitmq.url, queue, sent)
    handled = tmp_path / "handled.txt"
    table = rabbit_mapping(rabbitmq.url, queue, batch_size=10)
    worker = start_worker(table, handled)
    try:
        wait_until(lambda: handled_lines(handled) and len(handled_lines(handled)) >= 10)
        worker.send_signal(signal.SIGKILL)  # the second batch is in its handler's sleep
        worker.wait(timeout=10)
        assert len(handled_lines(handled)) < len(sent)
        worker = start_worker(table, handled)
        wait_until(lambda: set(handled_lines(handled)) == set(sent), timeout=60)
        wait_until(lambda: queue_counts(rabbitmq.url, queue) == (0, 1))
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert worker.returncode == 0
    assert queue_counts(rabbitmq.url, queue)[0] == 0


def test_refused_login_is_reported_without_the_password(
    rabbitmq: Broker, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import structlog

    monkeypatch.setenv("RMQ_BAD_USERNAME", "guest")
    monkeypatch.setenv("RMQ_BAD_PASSWORD", "s3cret-Value-42")
    auth = [{"type": "BASIC_AUTH", "uri": "env:RMQ_BAD"}]
    with structlog.testing.capture_logs() as logs:
        running = RunningMapping(
            rabbit_mapping(rabbitmq.url, queue, source_access_configurations=auth)
        )
        try:
            error = wait_until(lambda: running.mapping.last_error)
        finally:
            running.stop()
    assert "refused the BASIC_AUTH login" in error
    assert any(e["event"] == "mq.session_failed" for e in logs)
    assert "s3cret-Value-42" not in repr(logs)
    assert not running.mapping.ready


def test_status_shows_consumers_and_unacknowledged(rabbitmq: Broker, queue: str) -> None:
    running = RunningMapping(rabbit_mapping(rabbitmq.url, queue))
    try:
        status = wait_until(lambda: (s := running.mapping.status()).consumers == 1 and s)
        assert (status.engine, status.queue, status.ready) == ("rabbitmq", queue, True)
        assert (status.messages_ready, status.unacknowledged, status.last_error) == (0, 0, None)
        publish(rabbitmq.url, queue, ["slow one"])  # its handler sleeps a second
        wait_until(lambda: running.mapping.status().unacknowledged == 1)
        wait_until(lambda: running.metric("esm_acknowledged_events_total") == 1)
        assert running.mapping.status().unacknowledged == 0
    finally:
        running.stop()
