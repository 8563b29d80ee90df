"""The two ways esm reads fetched records (esm/sources/kafka/runtime.py): the batches' own
records (the raw path, default) and aiokafka's public getmany `ConsumerRecord`s (the fallback
when aiokafka lacks the private parts). Both must give the function the same event, byte for
byte, over every record shape, with aiokafka's own rules for compressed batches."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import anyio
import kafka_handlers
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aws_lambda_powertools.utilities.parser.models import KafkaSelfManagedEventModel
from kafka_fixtures import KafkaTopic
from test_kafka_runtime import FAST_GROUP, committed, function, mapping, poll_until

from esm.observability import Metrics
from esm.sources.kafka.runtime import (
    KafkaRuntime,
    _RawRecords,
    raw_records_supported,
    serve_raw_records,
)

pytest_plugins = ["kafka_fixtures"]

pytestmark = pytest.mark.anyio

SHAPES: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = [
    (b"k", b'{"n": 1}', [("h", b"hv")]),
    (None, b"no key", []),
    (b"", b"empty key", []),
    (bytes(range(256)), b"binary key", [("bin", bytes(range(256)))]),
    (b"k", None, []),  # a tombstone
    (b"k", b"", [("empty", b"")]),
    (b"k", 'unicode \u00e9\u4e2d "quoted" \\'.encode(), [('n"a\\me \u00e9', b'"\\')]),
    (b"k", b"repeated headers", [("h", b"1"), ("h", b"2")]),
]


async def _produce(topic: KafkaTopic, compression: str | None, offset_base: int) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=topic.bootstrap, linger_ms=20, compression_type=compression
    )
    await producer.start()
    try:
        pending = [
            await producer.send(
                topic.name,
                value,
                key=key,
                partition=p,
                headers=headers,
                timestamp_ms=1_700_000_000_000 + offset_base + i,
            )
            for p in range(topic.partitions)
            for i, (key, value, headers) in enumerate(SHAPES)
        ]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def _delivered(topic: KafkaTopic, group: str, raw: bool) -> list[dict[str, Any]]:
    """The records of every event a runtime on `raw`'s path delivered, ordered by partition."""
    kafka_handlers.EVENTS.pop(topic.name, None)
    metrics = Metrics()
    invoked = function("kafka_handlers.record", metrics)
    runtime = KafkaRuntime(
        mapping(topic, group), invoked, metrics, client_options=FAST_GROUP, raw_records=raw
    )
    total = 2 * len(SHAPES) * topic.partitions
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(runtime.run)
            await poll_until(lambda: len(kafka_handlers.values_for(topic.name)) >= total)
            buffered = runtime.consumer._fetcher._records
            assert isinstance(buffered, _RawRecords) is raw  # the path asked for was taken
            runtime.stop()
    finally:
        await invoked.invoker.aclose()
    events = kafka_handlers.events_for(topic.name)
    for event in events:
        KafkaSelfManagedEventModel.model_validate(copy.deepcopy(event))  # it decodes in place
    records = [r for event in events for rs in event["records"].values() for r in rs]
    assert len(records) == total
    assert await committed(topic, group) == [2 * len(SHAPES)] * topic.partitions
    return sorted(records, key=lambda r: (r["partition"], r["offset"]))


async def test_raw_and_public_paths_give_the_same_event_byte_for_byte(
    kafka_topic: KafkaTopic,
) -> None:
    assert raw_records_supported()  # the pinned aiokafka has what the raw path reads
    await _produce(kafka_topic, None, 0)
    await _produce(kafka_topic, "gzip", 100)  # compressed batches, unpacked by aiokafka
    raw = await _delivered(kafka_topic, "g-raw", raw=True)
    public = await _delivered(kafka_topic, "g-public", raw=False)
    assert orjson.dumps(raw) == orjson.dumps(public)
    first = raw[: len(SHAPES)]
    assert [r["offset"] for r in raw if r["partition"] == 0] == list(range(2 * len(SHAPES)))
    assert "key" not in first[1]  # a record without a key has no key field
    assert first[4]["value"] == ""  # a tombstone
    assert first[7]["headers"] == [{"h": [49]}, {"h": [50]}]


def test_a_consumer_without_aiokafkas_private_parts_falls_back_to_the_public_path() -> None:
    class Started:  # what a newer aiokafka might look like: no `_fetcher._records`
        _fetcher = object()

    assert serve_raw_records(Started()) is False


def _shaped(records: list[Any]) -> tuple[list[dict[str, Any]], list[int]]:
    from esm.sources.kafka.event import PartitionShaper

    docs: list[dict[str, Any]] = []
    sizes: list[int] = []
    PartitionShaper("old", 0).shape_into(records, docs.append, sizes.append)
    return docs, sizes


def test_v0_messages_without_timestamps_shape_alike_on_both_paths() -> None:
    """A v0 message set (Kafka before 0.10: no timestamp, no headers), unpacked by aiokafka's
    own PartitionRecords, raw and public: the same JSON, timestamp -1 (Kafka's NO_TIMESTAMP),
    and exact sizes."""
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.legacy_records import LegacyRecordBatchBuilder
    from aiokafka.record.memory_records import MemoryRecords
    from aiokafka.structs import TopicPartition

    from esm.sources.kafka.event import record_json_size
    from esm.sources.kafka.runtime import _raw_record

    builder = LegacyRecordBatchBuilder(magic=0, compression_type=0, batch_size=1 << 20)
    for offset, key in enumerate([b"k", None]):
        builder.append(offset, timestamp=None, key=key, value=b"v%d" % offset)
    data = bytes(builder.build())

    def unpacked(raw: bool) -> list[Any]:
        records = PartitionRecords(
            TopicPartition("old", 0), MemoryRecords(data), [], 0, None, None, True, 0
        )
        if raw:
            records._consumer_record = _raw_record
        return list(records)

    raw_docs, raw_sizes = _shaped(unpacked(raw=True))
    public_docs, public_sizes = _shaped(unpacked(raw=False))
    assert raw_docs == public_docs and raw_sizes == public_sizes
    assert [d["timestamp"] for d in raw_docs] == [-1, -1]
    assert raw_sizes == [record_json_size(d) for d in raw_docs]
    assert [d["offset"] for d in raw_docs] == [0, 1] and "key" not in raw_docs[1]
