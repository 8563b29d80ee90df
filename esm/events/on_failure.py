"""The on-failure record Lambda sends when a stream mapping gives up a batch.

Shapes follow AWS's recordings (spec section 3): `requestContext`, `responseContext`
(absent for `RecordAgeExceeded`), `version`, `timestamp` (ISO, milliseconds), and
`KinesisBatchInfo` or `DDBStreamBatchInfo` (arrival times with milliseconds for Kinesis,
whole seconds for DynamoDB). The record names a sequence range, not the records; S3
destinations also store the batch as it was sent (`payload`) under AWS's key layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

Condition = Literal["RetryAttemptsExhausted", "RecordAgeExceeded"]


@dataclass(frozen=True)
class GivenUpBatch:
    source: str
    """The family's registry name; its `BATCH_INFO` shape names the record's batch info."""
    shard_id: str
    stream_arn: str
    function_arn: str
    start_sequence_number: str
    end_sequence_number: str
    first_arrival: float
    last_arrival: float
    batch_size: int
    condition: Condition
    approximate_invoke_count: int
    function_error: str | None
    """"Unhandled" when the function raised; None when batchItemFailures reported the failure."""
    request_id: str
    mapping_uuid: str


def iso_millis(moment: datetime) -> str:
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )


def iso_seconds(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class BatchInfoShape:
    """How one stream family describes the batch in its on-failure record."""

    key: str
    """`KinesisBatchInfo` or `DDBStreamBatchInfo`."""
    arrival: Callable[[datetime], str]
    """Arrival times: milliseconds for Kinesis, whole seconds for DynamoDB (as recorded)."""


KINESIS_BATCH_INFO = BatchInfoShape("KinesisBatchInfo", iso_millis)
DYNAMODB_BATCH_INFO = BatchInfoShape("DDBStreamBatchInfo", iso_seconds)
BATCH_INFO: dict[str, BatchInfoShape] = {
    "kinesis": KINESIS_BATCH_INFO,
    "dynamodb": DYNAMODB_BATCH_INFO,
}
"""Per stream family, by its registry name (`GivenUpBatch.source`)."""


def _arrival(epoch_seconds: float, shape: BatchInfoShape) -> str:
    return shape.arrival(datetime.fromtimestamp(epoch_seconds, UTC))


def failure_record(batch: GivenUpBatch, *, now: datetime) -> dict[str, Any]:
    """The JSON document an SQS or SNS destination receives."""
    record: dict[str, Any] = {
        "requestContext": {
            "requestId": batch.request_id,
            "functionArn": batch.function_arn,
            "condition": batch.condition,
            "approximateInvokeCount": batch.approximate_invoke_count,
        }
    }
    if batch.condition != "RecordAgeExceeded":
        record["responseContext"] = {
            "statusCode": 200,
            "executedVersion": "$LATEST",
            "functionError": batch.function_error,
        }
    record["version"] = "1.0"
    record["timestamp"] = iso_millis(now)
    shape = BATCH_INFO[batch.source]
    record[shape.key] = {
        "shardId": batch.shard_id,
        "startSequenceNumber": batch.start_sequence_number,
        "endSequenceNumber": batch.end_sequence_number,
        "approximateArrivalOfFirstRecord": _arrival(batch.first_arrival, shape),
        "approximateArrivalOfLastRecord": _arrival(batch.last_arrival, shape),
        "batchSize": batch.batch_size,
        "streamArn": batch.stream_arn,
    }
    return record


def s3_object_key(batch: GivenUpBatch, *, now: datetime, object_uuid: str) -> str:
    """aws/lambda/<mapping-uuid>/<shard-id>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<uuid>, as AWS."""
    moment = now.astimezone(UTC)
    return (
        f"aws/lambda/{batch.mapping_uuid}/{batch.shard_id}/"
        f"{moment:%Y/%m/%d}/{moment:%Y-%m-%dT%H.%M.%S}-{object_uuid}"
    )


def s3_failure_object(
    batch: GivenUpBatch, payload: dict[str, Any], *, now: datetime, object_uuid: str
) -> tuple[str, bytes]:
    """(key, body) for an S3 destination: the failure record plus the invocation payload."""
    document = {**failure_record(batch, now=now), "payload": payload}
    return s3_object_key(batch, now=now, object_uuid=object_uuid), orjson.dumps(document)
