"""The broker fixture is a real Kafka broker: produce, group fetch and offset commits work."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka_fixtures import KafkaTopic

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

pytestmark = pytest.mark.anyio


async def test_broker_keeps_committed_group_offsets(kafka_topic: KafkaTopic) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka_topic.bootstrap)
    await producer.start()
    try:
        for i in range(30):
            await producer.send(kafka_topic.name, f"v{i}".encode(), partition=i % 3)
        await producer.flush()
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        kafka_topic.name,
        bootstrap_servers=kafka_topic.bootstrap,
        group_id="g-broker",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        seen = 0
        while seen < 30:
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batches.values())
        await consumer.commit()
        partitions = [TopicPartition(kafka_topic.name, p) for p in range(3)]
        committed = [await consumer.committed(tp) for tp in partitions]
    finally:
        await consumer.stop()
    assert committed == [10, 10, 10]
