"""The fetch pipeline (esm/sources/kafka/fetch_pipeline.py): when a fetch may go while fetched
records wait for their lane, and that a partition whose records wait on a blocked handler
holds no other partition back (against the real broker)."""

from __future__ import annotations

import threading
import uuid

import kafka_handlers
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from hypothesis import given
from hypothesis import strategies as st
from kafka_fixtures import KafkaTopic, create_topic
from test_kafka_runtime import committed, mapping, poll_until, produce, running

from esm.sources.kafka.fetch_pipeline import hold_for, pipeline_fetches, pipeline_supported

pytest_plugins = ["kafka_fixtures"]

HOLD = 0.1


def test_a_partition_behind_its_high_watermark_is_fetched_at_once() -> None:
    assert hold_for([(5, 5), (3, 9)], [0.0, 0.01], HOLD) is None


def test_a_partition_never_fetched_is_fetched_at_once() -> None:
    assert hold_for([(0, None)], [0.0], HOLD) is None


def test_a_fetch_the_broker_would_park_waits_for_young_buffered_records() -> None:
    assert hold_for([(5, 5), (9, 9)], [0.03, 0.08], HOLD) == pytest.approx(0.02)


def test_a_fetch_the_broker_would_park_goes_when_nothing_young_is_buffered() -> None:
    assert hold_for([(5, 5)], [], HOLD) is None
    assert hold_for([(5, 5)], [0.1, 2.5], HOLD) is None


@given(
    st.lists(st.tuples(st.integers(0, 50), st.none() | st.integers(0, 50)), max_size=6),
    st.lists(st.floats(0, 1), max_size=6),
)
def test_a_hold_is_never_longer_than_aiokafkas_own(
    positions: list[tuple[int, int | None]], ages: list[float]
) -> None:
    wait = hold_for(positions, ages, HOLD)
    parked = all(h is not None and p >= h for p, h in positions)
    young = [HOLD - age for age in ages if age < HOLD]
    if parked and young:
        assert wait == min(young)
    else:
        assert wait is None


@pytest.mark.anyio
async def test_the_pinned_aiokafka_has_what_the_pipeline_needs(kafka_topic: KafkaTopic) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka_topic.bootstrap, group_id=f"g-{kafka_topic.name}"
    )
    consumer.assign([TopicPartition(kafka_topic.name, 0)])  # no group: stop() is cancelled
    await consumer.start()
    try:
        assert pipeline_supported(consumer._fetcher)
        assert pipeline_fetches(consumer)
        assert consumer._fetcher._prefetch_backoff == 0
    finally:
        await consumer.stop()
    assert not pipeline_supported(object())


@pytest.mark.anyio
async def test_records_waiting_on_a_blocked_handler_hold_no_other_partition_back(
    kafka_bootstrap: str,
) -> None:
    """Partition 0's lane is full behind a handler that does not return, so its next fetched
    records stay in aiokafka's buffer, and partition 1 is read to its end (the broker would
    park its fetch). A record produced to partition 1 then must still be fetched (the hold
    ends after aiokafka's 100 ms, not when partition 0's records are taken) and delivered;
    then partition 0 drains in order and nothing is skipped."""
    topic = KafkaTopic(kafka_bootstrap, f"t-pipe-{uuid.uuid4().hex[:10]}", 2)
    await create_topic(kafka_bootstrap, topic.name, 2)
    p0, p1 = TopicPartition(topic.name, 0), TopicPartition(topic.name, 1)
    first = [(0, f"p0-{i}".encode()) for i in range(2_000)]
    second = [(0, f"p0-{i}".encode()) for i in range(2_000, 4_000)]
    await produce(topic, [*first, (1, b"p1-0")])
    entered, release = threading.Event(), threading.Event()
    kafka_handlers.HOLDS["p0-0"] = (entered, release)
    config = mapping(topic, f"g-{topic.name}", batch_size=100)

    def delivered(partition: int) -> list[bytes]:
        return [v for p, _, v in kafka_handlers.values_for(topic.name) if p == partition]

    try:
        async with running(config, "kafka_handlers.held", timeout=120) as runtime:
            await poll_until(lambda: entered.is_set() and delivered(1) == [b"p1-0"])
            await produce(topic, second)
            fetcher = runtime.consumer._fetcher
            await poll_until(lambda: p0 in fetcher._records, timeout=30)  # waiting for room
            assert runtime.lanes[p0].full
            assert runtime.consumer.highwater(p1) == 1  # read to its end: a fetch to park
            await produce(topic, [(1, b"p1-1")])
            await poll_until(lambda: delivered(1) == [b"p1-0", b"p1-1"], timeout=30)
            assert not release.is_set()  # partition 0's handler is still blocked
            release.set()
            await poll_until(lambda: len(delivered(0)) >= 4_000)
            await poll_until(lambda: runtime.committed_offsets().get(f"{topic.name}-0") == 4_000)
    finally:
        release.set()
    assert delivered(0) == [v for _, v in [*first, *second]]
    assert await committed(topic, f"g-{topic.name}") == [4_000, 2]
