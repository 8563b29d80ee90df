"""Lambda's Kafka event shape, checked against Powertools' parser models and data class."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools.utilities.data_classes import KafkaEvent
from aws_lambda_powertools.utilities.parser.models import (
    KafkaMskEventModel,
    KafkaSelfManagedEventModel,
)

from esm.filtering import FilterSet
from esm.sources.kafka.event import (
    KafkaRecord,
    build_event,
    kafka_filter_view,
    partition_key,
    record_json,
)

MSK_ARN = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abcd1234-ab12-cd34-ef56-1234567890ab-1"


def record(offset: int = 15, key: bytes | None = b"recordKey", value: bytes | None = b'{"a":1}'):  # type: ignore[no-untyped-def]
    return KafkaRecord(
        topic="mytopic",
        partition=0,
        offset=offset,
        timestamp_ms=1545084650987,
        timestamp_type=0,
        key=key,
        value=value,
        headers=[("headerKey", b"headerValue")],
    )


def test_record_json_is_lambdas_shape() -> None:
    assert record_json(record()) == {
        "topic": "mytopic",
        "partition": 0,
        "offset": 15,
        "timestamp": 1545084650987,
        "timestampType": "CREATE_TIME",
        "key": "cmVjb3JkS2V5",
        "value": "eyJhIjoxfQ==",
        "headers": [{"headerKey": [104, 101, 97, 100, 101, 114, 86, 97, 108, 117, 101]}],
    }


def test_key_is_left_out_when_the_record_has_none_and_log_append_time_is_named() -> None:
    doc = record_json(KafkaRecord("t", 2, 7, 1, 1, None, None))
    assert "key" not in doc
    assert doc["value"] == ""
    assert doc["timestampType"] == "LOG_APPEND_TIME"
    assert doc["headers"] == []


def test_self_managed_event_validates_against_powertools() -> None:
    docs = [record_json(record(15)), record_json(record(16, key=None))]
    event = build_event("SelfManagedKafka", "b1:9092,b2:9092", None, {"mytopic-0": docs})
    assert "eventSourceArn" not in event
    model = KafkaSelfManagedEventModel.model_validate(json.loads(json.dumps(event)))
    assert model.bootstrapServers == ["b1:9092", "b2:9092"]
    parsed = model.records["mytopic-0"]
    assert [r.offset for r in parsed] == [15, 16]
    assert parsed[0].key == b"recordKey" and parsed[1].key is None
    assert parsed[0].value == '{"a":1}'
    assert parsed[0].headers == [{"headerKey": b"headerValue"}]


def test_msk_event_validates_against_powertools_and_its_data_class() -> None:
    event = build_event("aws:kafka", "b1:9092", MSK_ARN, {"mytopic-0": [record_json(record())]})
    model = KafkaMskEventModel.model_validate(json.loads(json.dumps(event)))
    assert model.eventSource == "aws:kafka" and model.eventSourceArn == MSK_ARN
    data = KafkaEvent(event)
    (first,) = list(data.records)
    assert data.bootstrap_servers == "b1:9092"
    assert data.decoded_bootstrap_servers == ["b1:9092"]
    assert first.topic == "mytopic" and first.offset == 15
    assert first.decoded_key == b"recordKey"
    assert first.json_value == {"a": 1}
    assert first.decoded_headers == {"headerKey": b"headerValue"}


def test_partition_key_is_topic_dash_partition() -> None:
    assert partition_key("my-topic", 10) == "my-topic-10"


def test_filters_see_the_decoded_json_value_and_metadata() -> None:
    by_value = FilterSet.compile(['{"value": {"a": [1]}}'])
    assert by_value.matches(kafka_filter_view(record_json(record())))
    assert not by_value.matches(kafka_filter_view(record_json(record(value=b'{"a":2}'))))
    assert not by_value.matches(kafka_filter_view(record_json(record(value=b"plain text"))))
    by_offset = FilterSet.compile(['{"offset": [{"numeric": [">", 15]}]}'])
    assert by_offset.matches(kafka_filter_view(record_json(record(16, value=b"plain"))))
    assert not by_offset.matches(kafka_filter_view(record_json(record(15))))
    assert base64.b64decode(record_json(record())["value"]) == b'{"a":1}'


def test_shaper_size_is_the_exact_json_size_of_the_record() -> None:
    """The 6 MB cap relies on the computed size; it must equal the serialised size."""
    from esm.sources.kafka.event import PartitionShaper, record_json_size

    cases = [
        (0, -1, 0, None, None, ()),
        (12345678901, 1545084650987, 1, b"k\x00\xff", b"x" * 1000, ()),
        (7, 1, 0, b"", b"\xe2\x82\xac", [('h\u00e9"\\', b"\x00\x01"), ("n", None)]),
        (99, 10, 1, b"ab", b"abcd", [("a", b"")]),
    ]
    shaper = PartitionShaper("my.topic_name-1", 11)
    for offset, stamp, stamp_type, key, value, headers in cases:
        doc, size = shaper.shape(offset, stamp, stamp_type, key, value, headers)  # type: ignore[arg-type]
        assert size == record_json_size(doc), doc


def test_fast_base64_matches_the_standard_library() -> None:
    import os

    from esm.sources.kafka import event

    for data in (b"", b"a", b"ab", b"abc", os.urandom(1024), os.urandom(4097)):
        assert event._b64(data) == base64.b64encode(data).decode("ascii")


def test_shape_into_reads_aiokafka_records_as_shape_does() -> None:
    """The lane shapes aiokafka's ConsumerRecords in one loop (`shape_into`): each record's
    JSON and exact size are those of `shape` with the same fields."""
    from aiokafka.structs import ConsumerRecord

    from esm.sources.kafka.event import PartitionShaper, record_json_size

    fetched = [
        ConsumerRecord("t.x", 2, 9, 1545084650987, 0, b"k", b"v" * 100, None, 1, 100, ()),
        ConsumerRecord("t.x", 2, 10, -1, 1, None, None, None, -1, -1, [("h", b"\x00\xff")]),
        ConsumerRecord("t.x", 2, 11, 7, 0, b"", b"\xe2\x82\xac", None, 0, 3, [("a", None)]),
    ]
    shaper = PartitionShaper("t.x", 2)
    docs: list[dict[str, object]] = []
    sizes: list[int] = []
    total = shaper.shape_into(fetched, docs.append, sizes.append)
    expected = [
        shaper.shape(r.offset, r.timestamp, r.timestamp_type, r.key, r.value, r.headers)
        for r in fetched
    ]
    assert docs == [doc for doc, _ in expected]
    assert sizes == [size for _, size in expected] == [record_json_size(d) for d in docs]
    assert total == sum(sizes)
    assert docs[1] == {
        "topic": "t.x",
        "partition": 2,
        "offset": 10,
        "timestamp": -1,
        "timestampType": "LOG_APPEND_TIME",
        "value": "",
        "headers": [{"h": [0, 255]}],
    }


def test_shape_into_sizes_are_exact_over_many_shapes() -> None:
    """The digit bands of `shape_into` (offsets and timestamps measured without str()) give
    the serialised size of every record, across digit boundaries, negative timestamps, keys
    none/empty/binary and headers with unicode, quotes and backslashes."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from esm.sources.kafka.event import KafkaRecord, PartitionShaper, record_json_size

    header = st.tuples(st.text(max_size=8), st.one_of(st.none(), st.binary(max_size=8)))
    boundary = st.sampled_from([0, 9, 10, 99, 100, 999_999_999_999, 10**12, 10**13 - 1, 10**13])
    number = st.one_of(boundary, st.integers(min_value=0, max_value=2**63 - 1))
    fields = st.tuples(
        st.one_of(number, st.integers(min_value=-(2**63), max_value=-1)),
        st.integers(min_value=0, max_value=1),
        st.one_of(st.none(), st.binary(max_size=40)),
        st.one_of(st.none(), st.binary(max_size=40)),
        st.lists(header, max_size=3),
    )

    @settings(max_examples=300, deadline=None)
    @given(st.lists(fields, min_size=1, max_size=12), number)
    def check(chunk: list[Any], first_offset: int) -> None:
        shaper = PartitionShaper("t.opic_name-9", 4)
        records = [
            KafkaRecord("t.opic_name-9", 4, first_offset + i, stamp, kind, key, value, headers)
            for i, (stamp, kind, key, value, headers) in enumerate(chunk)
        ]
        fetched = [_Fetched(r) for r in records]
        docs: list[dict[str, Any]] = []
        sizes: list[int] = []
        total = shaper.shape_into(fetched, docs.append, sizes.append)
        assert sizes == [record_json_size(doc) for doc in docs]
        assert total == sum(sizes)
        assert docs == [record_json(r) for r in records]

    check()


class _Fetched:
    """A KafkaRecord under the attribute names a client's record has (`FetchedRecord`)."""

    def __init__(self, record: KafkaRecord) -> None:
        self.offset = record.offset
        self.timestamp = record.timestamp_ms
        self.timestamp_type = record.timestamp_type
        self.key = record.key
        self.value = record.value
        self.headers = record.headers
