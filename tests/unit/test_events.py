"""Event and on-failure record shapes, checked against the spec's AWS examples."""

from __future__ import annotations

import base64
import itertools
import json
import re
from datetime import UTC, datetime
from typing import Any

import orjson

from esm.events.dynamodb import parse_get_records as parse_dynamodb
from esm.events.dynamodb import record_arrival as record_arrival_ddb
from esm.events.dynamodb import record_key as record_key_ddb
from esm.events.kinesis import MAX_FLOAT_CHARS, record_arrival, record_key
from esm.events.kinesis import parse_get_records as parse_kinesis
from esm.events.on_failure import GivenUpBatch, failure_record, s3_failure_object
from esm.events.sqs import sqs_record, sqs_records

STREAM = "arn:aws:kinesis:us-east-2:123456789012:stream/lambda-stream"
DDB_STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2015-06-27T00:48:05.899"


def test_kinesis_record_matches_the_lambda_example_and_keeps_data_base64() -> None:
    body = orjson.dumps(
        {
            "Records": [
                {
                    "SequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                    "ApproximateArrivalTimestamp": 1545084650.987,
                    "Data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
                    "PartitionKey": "1",
                }
            ],
            "NextShardIterator": "next",
            "MillisBehindLatest": 1200,
        }
    )
    page = parse_kinesis(
        body,
        shard_id="shardId-000000000006",
        stream_arn=STREAM,
        region="us-east-2",
    )
    assert page.events == [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "1",
                "sequenceNumber": "49590338271490256608559692538361571095921575989136588898",
                "data": "SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==",
                "approximateArrivalTimestamp": 1545084650.987,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": "shardId-000000000006:"
            "49590338271490256608559692538361571095921575989136588898",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::123456789012:role/esm",
            "awsRegion": "us-east-2",
            "eventSourceARN": STREAM,
        }
    ]
    assert (page.next_shard_iterator, page.millis_behind_latest) == ("next", 1200)
    (event,) = page.events
    assert (page.sequence_numbers, record_key(event), record_arrival(event)) == (
        ["49590338271490256608559692538361571095921575989136588898"],
        "1",
        1545084650.987,
    )
    # The size and the page's bound cover the serialised record (they feed the 6 MB cap).
    (size,) = page.measure(page.events)
    assert page.size_bound >= size >= len(orjson.dumps(event))


def kinesis_item(
    sequence_number: int, partition_key: str, data: bytes, arrival: float | int
) -> dict[str, object]:
    return {
        "SequenceNumber": str(sequence_number),
        "ApproximateArrivalTimestamp": arrival,
        "Data": base64.b64encode(data).decode(),
        "PartitionKey": partition_key,
    }


def test_kinesis_record_sizes_never_fall_short_of_the_serialised_record() -> None:
    """The 6 MB cap adds these sizes up: for any key, data and timestamp (escapes,
    non-ASCII, long floats, integers) a size is at least the record's JSON length."""
    keys = ["1", "pk-7", 'quote"and\\backslash', "tab\tnewline\n\x01", "clé-ü", "鍵" * 256, "😀"]
    arrivals: list[float | int] = [1545084650.987, 0, 1545084650, -2.2250738585072014e-308, 1e300]
    for keys_in_page in ([keys[0], keys[1]], keys):
        items = [
            kinesis_item(
                49590338271490256608559692538361571095921575989136588898 + i, key, b"x" * i, arrival
            )
            for i, (key, arrival) in enumerate(itertools.product(keys_in_page, arrivals))
        ]
        page = parse_kinesis(
            orjson.dumps({"Records": items}),
            shard_id="shardId-000000000006",
            stream_arn=STREAM,
            region="us-east-2",
        )
        assert len(page.events) == len(page.sequence_numbers) == len(items)
        sizes = page.sizes if page.sizes is not None else page.measure(page.events)
        for event, size in zip(page.events, sizes, strict=True):
            exact = len(orjson.dumps(event))
            assert exact <= size <= exact + 32
            assert type(event["kinesis"]["approximateArrivalTimestamp"]) is float
        assert page.size_bound >= sum(sizes)


def test_closed_kinesis_shard_has_no_next_iterator() -> None:
    page = parse_kinesis(
        b'{"Records": [], "NextShardIterator": null, "MillisBehindLatest": 0}',
        shard_id="s",
        stream_arn=STREAM,
        region="us-east-2",
    )
    assert page.events == [] and page.next_shard_iterator is None


def test_dynamodb_ttl_removal_keeps_user_identity_and_lambda_key_order() -> None:
    item = {
        "eventID": "c4ca4238a0b923820dcc509a6f75849b",
        "eventName": "REMOVE",
        "eventVersion": "1.0",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1428537600,
            "Keys": {"Id": {"N": "101"}},
            "OldImage": {"Id": {"N": "101"}},
            "SequenceNumber": "4421584500000000017450439091",
            "SizeBytes": 26,
            "StreamViewType": "OLD_IMAGE",
        },
        "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
    }
    page = parse_dynamodb(
        orjson.dumps({"Records": [item]}), stream_arn=DDB_STREAM, region="us-east-1"
    )
    record = page.records[0]
    assert list(record) == [
        "eventID",
        "eventName",
        "eventVersion",
        "eventSource",
        "awsRegion",
        "dynamodb",
        "eventSourceARN",
        "userIdentity",
    ]
    assert record["eventVersion"] == "1.1"
    assert record["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert page.sequence_numbers == ["4421584500000000017450439091"]
    assert record_arrival_ddb(record) == 1428537600.0
    # Records of the same item share a lane key whatever the key order in the document.
    other = parse_dynamodb(
        orjson.dumps(
            {"Records": [{**item, "dynamodb": {**item["dynamodb"], "Keys": {"Id": {"N": "101"}}}}]}
        ),
        stream_arn=DDB_STREAM,
        region="us-east-1",
    )
    assert record_key_ddb(other.records[0]) == record_key_ddb(record)


QUEUE = "arn:aws:sqs:us-east-2:123456789012:my-queue"

LAMBDA_EXAMPLE_MESSAGE: dict[str, Any] = {
    "MessageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
    "ReceiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
    "MD5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
    "Body": "Test message.",
    "Attributes": {
        "SenderId": "AIDAIENQZJOLO23YVJ4VO",
        "ApproximateFirstReceiveTimestamp": "1545082649185",
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1545082649183",
    },
}

FIFO_MESSAGE: dict[str, Any] = {
    "MessageId": "11d6ee51-4cc7-4302-9e22-7cd8afdaadf5",
    "ReceiptHandle": "AQEBBX8nesZEXmkhsmZeyIE8iQAMig7qw...",
    "MD5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
    "MD5OfMessageAttributes": "c6a2f3b1a4c1bd1ea5d0b4f1d5c1a0e2",
    "Body": "Test message.",
    "Attributes": {
        "MessageGroupId": "1",
        "SequenceNumber": "18849496460467696128",
        "MessageDeduplicationId": "1",
        "DeadLetterQueueSourceArn": "arn:aws:sqs:us-east-2:123456789012:source.fifo",
        "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793",
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1573251510774",
        "SenderId": "AIDAIO23YVJENQZJOL4VO",
        "ApproximateFirstReceiveTimestamp": "1573251510774",
    },
    "MessageAttributes": {
        "Author": {"DataType": "String", "StringValue": "John Grisham"},
        "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        "Tags": {"DataType": "String", "StringListValues": ["a", "b"]},
    },
}


def test_sqs_record_matches_the_lambda_example() -> None:
    message = LAMBDA_EXAMPLE_MESSAGE
    record = sqs_record(message, queue_arn=QUEUE, region="us-east-2")
    assert record == {
        "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
        "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a...",
        "body": "Test message.",
        "attributes": {
            "ApproximateReceiveCount": "1",
            "SentTimestamp": "1545082649183",
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": "1545082649185",
        },
        "messageAttributes": {},
        "md5OfMessageAttributes": None,
        "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
        "eventSource": "aws:sqs",
        "eventSourceARN": QUEUE,
        "awsRegion": "us-east-2",
    }
    # Key order is AWS's, whatever order the queue sent the attributes in.
    assert list(record["attributes"]) == [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ]


def test_sqs_fifo_record_forwards_lambda_attributes_and_message_attributes() -> None:
    message = FIFO_MESSAGE
    record = sqs_record(message, queue_arn=QUEUE + ".fifo", region="us-east-2")
    assert record["attributes"] == {
        "ApproximateReceiveCount": "1",
        "SentTimestamp": "1573251510774",
        "SenderId": "AIDAIO23YVJENQZJOL4VO",
        "ApproximateFirstReceiveTimestamp": "1573251510774",
        "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793",
        "SequenceNumber": "18849496460467696128",
        "MessageGroupId": "1",
        "MessageDeduplicationId": "1",
    }
    assert list(record["attributes"]) == [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
        "AWSTraceHeader",
        "SequenceNumber",
        "MessageGroupId",
        "MessageDeduplicationId",
    ]
    assert record["messageAttributes"] == {
        "Author": {
            "stringValue": "John Grisham",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "Blob": {
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
        "Tags": {"stringListValues": ["a", "b"], "binaryListValues": [], "dataType": "String"},
    }
    assert record["md5OfMessageAttributes"] == "c6a2f3b1a4c1bd1ea5d0b4f1d5c1a0e2"
    minimal = sqs_record(
        {"MessageId": "m", "ReceiptHandle": "r"}, queue_arn=QUEUE, region="us-east-2"
    )
    assert (minimal["body"], minimal["attributes"], minimal["messageAttributes"]) == ("", {}, {})


def test_sqs_records_builds_what_sqs_record_builds_for_each_message() -> None:
    """The receive path's batch builder (an inline fast path for the usual message: no
    message attributes, the usual system attributes) gives the same records, key order
    included, as `sqs_record` of each, on and off the fast path."""
    messages = [
        LAMBDA_EXAMPLE_MESSAGE,
        FIFO_MESSAGE,
        {"MessageId": "m", "ReceiptHandle": "r"},
        {**LAMBDA_EXAMPLE_MESSAGE, "MessageAttributes": {}, "MD5OfMessageAttributes": "x"},
        {**LAMBDA_EXAMPLE_MESSAGE, "MD5OfMessageAttributes": "x"},
        {
            "MessageId": "m",
            "ReceiptHandle": "r",
            "Attributes": LAMBDA_EXAMPLE_MESSAGE["Attributes"],
        },
        {**LAMBDA_EXAMPLE_MESSAGE, "Attributes": {**FIFO_MESSAGE["Attributes"], "Other": "1"}},
        {**LAMBDA_EXAMPLE_MESSAGE, "Body": 'with "quotes" and \u00e9', "Attributes": {}},
        # Four attributes, but not the usual four: the long way, AWSTraceHeader forwarded.
        {
            **LAMBDA_EXAMPLE_MESSAGE,
            "Attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": "1545082649183",
                "AWSTraceHeader": "Root=1-5759e988-bd862e3fe1be46a994272793",
                "ApproximateFirstReceiveTimestamp": "1545082649185",
            },
        },
        # Five keys, but not the usual five; attributes that are not a mapping.
        {k: v for k, v in LAMBDA_EXAMPLE_MESSAGE.items() if k != "MD5OfBody"}
        | {"MD5OfMessageAttributes": "x"},
        {k: v for k, v in LAMBDA_EXAMPLE_MESSAGE.items() if k != "MD5OfBody"} | {"Other": 1},
        {**LAMBDA_EXAMPLE_MESSAGE, "Attributes": None},
        # The usual four in another order: Lambda's order in the record.
        {
            **LAMBDA_EXAMPLE_MESSAGE,
            "Attributes": dict(reversed(list(LAMBDA_EXAMPLE_MESSAGE["Attributes"].items()))),
        },
    ]
    records = sqs_records(messages, queue_arn=QUEUE, region="us-east-2")
    expected = [sqs_record(m, queue_arn=QUEUE, region="us-east-2") for m in messages]
    assert orjson.dumps(records) == orjson.dumps(expected)
    assert sqs_records([], queue_arn=QUEUE, region="us-east-2") == []


def given_up(**overrides: object) -> GivenUpBatch:
    fields: dict[str, object] = dict(
        source="kinesis",
        shard_id="shardId-000000000001",
        stream_arn=STREAM,
        function_arn="arn:aws:lambda:us-east-2:123456789012:function:myfunction",
        start_sequence_number="1",
        end_sequence_number="9",
        first_arrival=1573691884.835,
        last_arrival=1573691885.580,
        batch_size=500,
        condition="RetryAttemptsExhausted",
        approximate_invoke_count=3,
        function_error="Unhandled",
        request_id="c9b8fa9f-5a7f-xmpl-af9c-0c604cde93a5",
        mapping_uuid="0b1e5f2c-7d0e-5d8e-9a0b-1c2d3e4f5a6b",
    )
    fields.update(overrides)
    return GivenUpBatch(**fields)  # type: ignore[arg-type]


NOW = datetime(2019, 11, 14, 0, 38, 6, 21000, tzinfo=UTC)


def test_kinesis_failure_record_is_the_aws_document() -> None:
    assert failure_record(given_up(), now=NOW) == {
        "requestContext": {
            "requestId": "c9b8fa9f-5a7f-xmpl-af9c-0c604cde93a5",
            "functionArn": "arn:aws:lambda:us-east-2:123456789012:function:myfunction",
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": "2019-11-14T00:38:06.021Z",
        "KinesisBatchInfo": {
            "shardId": "shardId-000000000001",
            "startSequenceNumber": "1",
            "endSequenceNumber": "9",
            "approximateArrivalOfFirstRecord": "2019-11-14T00:38:04.835Z",
            "approximateArrivalOfLastRecord": "2019-11-14T00:38:05.580Z",
            "batchSize": 500,
            "streamArn": STREAM,
        },
    }


def test_record_age_exceeded_has_no_response_context_and_dynamodb_uses_whole_seconds() -> None:
    record = failure_record(
        given_up(
            source="dynamodb",
            stream_arn=DDB_STREAM,
            condition="RecordAgeExceeded",
            approximate_invoke_count=1,
            function_error=None,
        ),
        now=NOW,
    )
    assert list(record) == ["requestContext", "version", "timestamp", "DDBStreamBatchInfo"]
    assert record["DDBStreamBatchInfo"]["approximateArrivalOfFirstRecord"] == "2019-11-14T00:38:04Z"
    assert record["timestamp"] == "2019-11-14T00:38:06.021Z"


def test_s3_object_carries_the_payload_under_the_aws_key_layout() -> None:
    payload = {"Records": [{"kinesis": {"data": "aGk="}}]}
    key, body = s3_failure_object(
        given_up(), payload, now=NOW, object_uuid="6f1c9a3e-2b4d-4e8f-9a1b-3c5d7e9f1a2b"
    )
    assert key == (
        "aws/lambda/0b1e5f2c-7d0e-5d8e-9a0b-1c2d3e4f5a6b/shardId-000000000001/"
        "2019/11/14/2019-11-14T00.38.06-6f1c9a3e-2b4d-4e8f-9a1b-3c5d7e9f1a2b"
    )
    document = json.loads(body)
    assert document["payload"] == payload
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["timestamp"])


def test_a_kinesis_page_bound_covers_its_records_and_is_tight_enough_to_skip_measuring() -> None:
    """A page's size bound (body length less each item's frame, plus the sequence
    numbers) is never under its records' JSON size, and stays within the timestamps'
    room of it, so a 10,000-record page of small records is cut without measuring."""
    items = [
        kinesis_item(
            49590338271490256608559692538361571095921575989136588898 + i,
            f"pk-{i}",
            b'{"type":"order","id":%d}' % i,
            1545084650.987,
        )
        for i in range(10_000)
    ]
    for body in (orjson.dumps({"Records": items}), json.dumps({"Records": items}).encode()):
        page = parse_kinesis(
            body, shard_id="shardId-000000000006", stream_arn=STREAM, region="us-east-2"
        )
        assert page.sizes is None
        exact = sum(len(orjson.dumps(event)) for event in page.events)
        assert exact <= sum(page.measure(page.events)) <= page.size_bound
    compact = parse_kinesis(
        orjson.dumps({"Records": items}),
        shard_id="shardId-000000000006",
        stream_arn=STREAM,
        region="us-east-2",
    )
    assert compact.size_bound <= exact + 10_000 * (MAX_FLOAT_CHARS + 1)
