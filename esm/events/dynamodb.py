"""Lambda's DynamoDB Streams event records, built from a raw GetRecords response body.

The stream's own record already has Lambda's shape (eventID, eventName, eventVersion,
eventSource, awsRegion, dynamodb with Keys / NewImage / OldImage in DynamoDB JSON,
SequenceNumber, SizeBytes, StreamViewType); Lambda adds `eventSourceARN`, and items
removed by TTL keep their `userIdentity`. Images are passed through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(slots=True)
class DynamoDBPage:
    """Lambda's records, their sequence numbers and sizes, as parallel lists; a record's
    lane key and arrival time are read from it when needed (`record_key`, `record_arrival`)."""

    records: list[dict[str, Any]]
    sequence_numbers: list[str]
    sizes: list[int]
    next_shard_iterator: str | None


def dynamodb_record(item: dict[str, Any], *, stream_arn: str, region: str) -> dict[str, Any]:
    """One record of Lambda's DynamoDB Streams event (AWS's key order)."""
    record: dict[str, Any] = {
        "eventID": item.get("eventID"),
        "eventName": item.get("eventName"),
        "eventVersion": "1.1",  # Lambda's DynamoDB events are 1.1, whatever the stream says
        "eventSource": "aws:dynamodb",
        "awsRegion": item.get("awsRegion") or region,
        "dynamodb": item.get("dynamodb", {}),
        "eventSourceARN": stream_arn,
    }
    if "userIdentity" in item:
        record["userIdentity"] = item["userIdentity"]
    return record


def record_key(record: dict[str, Any]) -> str:
    """A canonical form of a record's Keys: records of one item share a lane."""
    change = record["dynamodb"]
    return orjson.dumps(change.get("Keys", {}), option=orjson.OPT_SORT_KEYS).decode()


def record_arrival(record: dict[str, Any]) -> float:
    """When the change was written (epoch seconds; 0 when the stream does not say)."""
    return float(record["dynamodb"].get("ApproximateCreationDateTime") or 0.0)


def parse_get_records(raw: bytes, *, stream_arn: str, region: str) -> DynamoDBPage:
    body = orjson.loads(raw)
    records: list[dict[str, Any]] = []
    sequence_numbers: list[str] = []
    sizes: list[int] = []
    for item in body.get("Records") or []:
        record = dynamodb_record(item, stream_arn=stream_arn, region=region)
        change = record["dynamodb"]
        records.append(record)
        sequence_numbers.append(str(change.get("SequenceNumber", "")))
        sizes.append(len(orjson.dumps(record)))
    return DynamoDBPage(
        records=records,
        sequence_numbers=sequence_numbers,
        sizes=sizes,
        next_shard_iterator=body.get("NextShardIterator"),
    )
