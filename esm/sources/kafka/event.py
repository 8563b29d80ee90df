"""Lambda's Kafka event JSON, built from records the consumer read: pure, no I/O.

Owns the record and envelope shapes and what a filter pattern sees of a record; must not
know about batching rules, offsets to commit or the client library (it reads a client's
record through `FetchedRecord`, the attributes aiokafka's records have; `KafkaRecord` is
the same for tests and tools).

The shape (Lambda developer guide, with-kafka and with-msk "example event"; checked
against Powertools' KafkaSelfManagedEventModel / KafkaMskEventModel):

    {"eventSource": "SelfManagedKafka" | "aws:kafka",
     "eventSourceArn": "<cluster ARN>",                  # MSK only
     "bootstrapServers": "b1:9092,b2:9092",
     "records": {"<topic>-<partition>": [
        {"topic", "partition", "offset", "timestamp": <epoch ms>,
         "timestampType": "CREATE_TIME" | "LOG_APPEND_TIME",
         "key": "<base64>",                               # left out when the record has none
         "value": "<base64>",
         "headers": [{"<name>": [<byte>, ...]}, ...]}]}}

esm's choices where AWS is silent: a record with a null value (a tombstone) gets
`"value": ""` (Powertools requires a string); repeated header names stay repeated entries; a
v0 message (Kafka before 0.10, no timestamp) gets `"timestamp": -1`, Kafka's NO_TIMESTAMP.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

TIMESTAMP_TYPES = ("CREATE_TIME", "LOG_APPEND_TIME")
"""Kafka's record timestamp types 0 and 1, as Lambda names them."""


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One record as read from a partition; bytes as the broker holds them."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


class FetchedRecord(Protocol):
    """What `PartitionShaper.shape_into` reads of a client's record (aiokafka's
    ConsumerRecord has these attributes)."""

    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def timestamp_type(self) -> int | None: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...


@dataclass(frozen=True, slots=True)
class _Fields:
    """One record's fields as `FetchedRecord` names them (for `PartitionShaper.shape`)."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


def partition_key(topic: str, partition: int) -> str:
    """Lambda's key of a partition's records in the event: `<topic>-<partition>`."""
    return f"{topic}-{partition}"


def record_json(record: KafkaRecord) -> dict[str, Any]:
    """The Lambda JSON of one record."""
    return PartitionShaper(record.topic, record.partition).shape(
        record.offset,
        record.timestamp_ms,
        record.timestamp_type,
        record.key,
        record.value,
        record.headers,
    )[0]


def record_json_size(doc: Mapping[str, Any]) -> int:
    """Bytes the record adds to the event's JSON (with its separating comma)."""
    return len(orjson.dumps(doc)) + 1


def _b64_binascii(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


_b64: Callable[[bytes], str]
try:  # SIMD base64 (the `kafka` extra): ~5x faster on 1 KB values, the hot path's biggest cost
    from pybase64 import b64encode_as_string as _b64
except ImportError:  # pragma: no cover - without the extra, the standard library's
    _b64 = _b64_binascii


class PartitionShaper:
    """Builds the Lambda JSON of one partition's records and its size, without serialising it.

    The hot path of the family: each record is shaped once when fetched. Its JSON size (for
    the 6 MB cap) is the size of the partition's fixed parts, computed once, plus the
    lengths of the variable fields; only headers, when a record has any, are serialised to
    be measured. Exact because Kafka topic names are ASCII letters, digits, `.`, `_`, `-`,
    which JSON never escapes.
    """

    __slots__ = ("topic", "partition", "_fixed")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        template = {
            "topic": topic,
            "partition": partition,
            "offset": 0,
            "timestamp": 0,
            "timestampType": TIMESTAMP_TYPES[0],
            "value": "",
            "headers": [],
        }
        # minus the two one-digit zeros, plus the comma separating records
        self._fixed = len(orjson.dumps(template)) - 2 + 1

    def shape(
        self,
        offset: int,
        timestamp_ms: int,
        timestamp_type: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] | None,
    ) -> tuple[dict[str, Any], int]:
        """(Lambda JSON of the record, bytes it adds to the event with its comma)."""
        docs: list[dict[str, Any]] = []
        sizes: list[int] = []
        fields = _Fields(offset, timestamp_ms, timestamp_type, key, value, headers or ())
        self.shape_into((fields,), docs.append, sizes.append)
        return docs[0], sizes[0]

    def shape_into(
        self,
        records: Iterable[FetchedRecord],
        docs: Callable[[dict[str, Any]], object],
        sizes: Callable[[int], object],
    ) -> int:
        """`shape` of each fetched record, inlined (the family's hot path: ~10% less CPU than
        a call per record, bench/kafka.py): its JSON to `docs`, its size to `sizes`; returns
        the sizes' sum."""
        topic, partition, fixed = self.topic, self.partition, self._fixed
        create, log_append = TIMESTAMP_TYPES
        b64 = _b64
        added = 0
        # The digits of offsets and timestamps, without str(): a band [low, high) of numbers
        # with `digits` digits, moved when a number falls outside it (offsets ascend, and
        # epoch-ms timestamps have 13 digits until 2286, so it rarely moves).
        digits, low, high = 1, 0, 10
        stamp_digits, stamp_low, stamp_high = 13, 10**12, 10**13
        for r in records:
            value, key, headers, offset, stamp = r.value, r.key, r.headers, r.offset, r.timestamp
            if stamp is None:  # a v0 message (no timestamp): Kafka's NO_TIMESTAMP
                stamp = -1
            encoded = b64(value) if value else ""
            if not low <= offset < high:
                digits = len(str(offset))
                low, high = (10 ** (digits - 1) if digits > 1 else 0), 10**digits
            if stamp_low <= stamp < stamp_high:
                n = fixed + digits + stamp_digits + len(encoded)
            elif stamp < 0:
                n = fixed + digits + len(str(stamp)) + len(encoded)
            else:
                stamp_digits = len(str(stamp))
                stamp_low = 10 ** (stamp_digits - 1) if stamp_digits > 1 else 0
                stamp_high = 10**stamp_digits
                n = fixed + digits + stamp_digits + len(encoded)
            if r.timestamp_type == 1:
                stamp_type = log_append
                n += _LOG_APPEND_EXTRA
            else:
                stamp_type = create
            listed: list[dict[str, list[int]]] = []
            if headers:
                listed = [{name: list(raw or b"")} for name, raw in headers]
                n += len(orjson.dumps(listed)) - 2
            if key is None:
                docs(
                    {
                        "topic": topic,
                        "partition": partition,
                        "offset": offset,
                        "timestamp": stamp,
                        "timestampType": stamp_type,
                        "value": encoded,
                        "headers": listed,
                    }
                )
            else:
                encoded_key = b64(key)
                n += _KEY_FIELD + len(encoded_key)
                docs(
                    {
                        "topic": topic,
                        "partition": partition,
                        "offset": offset,
                        "timestamp": stamp,
                        "timestampType": stamp_type,
                        "key": encoded_key,
                        "value": encoded,
                        "headers": listed,
                    }
                )
            sizes(n)
            added += n
        return added


_LOG_APPEND_EXTRA = len(TIMESTAMP_TYPES[1]) - len(TIMESTAMP_TYPES[0])
_KEY_FIELD = len(',"key":""')


def envelope_size(event_source: str, bootstrap_servers: str, source_arn: str | None) -> int:
    """Bytes of the event without records (and a generous allowance for the record keys)."""
    empty = build_event(event_source, bootstrap_servers, source_arn, {})
    return len(orjson.dumps(empty)) + 300


def build_event(
    event_source: str,
    bootstrap_servers: str,
    source_arn: str | None,
    records: Mapping[str, Iterable[dict[str, Any]]],
) -> dict[str, Any]:
    """The event for records already in Lambda JSON, grouped by `partition_key`."""
    event: dict[str, Any] = {"eventSource": event_source}
    if source_arn is not None:
        event["eventSourceArn"] = source_arn
    event["bootstrapServers"] = bootstrap_servers
    event["records"] = {key: list(docs) for key, docs in records.items()}
    return event


class _Opaque:
    """A value that no pattern matches: AWS filters such a record on metadata only."""

    __slots__ = ()


OPAQUE = _Opaque()


def kafka_filter_view(doc: dict[str, Any]) -> dict[str, Any]:
    """What a filter pattern sees of one record: its Lambda JSON, with `value` base64-decoded
    and parsed when it is a JSON object or array (AWS: "Lambda filters Kafka records on
    value" when the value is JSON; otherwise only the metadata fields can match)."""
    view = dict(doc)
    view["value"] = _decoded_value(doc.get("value"))
    return view


def _decoded_value(value: Any) -> Any:
    if not isinstance(value, str):
        return OPAQUE
    try:
        raw = base64.b64decode(value, validate=True)
        parsed = orjson.loads(raw)
    except (binascii.Error, orjson.JSONDecodeError, ValueError):
        return OPAQUE
    return parsed if isinstance(parsed, dict | list) else OPAQUE
