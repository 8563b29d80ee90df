"""Lambda's Kinesis event records, built straight from a raw GetRecords response body.

This is the stream hot path: botocore's parser caps near 52k records/s, so the body is
parsed with orjson and `Data` stays the base64 string the API already sent, which is
exactly what the Lambda event carries (see shared/design/local-endpoints.md). Key order
follows AWS's recorded events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SCHEMA_VERSION = "1.0"
ARRIVAL_DIGITS_MARGIN = 16
"""Room for arrival timestamps longer than the first record's in the size estimate."""


@dataclass(slots=True)
class KinesisPage:
    """One GetRecords response as Lambda records plus what the poller needs per record."""

    records: list[dict[str, Any]]
    sequence_numbers: list[str]
    partition_keys: list[str]
    arrival_times: list[float]
    sizes: list[int]
    """Approximate JSON size of each Lambda record, for the 6 MB invocation payload cap."""
    next_shard_iterator: str | None
    millis_behind_latest: int | None


def invoke_identity_arn(stream_arn: str) -> str:
    """Lambda names the mapping's execution role here; esm has none, so it names a role
    in the stream's account that makes the origin obvious."""
    parts = stream_arn.split(":")
    account = parts[4] if len(parts) > 4 else "000000000000"
    return f"arn:aws:iam::{account}:role/esm"


def parse_get_records(raw: bytes, *, shard_id: str, stream_arn: str, region: str) -> KinesisPage:
    """Turn a GetRecords JSON body into Lambda records without decoding `Data`."""
    body = orjson.loads(raw)
    items = body.get("Records") or []
    identity = invoke_identity_arn(stream_arn)
    records: list[dict[str, Any]] = []
    sequence_numbers: list[str] = []
    partition_keys: list[str] = []
    arrival_times: list[float] = []
    sizes: list[int] = []
    for item in items:
        sequence_number = item["SequenceNumber"]
        partition_key = item["PartitionKey"]
        data = item["Data"]
        arrival = float(item.get("ApproximateArrivalTimestamp") or 0.0)
        records.append(
            {
                "kinesis": {
                    "kinesisSchemaVersion": SCHEMA_VERSION,
                    "partitionKey": partition_key,
                    "sequenceNumber": sequence_number,
                    "data": data,
                    "approximateArrivalTimestamp": arrival,
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": f"{shard_id}:{sequence_number}",
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": identity,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
        )
        sequence_numbers.append(sequence_number)
        partition_keys.append(partition_key)
        arrival_times.append(arrival)
        sizes.append(len(data) + 2 * len(sequence_number) + 2 * len(partition_key))
    if records:
        # Every record serialises to the same fixed part plus its variable strings: measure
        # the fixed part once, on the first record, instead of serialising each one.
        fixed = len(orjson.dumps(records[0])) - sizes[0] + ARRIVAL_DIGITS_MARGIN
        sizes = [fixed + size for size in sizes]
    behind = body.get("MillisBehindLatest")
    return KinesisPage(
        records=records,
        sequence_numbers=sequence_numbers,
        partition_keys=partition_keys,
        arrival_times=arrival_times,
        sizes=sizes,
        next_shard_iterator=body.get("NextShardIterator"),
        millis_behind_latest=int(behind) if behind is not None else None,
    )
