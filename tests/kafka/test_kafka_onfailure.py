"""The Kafka on-failure record: AWS's documented KafkaBatchInfo shape, built from fixed input."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from esm.sources.kafka.onfailure import (
    KafkaOnFailure,
    failure_record,
    given_up_records,
    s3_object_key,
)

NOW = datetime(2026, 12, 1, 8, 30, 5, 21000, tzinfo=UTC)
ARN = "arn:aws:lambda:us-east-1:123456789012:function:f"
MSK = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abcd-1"
T0 = 1_764_577_800_123  # 2025-12-01T08:30:00.123Z


def given_up(condition: str = "RetryAttemptsExhausted"):  # type: ignore[no-untyped-def]
    return given_up_records(
        "orders-2",
        [(40, T0), (41, T0 + 500), (42, T0 + 1000)],
        payload_size=1234,
        condition=condition,  # type: ignore[arg-type]
        invoke_count=3,
        function_error="Unhandled",
        request_id="req-1",
    )


def test_retries_exhausted_record_is_awss_shape() -> None:
    record = failure_record(
        given_up(), function_arn=ARN, bootstrap_servers="b1:9092,b2:9092", cluster_arn=MSK, now=NOW
    )
    assert record == {
        "requestContext": {
            "requestId": "req-1",
            "functionArn": ARN,
            "condition": "RetryAttemptsExhausted",
            "approximateInvokeCount": 3,
        },
        "responseContext": {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": "Unhandled",
        },
        "version": "1.0",
        "timestamp": "2026-12-01T08:30:05.021Z",
        "KafkaBatchInfo": {
            "batchSize": 3,
            "eventSourceArn": MSK,
            "bootstrapServers": "b1:9092,b2:9092",
            "payloadSize": 1234,
            "recordsInfo": {
                "orders-2": {
                    "firstRecordOffset": "40",
                    "lastRecordOffset": "42",
                    "firstRecordTimestamp": "2025-12-01T08:30:00.123Z",
                    "lastRecordTimestamp": "2025-12-01T08:30:01.123Z",
                }
            },
        },
    }


def test_self_managed_has_no_event_source_arn_and_age_has_no_response_context() -> None:
    record = failure_record(
        given_up("RecordAgeExceeded"),
        function_arn=ARN,
        bootstrap_servers="b1:9092",
        cluster_arn=None,
        now=NOW,
    )
    assert "eventSourceArn" not in record["KafkaBatchInfo"]
    assert "responseContext" not in record
    assert record["requestContext"]["condition"] == "RecordAgeExceeded"


def test_s3_object_carries_the_payload_under_awss_key_layout() -> None:
    class Nowhere:
        arn = "arn:aws:s3:::bucket"

        async def deliver(self, record: object, s3_object: object) -> None:
            raise AssertionError("not called")

    on_failure = KafkaOnFailure(
        Nowhere(), mapping="m", function_arn=ARN, bootstrap_servers="b1:9092", cluster_arn=None
    )
    event = {"eventSource": "SelfManagedKafka", "records": {}}
    record, (key, body) = on_failure.documents(given_up(), event, NOW)
    assert key.startswith("aws/lambda/m/orders-2/2026/12/01/2026-12-01T08.30.05-")
    assert orjson.loads(body) == {**record, "payload": event}
    expected = "aws/lambda/m/t-0/2026/12/01/2026-12-01T08.30.05-u"
    assert s3_object_key("m", "t-0", NOW, "u") == expected
