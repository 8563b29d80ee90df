"""Given-up Kafka records reach an on-failure destination (moto SQS) as AWS's record, with
bisect and record age, against the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio
import kafka_handlers
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka_fixtures import KafkaTopic
from test_kafka_runtime import FAST_GROUP, committed, function, mapping, poll_commits, produce

from esm.aws import AwsClients
from esm.config import DaemonConfig
from esm.observability import Metrics
from esm.sources.kafka.config import KafkaMappingConfig
from esm.sources.kafka.onfailure import build_on_failure
from esm.sources.kafka.runtime import KafkaRuntime

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running_with_destination(
    config: KafkaMappingConfig, endpoint: str
) -> AsyncIterator[KafkaRuntime]:
    metrics = Metrics()
    fn = function("kafka_handlers.record", metrics)
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
        on_failure = build_on_failure(
            config, aws, fn.arn, config.bootstrap_servers, client_options=FAST_GROUP
        )
        runtime = KafkaRuntime(
            config, fn, metrics, client_options=FAST_GROUP, on_failure=on_failure
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(runtime.run)
                yield runtime
                runtime.stop()
        finally:  # an in-process function left open keeps its variables in os.environ
            await fn.invoker.aclose()


def dlq(sqs: Any, unique: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=f"kafka-dlq-{unique}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


async def receive_one(sqs: Any, url: str) -> dict[str, Any]:
    with anyio.fail_after(30):
        while True:
            got = await anyio.to_thread.run_sync(
                lambda: sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
            )
            if got:
                body: dict[str, Any] = orjson.loads(got[0]["Body"])
                return body


def iso(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


async def test_retries_exhausted_sends_awss_kafka_record_to_sqs(
    kafka_topic: KafkaTopic, endpoint: str, sqs: Any, unique: str
) -> None:
    poison = f"poison-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[poison] = 1_000
    await produce(kafka_topic, [(0, b"a0"), (0, poison.encode()), (0, b"a2")])
    url, arn = dlq(sqs, unique)
    config = mapping(
        kafka_topic,
        "g-dlq",
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        maximum_retry_attempts=1,
        destination_config={"on_failure": {"destination": arn}},
    )
    async with running_with_destination(config, endpoint) as runtime:
        await poll_commits(kafka_topic, "g-dlq", [3, None, None])
        function_arn = runtime.function.arn
    body = await receive_one(sqs, url)
    events = kafka_handlers.events_for(kafka_topic.name)
    assert len(events) == 2  # the first attempt and one retry
    records = events[-1]["records"][f"{kafka_topic.name}-0"]
    assert [r["offset"] for r in records] == [0, 1, 2]
    request_id, stamp = body["requestContext"].pop("requestId"), body.pop("timestamp")
    assert isinstance(request_id, str) and request_id
    assert stamp.endswith("Z") and len(stamp) == len("2026-12-01T08:30:05.021Z")
    assert body == {
        "requestContext": {
            "functionArn": function_arn,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 2,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "KafkaBatchInfo": {
            "batchSize": 3,
            "bootstrapServers": kafka_topic.bootstrap,
            "payloadSize": len(orjson.dumps(events[-1])),
            "recordsInfo": {
                f"{kafka_topic.name}-0": {
                    "firstRecordOffset": "0",
                    "lastRecordOffset": "2",
                    "firstRecordTimestamp": iso(records[0]["timestamp"]),
                    "lastRecordTimestamp": iso(records[-1]["timestamp"]),
                }
            },
        },
    }


async def test_bisect_isolates_the_poison_record_and_gives_up_only_it(
    kafka_topic: KafkaTopic, endpoint: str, sqs: Any, unique: str
) -> None:
    poison = f"poison-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[poison] = 1_000
    await produce(kafka_topic, [(1, b"b0"), (1, b"b1"), (1, poison.encode()), (1, b"b3")])
    url, arn = dlq(sqs, unique)
    config = mapping(
        kafka_topic,
        "g-bisect",
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        maximum_retry_attempts=0,
        bisect_batch_on_function_error=True,
        destination_config={"on_failure": {"destination": arn}},
    )
    async with running_with_destination(config, endpoint):
        await poll_commits(kafka_topic, "g-bisect", [None, 4, None])
    body = await receive_one(sqs, url)
    key = f"{kafka_topic.name}-1"
    invoked = [
        [r["offset"] for r in e["records"][key]]
        for e in kafka_handlers.events_for(kafka_topic.name)
    ]
    # halves: [0..3] fails -> [0,1] ok -> [2,3] fails -> [2] fails, given up -> [3] ok
    assert invoked == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]
    info = body["KafkaBatchInfo"]
    assert info["batchSize"] == 1
    assert info["recordsInfo"][key]["firstRecordOffset"] == "2"
    assert info["recordsInfo"][key]["lastRecordOffset"] == "2"
    assert await committed(kafka_topic, "g-bisect") == [None, 4, None]


async def test_records_older_than_the_maximum_age_are_given_up_without_invoking(
    kafka_topic: KafkaTopic, endpoint: str, sqs: Any, unique: str
) -> None:
    old = int(time.time() * 1000) - 3_600_000  # an hour ago
    producer = AIOKafkaProducer(bootstrap_servers=kafka_topic.bootstrap)
    await producer.start()
    try:
        sent = [
            await producer.send(kafka_topic.name, v, partition=2, timestamp_ms=ts)
            for v, ts in ((b"old0", old), (b"old1", old + 1))
        ]
        sent.append(await producer.send(kafka_topic.name, b"new2", partition=2))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    url, arn = dlq(sqs, unique)
    config = mapping(
        kafka_topic,
        "g-age",
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        maximum_record_age_in_seconds=60,
        destination_config={"on_failure": {"destination": arn}},
    )
    async with running_with_destination(config, endpoint):
        await poll_commits(kafka_topic, "g-age", [None, None, 3])
    body = await receive_one(sqs, url)
    assert body["requestContext"]["condition"] == "RecordAgeExceeded"
    assert body["requestContext"]["approximateInvokeCount"] == 0
    assert "responseContext" not in body
    info = body["KafkaBatchInfo"]["recordsInfo"][f"{kafka_topic.name}-2"]
    assert (info["firstRecordOffset"], info["lastRecordOffset"]) == ("0", "1")
    assert info["firstRecordTimestamp"] == iso(old)
    values = [v for _, _, v in kafka_handlers.values_for(kafka_topic.name)]
    assert values == [b"new2"]  # only the young record reached the function


async def test_kafka_topic_destination_gets_each_failed_record_with_its_metadata(
    kafka_topic: KafkaTopic, endpoint: str
) -> None:
    from kafka_fixtures import create_topic

    dlt = f"{kafka_topic.name}-dlt"
    await create_topic(kafka_topic.bootstrap, dlt, 1)
    poison = f"poison-{kafka_topic.name}"
    kafka_handlers.FAILS_LEFT[poison] = 1_000
    await produce(kafka_topic, [(0, poison.encode()), (0, b"z1")], key=b"the-key")
    config = mapping(
        kafka_topic,
        "g-dlt",
        batch_size=10,
        maximum_batching_window_in_seconds=0.5,
        maximum_retry_attempts=0,
        destination_config={"on_failure": {"destination": f"kafka://{dlt}"}},
    )
    async with running_with_destination(config, endpoint):
        await poll_commits(kafka_topic, "g-dlt", [2, None, None])
    consumer = AIOKafkaConsumer(
        dlt, bootstrap_servers=kafka_topic.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        got: list[Any] = []
        with anyio.fail_after(30):
            while len(got) < 2:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    got += records
    finally:
        await consumer.stop()
    (event,) = kafka_handlers.events_for(kafka_topic.name)
    key = f"{kafka_topic.name}-0"
    for message, original in zip(got, event["records"][key], strict=True):
        assert message.key == b"the-key"  # the original record's key, as AWS produces it
        body = orjson.loads(message.value)
        assert body["requestContext"]["condition"] == "RetryAttemptsExhausted"
        assert body["responseContext"]["functionError"] == "Unhandled"
        info = body["KafkaBatchInfo"]
        assert info["batchSize"] == 1
        assert info["recordInfo"] == {
            "offset": str(original["offset"]),
            "timestamp": iso(original["timestamp"]),
        }
        assert body["payload"] == {**event, "records": {key: [original]}}
        assert info["payloadSize"] == len(orjson.dumps(body["payload"]))
