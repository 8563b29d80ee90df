"""The Kafka on-failure record and its delivery to an SQS, SNS or S3 destination.

Owns the document Lambda sends when a Kafka mapping gives up records, and handing it to
`esm.destinations` (whose interface stays as it is); must not decide when to give up
(the shared `esm.sources.streams.policy`). The shape follows AWS's documented example
(Lambda developer guide, "Capturing discarded batches for a self-managed Apache Kafka event
source" / the MSK page):

    {"requestContext": {"requestId", "functionArn",
                        "condition": "RetryAttemptsExhausted" | ..., "approximateInvokeCount"},
     "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError"},
     "version": "1.0", "timestamp": "<ISO, ms, Z>",
     "KafkaBatchInfo": {"batchSize", "eventSourceArn" (MSK), "bootstrapServers",
                        "payloadSize": <bytes of the event>,
                        "recordsInfo": {"<topic>-<partition>": {
                            "firstRecordOffset": "<n>", "lastRecordOffset": "<n>",
                            "firstRecordTimestamp": "<ISO>", "lastRecordTimestamp": "<ISO>"}}}}

Offsets are strings, as in AWS's example. S3 destinations also get the event (`payload`).
esm's choices where AWS is silent: records given up for their age use the condition
`RecordAgeExceeded` and no `responseContext` (as for streams, since no invocation ran);
the S3 key is `aws/lambda/<mapping>/<topic>-<partition>/YYYY/MM/DD/<time>-<uuid>`.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
import orjson
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from esm.aws import AwsClients
from esm.destinations import OnFailureDestination, create_destination
from esm.errors import DeliveryFailed, SourceUnavailable
from esm.events.on_failure import iso_millis
from esm.observability import get_logger
from esm.sources.kafka.auth import credentials_changed
from esm.sources.kafka.config import KAFKA_DESTINATION_PREFIX, KafkaMappingConfig

log = get_logger("esm.sources.kafka")

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]
DELIVERY_BACKOFF_INITIAL = 0.2
DELIVERY_BACKOFF_MAX = 30.0


@dataclass(frozen=True)
class GivenUpRecords:
    """What a lane gave up: a run of one partition's records and why."""

    partition_key: str
    first_offset: int
    last_offset: int
    first_timestamp_ms: int
    last_timestamp_ms: int
    batch_size: int
    payload_size: int
    condition: Condition
    approximate_invoke_count: int
    function_error: str | None
    request_id: str


def _iso_ms(epoch_ms: int) -> str:
    return iso_millis(datetime.fromtimestamp(epoch_ms / 1000, UTC))


def failure_record(
    given_up: GivenUpRecords,
    *,
    function_arn: str,
    bootstrap_servers: str,
    cluster_arn: str | None,
    now: datetime,
) -> dict[str, Any]:
    """The JSON document an SQS or SNS destination receives."""
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": given_up.request_id,
            "functionArn": function_arn,
            "condition": given_up.condition,
            "approximateInvokeCount": given_up.approximate_invoke_count,
        }
    }
    if given_up.condition != "RecordAgeExceeded":
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": given_up.function_error,
        }
    record["version"] = "1.0"
    record["timestamp"] = iso_millis(now)
    info: dict[str, Any] = {"batchSize": given_up.batch_size}
    if cluster_arn is not None:
        info["eventSourceArn"] = cluster_arn
    info["bootstrapServers"] = bootstrap_servers
    info["payloadSize"] = given_up.payload_size
    info["recordsInfo"] = {
        given_up.partition_key: {
            "firstRecordOffset": str(given_up.first_offset),
            "lastRecordOffset": str(given_up.last_offset),
            "firstRecordTimestamp": _iso_ms(given_up.first_timestamp_ms),
            "lastRecordTimestamp": _iso_ms(given_up.last_timestamp_ms),
        }
    }
    record["KafkaBatchInfo"] = info
    return record


def s3_object_key(mapping: str, partition_key: str, now: datetime, object_uuid: str) -> str:
    moment = now.astimezone(UTC)
    return (
        f"aws/lambda/{mapping}/{partition_key}/"
        f"{moment:%Y/%m/%d}/{moment:%Y-%m-%dT%H.%M.%S}-{object_uuid}"
    )


class KafkaOnFailure:
    """Delivers given-up records to the mapping's destination, retrying until it succeeds.

    Lambda does not skip past a given-up batch whose record it could not deliver, so the
    caller (a lane) is blocked here, and commits only after `deliver` returns."""

    def __init__(
        self,
        destination: OnFailureDestination | KafkaTopicDestination,
        *,
        mapping: str,
        function_arn: str,
        bootstrap_servers: str,
        cluster_arn: str | None,
    ) -> None:
        self.destination = destination
        self._mapping = mapping
        self._function_arn = function_arn
        self._bootstrap = bootstrap_servers
        self._cluster_arn = cluster_arn

    def documents(
        self, given_up: GivenUpRecords, event: dict[str, Any], now: datetime
    ) -> tuple[dict[str, Any], tuple[str, bytes]]:
        record = failure_record(
            given_up,
            function_arn=self._function_arn,
            bootstrap_servers=self._bootstrap,
            cluster_arn=self._cluster_arn,
            now=now,
        )
        key = s3_object_key(self._mapping, given_up.partition_key, now, str(uuid.uuid4()))
        return record, (key, orjson.dumps({**record, "payload": event}))

    def topic_messages(
        self, given_up: GivenUpRecords, event: dict[str, Any], now: datetime
    ) -> list[tuple[bytes | None, bytes]]:
        """(key, value) per given-up record for a Kafka topic destination: AWS sends each
        record alone, its metadata with `recordInfo` and the record itself as `payload`,
        keyed by the original record's key (kafka-on-failure-destination)."""
        (docs,) = event["records"].values()
        messages: list[tuple[bytes | None, bytes]] = []
        for doc in docs:
            payload = {**event, "records": {given_up.partition_key: [doc]}}
            record = failure_record(
                given_up,
                function_arn=self._function_arn,
                bootstrap_servers=self._bootstrap,
                cluster_arn=self._cluster_arn,
                now=now,
            )
            info = record["KafkaBatchInfo"]
            info["batchSize"] = 1
            info["payloadSize"] = len(orjson.dumps(payload))
            del info["recordsInfo"]
            info["recordInfo"] = {
                "offset": str(doc["offset"]),
                "timestamp": _iso_ms(doc["timestamp"]),
            }
            record["payload"] = payload
            key = base64.b64decode(doc["key"]) if doc.get("key") is not None else None
            messages.append((key, orjson.dumps(record)))
        return messages

    async def deliver(self, given_up: GivenUpRecords, event: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        destination = self.destination
        if isinstance(destination, KafkaTopicDestination):
            messages = self.topic_messages(given_up, event, now)

            async def send() -> None:
                await destination.produce(messages)

        else:
            record, s3_object = self.documents(given_up, event, now)

            async def send() -> None:
                await destination.deliver(record, s3_object)

        attempt = 0
        while True:
            try:
                await send()
                return
            except DeliveryFailed as exc:
                attempt += 1
                log.warning(
                    "kafka.on_failure.delivery_failed",
                    mapping=self._mapping,
                    partition=given_up.partition_key,
                    destination=self.destination.arn,
                    attempt=attempt,
                    error=str(exc),
                )
                cap = min(DELIVERY_BACKOFF_MAX, DELIVERY_BACKOFF_INITIAL * 2**attempt)
                await anyio.sleep(random.uniform(0, cap))

    async def aclose(self) -> None:
        """Stop the producer of a Kafka topic destination (nothing to do for AWS ones)."""
        if isinstance(self.destination, KafkaTopicDestination):
            await self.destination.aclose()


def given_up_records(
    partition_key: str,
    offsets_and_stamps: Sequence[tuple[int, int]],
    *,
    payload_size: int,
    condition: Condition,
    invoke_count: int,
    function_error: str | None,
    request_id: str,
) -> GivenUpRecords:
    """The `GivenUpRecords` of a run of (offset, timestamp ms) pairs, in offset order."""
    (first, first_ts), (last, last_ts) = offsets_and_stamps[0], offsets_and_stamps[-1]
    return GivenUpRecords(
        partition_key,
        first,
        last,
        first_ts,
        last_ts,
        len(offsets_and_stamps),
        payload_size,
        condition,
        invoke_count,
        function_error,
        request_id,
    )


OptionsReader = Callable[[], Awaitable[dict[str, Any]]]
"""Reads the mapping's aiokafka connection options afresh (its secrets included)."""


class KafkaTopicDestination:
    """A topic on the source cluster (`kafka://<topic>`): produces with the consumer's
    connection settings (brokers, TLS, SASL), started on first use.

    A produce that fails drops the producer; with `read_options`, the next one reads the
    mapping's secrets again first, as the consumer does after a refused login, so a password
    rotated in Secrets Manager reaches the destination's login too without a restart."""

    def __init__(
        self,
        topic: str,
        bootstrap_servers: Sequence[str],
        client_options: dict[str, Any],
        read_options: OptionsReader | None = None,
    ) -> None:
        self.topic = topic
        self.arn = f"kafka://{topic}"
        self._servers = list(bootstrap_servers)
        self._options = client_options
        self._read_options = read_options
        self._stale = False
        """A produce failed: read the options again before the next producer."""
        self._producer: Any = None

    async def produce(self, messages: Sequence[tuple[bytes | None, bytes]]) -> None:
        """Produce every message and wait for the broker's acks; DeliveryFailed otherwise."""
        try:
            producer = self._producer or await self._start_producer()
            sent = [await producer.send(self.topic, value, key=key) for key, value in messages]
            for ack in sent:
                await ack
        except KafkaError as exc:
            await self.aclose()
            self._stale = self._read_options is not None
            raise DeliveryFailed(
                f"on-failure destination {self.arn}: produce failed: {type(exc).__name__}: {exc}"
            ) from exc

    async def _start_producer(self) -> Any:
        if self._stale:
            await self._reread_options()
        producer = AIOKafkaProducer(bootstrap_servers=self._servers, acks="all", **self._options)
        try:
            await producer.start()
        except KafkaError:  # a refused login, say: close what it opened before the next try
            await producer.stop()
            raise
        self._producer = producer
        return producer

    async def _reread_options(self) -> None:
        """The mapping's options read again (a secret that cannot be read fails this attempt,
        naming it; the next attempt reads it again). Logs whether the login changed."""
        assert self._read_options is not None
        try:
            options = producer_options(await self._read_options())
        except SourceUnavailable as exc:
            raise DeliveryFailed(f"on-failure destination {self.arn}: {exc}") from exc
        log.info(
            "kafka.on_failure.secret.reread",
            destination=self.arn,
            changed=credentials_changed(self._options, options),
        )
        self._options, self._stale = options, False

    async def aclose(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


_CONSUMER_ONLY_OPTIONS = ("session_timeout_ms", "heartbeat_interval_ms")


def producer_options(client_options: dict[str, Any]) -> dict[str, Any]:
    """The consumer's aiokafka options that a producer takes too."""
    return {k: v for k, v in client_options.items() if k not in _CONSUMER_ONLY_OPTIONS}


def build_on_failure(
    config: KafkaMappingConfig,
    aws: AwsClients,
    function_arn: str,
    bootstrap_servers: Sequence[str],
    client_options: dict[str, Any] | None = None,
    read_options: OptionsReader | None = None,
) -> KafkaOnFailure | None:
    """The mapping's on-failure delivery, or None without a destination (ConfigError for an
    ARN `esm.destinations` cannot use). `client_options` are the consumer's aiokafka
    connection settings, reused for a Kafka topic destination (`read_options` reads them
    afresh after a failed produce)."""
    arn = config.on_failure_destination
    if arn is None:
        return None
    destination: OnFailureDestination | KafkaTopicDestination
    if arn.startswith(KAFKA_DESTINATION_PREFIX):
        destination = KafkaTopicDestination(
            arn.removeprefix(KAFKA_DESTINATION_PREFIX),
            bootstrap_servers,
            producer_options(client_options or {}),
            read_options,
        )
    else:
        destination = create_destination(arn, aws)
    return KafkaOnFailure(
        destination,
        mapping=config.name,
        function_arn=function_arn,
        bootstrap_servers=",".join(bootstrap_servers),
        cluster_arn=config.cluster_arn,
    )
