"""Lambda's Kinesis event records, built straight from a raw GetRecords response body.

This is the stream hot path: botocore's parser caps near 52k records/s, so the body is
parsed with orjson and `Data` stays the base64 string the API already sent, which is
exactly what the Lambda event carries (see shared/design/local-endpoints.md). Key order
follows AWS's recorded events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import orjson

SCHEMA_VERSION = "1.0"
MAX_FLOAT_CHARS = 24
"""The longest number orjson writes for a float (`-2.2250738585072014e-308`): room for any
arrival timestamp in the size of a record."""

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class RecordFactory(Protocol[R_co]):
    """Builds the caller's per-record object (the shard poller's `StreamRecord`) in the
    parsing loop itself, so a page is walked once; `size` is the record's JSON size."""

    def __call__(
        self, event: dict[str, Any], sequence_number: str, key: str, arrival: float, size: int, /
    ) -> R_co: ...


@dataclass(slots=True)
class KinesisPage(Generic[R]):
    """One GetRecords response: its records (as the factory built them) and its cursor."""

    records: list[R]
    next_shard_iterator: str | None
    millis_behind_latest: int | None


def invoke_identity_arn(stream_arn: str) -> str:
    """Lambda names the mapping's execution role here; esm has none, so it names a role
    in the stream's account that makes the origin obvious."""
    parts = stream_arn.split(":")
    account = parts[4] if len(parts) > 4 else "000000000000"
    return f"arn:aws:iam::{account}:role/esm"


def parse_get_records(
    raw: bytes, *, shard_id: str, stream_arn: str, region: str, record: RecordFactory[R]
) -> KinesisPage[R]:
    """Turn a GetRecords JSON body into Lambda records without decoding `Data`."""
    body = orjson.loads(raw)
    items = body.get("Records") or []
    behind = body.get("MillisBehindLatest")
    return KinesisPage(
        records=_records(items, raw, shard_id, stream_arn, region, record) if items else [],
        next_shard_iterator=body.get("NextShardIterator"),
        millis_behind_latest=int(behind) if behind is not None else None,
    )


def _records(
    items: list[dict[str, Any]],
    raw: bytes,
    shard_id: str,
    stream_arn: str,
    region: str,
    record: RecordFactory[R],
) -> list[R]:
    """Each item as a Lambda record plus its size (for the 6 MB invocation payload cap).

    Records are copies of one template (a dict copy is cheaper than building the dict
    key by key). A size must never be under the record's serialised size. When the body
    is ASCII without a backslash, no string in it needs escaping, so a record serialises
    to the template's size plus its variable strings, with room for the longest
    timestamp. Otherwise each record is serialised to measure it."""
    event_template, kinesis_template = _templates(shard_id, stream_arn, region)
    exact_lengths = b"\\" not in raw and raw.isascii()
    fixed = len(orjson.dumps(event_template)) - len(b"0.0") + MAX_FLOAT_CHARS
    id_prefix = event_template["eventID"]
    new_event = event_template.copy
    new_kinesis = kinesis_template.copy
    records: list[R] = []
    append = records.append
    for item in items:
        sequence_number = item["SequenceNumber"]
        partition_key = item["PartitionKey"]
        data = item["Data"]
        arrival = item.get("ApproximateArrivalTimestamp")
        if type(arrival) is not float:
            arrival = float(arrival or 0.0)
        kinesis = new_kinesis()
        kinesis["partitionKey"] = partition_key
        kinesis["sequenceNumber"] = sequence_number
        kinesis["data"] = data
        kinesis["approximateArrivalTimestamp"] = arrival
        event = new_event()
        event["kinesis"] = kinesis
        event["eventID"] = id_prefix + sequence_number
        size = (
            fixed + len(data) + 2 * len(sequence_number) + len(partition_key)
            if exact_lengths
            else len(orjson.dumps(event))
        )
        append(record(event, sequence_number, partition_key, arrival, size))
    return records


def _templates(
    shard_id: str, stream_arn: str, region: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Lambda Kinesis record (AWS's key order) with empty variable fields, and its
    `kinesis` object; `eventID` holds the shard's prefix of every record's id."""
    kinesis: dict[str, Any] = {
        "kinesisSchemaVersion": SCHEMA_VERSION,
        "partitionKey": "",
        "sequenceNumber": "",
        "data": "",
        "approximateArrivalTimestamp": 0.0,
    }
    event: dict[str, Any] = {
        "kinesis": kinesis,
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": f"{shard_id}:",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": invoke_identity_arn(stream_arn),
        "awsRegion": region,
        "eventSourceARN": stream_arn,
    }
    return event, kinesis
