"""Lambda's Kinesis event records, built straight from a raw GetRecords response body.

This is the stream hot path: botocore's parser caps near 52k records/s, so the body is
parsed with orjson and `Data` stays the base64 string the API already sent, which is
exactly what the Lambda event carries (see shared/design/local-endpoints.md). Key order
follows AWS's recorded events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

SCHEMA_VERSION = "1.0"
MAX_FLOAT_CHARS = 24
"""The longest number orjson writes for a float (`-2.2250738585072014e-308`): room for any
arrival timestamp in the size of a record."""

Sizes = Callable[[list[dict[str, Any]]], list[int]]
"""Measures records of one page (for the 6 MB cap), for when a batch comes near it."""


@dataclass(slots=True)
class KinesisPage:
    """One GetRecords response: Lambda's records and their sequence numbers as parallel
    lists (no object per record), a bound on their size, and the cursor."""

    events: list[dict[str, Any]]
    sequence_numbers: list[str]
    sizes: list[int] | None
    """Each record's JSON size, when measured while parsing (bodies with escapes)."""
    size_bound: int
    """No slice of the page's records serialises to more bytes than this."""
    measure: Sizes
    next_shard_iterator: str | None
    millis_behind_latest: int | None


def record_key(event: dict[str, Any]) -> str:
    """A Lambda Kinesis record's partition key: records of one key keep their order."""
    return str(event["kinesis"]["partitionKey"])


def record_arrival(event: dict[str, Any]) -> float:
    """When the record reached the stream (epoch seconds; the event holds a float)."""
    return float(event["kinesis"]["approximateArrivalTimestamp"])


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
    behind = body.get("MillisBehindLatest")
    events, sequence_numbers, sizes, bound, measure = _records(
        items, raw, shard_id, stream_arn, region
    )
    return KinesisPage(
        events=events,
        sequence_numbers=sequence_numbers,
        sizes=sizes,
        size_bound=bound,
        measure=measure,
        next_shard_iterator=body.get("NextShardIterator"),
        millis_behind_latest=int(behind) if behind is not None else None,
    )


_ITEM_FRAME = len(
    b'{"SequenceNumber":"","ApproximateArrivalTimestamp":0,"Data":"","PartitionKey":""}'
)
"""The fewest bytes an item takes in a body besides its three strings (keys, quotes,
commas, a one-digit timestamp), with no backslash to escape a key: each item holds all
four, so the body's length less this per item (and a comma between items) bounds the
strings' length."""
_Parsed = tuple[list[dict[str, Any]], list[str], list[int] | None, int, Sizes]
_sequence_number = itemgetter("SequenceNumber")
_kinesis = itemgetter("kinesis")


def _records(
    items: list[dict[str, Any]], raw: bytes, shard_id: str, stream_arn: str, region: str
) -> _Parsed:
    """Each item as a Lambda record, and what bounds their sizes (the 6 MB payload cap).

    When the body is ASCII without a backslash, no string in it needs escaping, so a
    record serialises to its template's size plus its variable strings (with room for
    the longest timestamp): the records are built in one comprehension of dict literals
    (the cheapest way CPython builds them), the page's bound is the body's strings (its
    length less each item's frame) plus the sequence numbers once more (each record holds
    its sequence number twice), and a record is measured only if a batch nears 6 MB.
    Otherwise, or when an item lacks a field or holds an unusual timestamp, each record is
    built and serialised one by one."""
    if not items:
        return [], [], [], 0, _measured
    if b"\\" in raw or not raw.isascii():
        return _records_measured(items, shard_id, stream_arn, region)
    identity = invoke_identity_arn(stream_arn)
    prefix = f"{shard_id}:"
    try:
        events = [
            {
                "kinesis": {
                    "kinesisSchemaVersion": SCHEMA_VERSION,
                    "partitionKey": item["PartitionKey"],
                    "sequenceNumber": item["SequenceNumber"],
                    "data": item["Data"],
                    "approximateArrivalTimestamp": float(item["ApproximateArrivalTimestamp"]),
                },
                "eventSource": "aws:kinesis",
                "eventVersion": "1.0",
                "eventID": prefix + item["SequenceNumber"],
                "eventName": "aws:kinesis:record",
                "invokeIdentityArn": identity,
                "awsRegion": region,
                "eventSourceARN": stream_arn,
            }
            for item in items
        ]
    except (KeyError, TypeError, ValueError):
        return _records_measured(items, shard_id, stream_arn, region)
    sequence_numbers = list(map(_sequence_number, items))
    fixed = _fixed_size(shard_id, stream_arn, region)

    def measure(events: list[dict[str, Any]]) -> list[int]:
        return [
            fixed + len(k["data"]) + 2 * len(k["sequenceNumber"]) + len(k["partitionKey"])
            for k in map(_kinesis, events)
        ]

    count = len(events)
    strings = len(raw) - count * _ITEM_FRAME - (count - 1)  # Data, key, sequence numbers
    bound = fixed * count + strings + sum(map(len, sequence_numbers))
    return events, sequence_numbers, None, bound, measure


def _fixed_size(shard_id: str, stream_arn: str, region: str) -> int:
    """The JSON size of a record with empty variable strings and the longest timestamp."""
    event_template, _ = _templates(shard_id, stream_arn, region)
    return len(orjson.dumps(event_template)) - len(b"0.0") + MAX_FLOAT_CHARS


def _measured(events: list[dict[str, Any]]) -> list[int]:
    return [len(orjson.dumps(event)) for event in events]


def _records_measured(
    items: list[dict[str, Any]], shard_id: str, stream_arn: str, region: str
) -> _Parsed:
    """Records built one by one from template copies and each serialised to measure it
    (bodies with escapes or non-ASCII text, missing or non-float timestamps)."""
    event_template, kinesis_template = _templates(shard_id, stream_arn, region)
    id_prefix = event_template["eventID"]
    new_event = event_template.copy
    new_kinesis = kinesis_template.copy
    events: list[dict[str, Any]] = []
    sequence_numbers: list[str] = []
    sizes: list[int] = []
    for item in items:
        sequence_number = item["SequenceNumber"]
        arrival = item.get("ApproximateArrivalTimestamp")
        if type(arrival) is not float:
            arrival = float(arrival or 0.0)
        kinesis = new_kinesis()
        kinesis["partitionKey"] = item["PartitionKey"]
        kinesis["sequenceNumber"] = sequence_number
        kinesis["data"] = item["Data"]
        kinesis["approximateArrivalTimestamp"] = arrival
        event = new_event()
        event["kinesis"] = kinesis
        event["eventID"] = id_prefix + sequence_number
        events.append(event)
        sequence_numbers.append(sequence_number)
        sizes.append(len(orjson.dumps(event)))
    return events, sequence_numbers, sizes, sum(sizes), _measured


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
