"""Lambda's SQS event record, built from a ReceiveMessage message (botocore's parsed form).

Every key and its order follow AWS's recorded events: `md5OfMessageAttributes` is present
and null when a message has no attributes; binary attributes are base64; `body` is passed
through untouched; system attributes are the ones Lambda forwards.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

FORWARDED_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "AWSTraceHeader",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
)


def sqs_record(message: Mapping[str, Any], *, queue_arn: str, region: str) -> dict[str, Any]:
    message_attributes = message.get("MessageAttributes")
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": _forwarded(message.get("Attributes")),
        "messageAttributes": {
            name: _message_attribute(value) for name, value in message_attributes.items()
        }
        if message_attributes
        else {},
        "md5OfMessageAttributes": message.get("MD5OfMessageAttributes"),
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }


def sqs_records(
    messages: list[dict[str, Any]], *, queue_arn: str, region: str
) -> list[dict[str, Any]]:
    """A ReceiveMessage answer's messages as Lambda records, in order: `sqs_record` of
    each, with the usual message (no message attributes) built inline, as one dict
    literal, since this runs for every message received."""
    records: list[dict[str, Any]] = []
    append = records.append
    for message in messages:
        if message.get("MessageAttributes"):
            append(sqs_record(message, queue_arn=queue_arn, region=region))
            continue
        get = message.get
        append(
            {
                "messageId": message["MessageId"],
                "receiptHandle": message["ReceiptHandle"],
                "body": get("Body", ""),
                "attributes": _forwarded(get("Attributes")),
                "messageAttributes": {},
                "md5OfMessageAttributes": get("MD5OfMessageAttributes"),
                "md5OfBody": get("MD5OfBody"),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
        )
    return records


def _forwarded(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    """The system attributes Lambda forwards, in its order (a plain loop: this runs per
    message, and is cheaper than a filtered comprehension)."""
    forwarded: dict[str, Any] = {}
    if attributes:
        for name in FORWARDED_ATTRIBUTES:
            if name in attributes:
                forwarded[name] = attributes[name]
    return forwarded


def _message_attribute(value: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if "StringValue" in value:
        result["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        result["binaryValue"] = _b64(value["BinaryValue"])
    result["stringListValues"] = list(value.get("StringListValues") or [])
    result["binaryListValues"] = [_b64(v) for v in value.get("BinaryListValues") or []]
    result["dataType"] = value.get("DataType", "String")
    return result


def _b64(value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    return base64.b64encode(value).decode("ascii")
