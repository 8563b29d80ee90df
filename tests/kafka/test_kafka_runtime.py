"""The Kafka runtime against a real broker (Tansu): event shape, order, retries, restarts."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import kafka_handlers
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aws_lambda_powertools.utilities.parser.models import KafkaSelfManagedEventModel
from kafka_fixtures import KafkaTopic

from esm.config import FunctionConfig, _Table
from esm.invokers import Function
from esm.invokers.python import PythonInvoker
from esm.observability import Metrics
from esm.sources.kafka.config import KafkaMappingConfig, parse_kafka_mapping
from esm.sources.kafka.runtime import KafkaRuntime

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

pytestmark = pytest.mark.anyio
HERE = Path(__file__).parent
FAST_GROUP = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 300}
"""Tansu keeps a member that left until its session times out, and Tansu 0.6 enforces no
minimum session: with 3 s a restarted consumer in the same group is assigned in 3.0 s (Tansu's
join delay) instead of 11.1 s with 6 s (measured); ten heartbeats fit in one session."""


def mapping(topic: KafkaTopic, group: str, **raw: Any) -> KafkaMappingConfig:
    problems: list[str] = []
    table = {
        "name": f"m-{topic.name}",
        "function": "f",
        "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [topic.bootstrap]}},
        "topics": [topic.name],
        "starting_position": "TRIM_HORIZON",
        "self_managed_kafka_event_source_config": {"consumer_group_id": group},
        "maximum_batching_window_in_seconds": 0.05,
        **raw,
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    return config


def function(handler: str, metrics: Metrics, timeout: int = 5) -> Function:
    config = FunctionConfig(
        name="f", kind="python", handler=handler, code_path=HERE, timeout=timeout
    )
    return Function(PythonInvoker(config), metrics)


async def produce(
    topic: KafkaTopic, values: list[tuple[int, bytes]], key: bytes | None = b"k"
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=topic.bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending = [
            await producer.send(topic.name, v, key=key, partition=p, headers=[("h", b"hv")])
            for p, v in values
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def committed(topic: KafkaTopic, group: str) -> list[int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=topic.bootstrap, group_id=group)
    await consumer.start()
    try:
        return [
            await consumer.committed(TopicPartition(topic.name, p)) for p in range(topic.partitions)
        ]
    finally:
        await consumer.stop()


@asynccontextmanager
async def running(
    config: KafkaMappingConfig, handler: str, timeout: int = 5
) -> AsyncIterator[KafkaRuntime]:
    metrics = Metrics()
    invoked = function(handler, metrics, timeout)
    runtime = KafkaRuntime(config, invoked, metrics, client_options=FAST_GROUP)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run)
            yield runtime
            runtime.stop()
    finally:  # an in-process function left open keeps its variables in os.environ
        await invoked.invoker.aclose()


async def poll_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


async def test_event_reaches_the_handler_in_lambdas_shape(kafka_topic: KafkaTopic) -> None:
    await produce(kafka_topic, [(1, b'{"n": 1}'), (1, b'{"n": 2}')])
    async with running(mapping(kafka_topic, "g-shape"), "kafka_handlers.record"):
        await poll_until(lambda: len(kafka_handlers.values_for(kafka_topic.name)) == 2)
    (event,) = kafka_handlers.events_for(kafka_topic.name)
    model = KafkaSelfManagedEventModel.model_validate(event)
    assert event["eventSource"] == "SelfManagedKafka"
    assert event["bootstrapServers"] == kafka_topic.bootstrap
    assert list(event["records"]) == [f"{kafka_topic.name}-1"]
    records = model.records[f"{kafka_topic.name}-1"]
    assert [r.offset for r in records] == [0, 1]
    assert records[0].key == b"k" and records[0].value == '{"n": 1}'
    assert records[0].headers == [{"h": b"hv"}]
    assert records[0].timestampType == "CREATE_TIME"
    assert await committed(kafka_topic, "g-shape") == [None, 2, None]


async def test_every_partition_is_delivered_in_offset_order(kafka_topic: KafkaTopic) -> None:
    n = 3000
    await produce(kafka_topic, [(i % 3, f"v{i}".encode()) for i in range(n)])
    config = mapping(kafka_topic, "g-order", batch_size=100)
    async with running(config, "kafka_handlers.record"):
        await poll_commits(kafka_topic, "g-order", [n // 3] * 3)
    seen = kafka_handlers.values_for(kafka_topic.name)
    assert len(seen) == n
    for p in range(3):
        offsets = [o for part, o, _ in seen if part == p]
        assert offsets == list(range(n // 3))
    for event in kafka_handlers.events_for(kafka_topic.name):
        assert len(event["records"]) == 1  # batches are per partition
        assert sum(len(r) for r in event["records"].values()) <= 100
    assert await committed(kafka_topic, "g-order") == [n // 3] * 3


async def test_failed_batch_is_retried_from_its_first_record_blocking_only_its_partition(
    kafka_topic: KafkaTopic,
) -> None:
    poison = f"poison-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[poison] = 2
    await produce(kafka_topic, [(0, b"a0"), (0, poison.encode()), (0, b"a2"), (2, b"c0")])
    config = mapping(kafka_topic, "g-retry", batch_size=10, maximum_batching_window_in_seconds=0.5)
    async with running(config, "kafka_handlers.record"):
        await poll_commits(kafka_topic, "g-retry", [3, None, 1])
    deliveries = kafka_handlers.values_for(kafka_topic.name)
    partition0 = [(o, v) for p, o, v in deliveries if p == 0]
    # three invocations of the same batch (two failures, then success), each from offset 0
    assert partition0 == [(0, b"a0"), (1, poison.encode()), (2, b"a2")] * 3
    assert [(o, v) for p, o, v in deliveries if p == 2] == [(0, b"c0")]
    assert await committed(kafka_topic, "g-retry") == [3, None, 1]


async def test_powertools_partial_failure_retries_from_the_reported_offset(
    kafka_topic: KafkaTopic,
) -> None:
    bad = f"bad-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[bad] = 1
    await produce(kafka_topic, [(1, b"x0"), (1, b"x1"), (1, bad.encode()), (1, b"x3")])
    config = mapping(
        kafka_topic,
        "g-partial",
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        function_response_types=["ReportBatchItemFailures"],
    )
    async with running(config, "kafka_handlers.powertools"):
        await poll_until(lambda: len(kafka_handlers.events_for(kafka_topic.name)) >= 2)
        await poll_commits(kafka_topic, "g-partial", [None, 4, None])
    first, second = kafka_handlers.events_for(kafka_topic.name)[:2]
    key = f"{kafka_topic.name}-1"
    assert [r["offset"] for r in first["records"][key]] == [0, 1, 2, 3]
    assert [r["offset"] for r in second["records"][key]] == [2, 3]


async def test_a_retry_invokes_the_same_records_not_those_fetched_meanwhile(
    kafka_topic: KafkaTopic,
) -> None:
    """Lambda retries the failed batch itself (the shared policy's segments): records fetched
    while it ran wait for a later batch instead of joining the retry."""
    gated = f"gate-{kafka_topic.name}"
    go = threading.Event()
    kafka_handlers.GATES[gated] = go
    await produce(kafka_topic, [(0, gated.encode()), (0, b"a1")])
    config = mapping(kafka_topic, "g-same", batch_size=10, maximum_batching_window_in_seconds=0.5)
    async with running(config, "kafka_handlers.gated", timeout=60) as runtime:
        try:
            await poll_until(lambda: len(kafka_handlers.events_for(kafka_topic.name)) == 1)
            await produce(kafka_topic, [(0, b"a2"), (0, b"a3")])
            polled = "esm_polled_events_total"
            await poll_until(lambda: _gauge(runtime.metrics, polled, mapping=config.name) == 4)
        finally:
            go.set()  # the blocked invocation fails now, with a2 and a3 in the lane's buffer
        await poll_commits(kafka_topic, "g-same", [4, None, None])
    key = f"{kafka_topic.name}-0"
    invoked = [
        [r["offset"] for r in e["records"][key]]
        for e in kafka_handlers.events_for(kafka_topic.name)
    ]
    assert invoked[1] == invoked[0]  # the retry: exactly the failed batch
    assert {2, 3}.isdisjoint(invoked[0] + invoked[1])
    assert sorted(o for batch in invoked[1:] for o in batch) == [0, 1, 2, 3]


async def poll_commits(topic: KafkaTopic, group: str, expected: list[int | None]) -> None:
    with anyio.fail_after(60):
        while await committed(topic, group) != expected:
            await anyio.sleep(0.1)


async def test_a_restart_with_the_same_group_skips_nothing(kafka_topic: KafkaTopic) -> None:
    await produce(kafka_topic, [(i % 3, f"r{i}".encode()) for i in range(30)])
    config = mapping(kafka_topic, "g-restart", batch_size=5)
    async with running(config, "kafka_handlers.record"):
        await poll_commits(kafka_topic, "g-restart", [10, 10, 10])
    first_run = len(kafka_handlers.values_for(kafka_topic.name))
    await produce(kafka_topic, [(i % 3, f"r{i}".encode()) for i in range(30, 60)])
    async with running(config, "kafka_handlers.record"):
        await poll_until(lambda: len(kafka_handlers.values_for(kafka_topic.name)) >= first_run + 30)
    values = [v for _, _, v in kafka_handlers.values_for(kafka_topic.name)]
    assert sorted(set(values)) == sorted(f"r{i}".encode() for i in range(60))
    assert len(values) == 60  # a clean stop committed everything: no record read twice
    assert await committed(kafka_topic, "g-restart") == [20, 20, 20]


async def test_stop_waits_for_the_broker_to_take_the_last_commit(kafka_topic: KafkaTopic) -> None:
    """The batch in flight when the runtime is stopped finishes, and its commit reaches the
    broker before the consumer leaves (guards the stop path against a commit left unsent)."""
    value = f"held-{kafka_topic.name}"
    entered, release = threading.Event(), threading.Event()
    kafka_handlers.HOLDS[value] = (entered, release)
    await produce(kafka_topic, [(0, b"s0"), (0, value.encode())])
    async with running(mapping(kafka_topic, "g-stop"), "kafka_handlers.held") as runtime:
        await poll_until(entered.is_set)
        runtime.stop()  # while the batch is in flight
        release.set()
    assert await committed(kafka_topic, "g-stop") == [2, None, None]


async def test_two_runtimes_in_one_group_split_partitions_and_one_takes_over(
    kafka_topic: KafkaTopic,
) -> None:
    await produce(kafka_topic, [(i % 3, f"s{i}".encode()) for i in range(300)])
    config = mapping(kafka_topic, "g-split", batch_size=20)
    async with running(config, "kafka_handlers.record") as first:
        async with running(config, "kafka_handlers.record") as second:
            await poll_until(
                lambda: (
                    len(first.lanes) + len(second.lanes) == 3
                    and bool(first.lanes)
                    and bool(second.lanes)
                )
            )
            await poll_commits(kafka_topic, "g-split", [100, 100, 100])
            assert not set(first.lanes) & set(second.lanes)
        await poll_until(lambda: len(first.lanes) == 3)  # the survivor takes every partition
        await produce(kafka_topic, [(i % 3, f"s{i}".encode()) for i in range(300, 330)])
        await poll_commits(kafka_topic, "g-split", [110, 110, 110])
    values = [v for _, _, v in kafka_handlers.values_for(kafka_topic.name)]
    assert set(values) == {f"s{i}".encode() for i in range(330)}


def _handled(path: Path) -> list[tuple[int, int, str]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(int(p), int(o), v) for p, o, v in (line.split(" ", 2) for line in lines if line)]


async def _start_child(topic: KafkaTopic, group: str, out: Path) -> anyio.abc.Process:
    import os
    import sys

    env = {**os.environ, "KAFKA_RECORD_FILE": str(out)}
    return await anyio.open_process(
        [sys.executable, str(HERE / "kafka_child.py"), topic.bootstrap, topic.name, group],
        env=env,
    )


async def test_sigkill_mid_batch_then_restart_skips_nothing(
    kafka_topic: KafkaTopic, tmp_path: Path
) -> None:
    """At-least-once across a crash: a SIGKILLed worker committed only what it handled, and a
    restarted one resumes from there, so every record is handled at least once."""
    import signal

    n = 300
    await produce(kafka_topic, [(i % 3, f"k{i}".encode()) for i in range(n)])
    out, group = tmp_path / "handled.txt", "g-sigkill"
    child = await _start_child(kafka_topic, group, out)
    try:
        await poll_until(lambda: len(_handled(out)) >= 75)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
    first_run = _handled(out)
    assert len(first_run) < n  # killed before the end, with batches of 10 in flight
    after_kill = await committed(kafka_topic, group)
    for p, upto in enumerate(after_kill):
        handled = {o for part, o, _ in first_run if part == p}
        assert set(range(upto or 0)) <= handled  # nothing committed that was not handled
    child = await _start_child(kafka_topic, group, out)
    try:
        await poll_commits(kafka_topic, group, [n // 3] * 3)
    finally:
        child.kill()
        await child.wait()
    values = [v for _, _, v in _handled(out)]
    assert set(values) == {f"k{i}" for i in range(n)}  # nothing skipped
    for p in range(3):
        offsets = [o for part, o, _ in _handled(out) if part == p]
        assert set(offsets) == set(range(n // 3))


def _gauge(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


async def test_offset_lag_per_partition_and_assigned_partitions(kafka_topic: KafkaTopic) -> None:
    """A partition whose batch keeps failing lags by its unprocessed records; a drained one
    reports 0; the worker reports the partitions it owns."""
    poison = f"poison-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[poison] = 1_000_000
    await produce(kafka_topic, [(0, b"ok0"), (0, b"ok1"), (1, poison.encode()), (1, b"stuck")])
    config = mapping(kafka_topic, "g-lag", batch_size=10)
    async with running(config, "kafka_handlers.record") as runtime:
        metrics, name = runtime.metrics, config.name
        lag = "esm_kafka_offset_lag"
        await poll_until(lambda: _gauge(metrics, lag, mapping=name, partition="0") == 0)
        await poll_until(lambda: _gauge(metrics, lag, mapping=name, partition="1") == 2)
        assert _gauge(metrics, "esm_kafka_assigned_partitions", mapping=name) == 3
        kafka_handlers.FAILS_LEFT[poison] = 0
        await poll_until(lambda: _gauge(metrics, lag, mapping=name, partition="1") == 0)
    assert _gauge(metrics, "esm_kafka_assigned_partitions", mapping=name) == 0
    assert _gauge(metrics, lag, mapping=name, partition="0") is None  # no stale series
