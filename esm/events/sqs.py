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


USUAL_ATTRIBUTES = frozenset(FORWARDED_ATTRIBUTES[:4])
"""What SQS sends a standard queue's consumer asking for every system attribute, unless a
message has a trace header or came from a dead-letter queue's redrive: all forwarded."""
USUAL_ATTRIBUTE_COUNT = len(USUAL_ATTRIBUTES)
USUAL_MESSAGE_KEYS = 5
"""MessageId, ReceiptHandle, MD5OfBody, Body, Attributes: a message without message
attributes (which would add MessageAttributes and MD5OfMessageAttributes)."""


def sqs_records(
    messages: list[dict[str, Any]], *, queue_arn: str, region: str
) -> list[dict[str, Any]]:
    """A ReceiveMessage answer's messages as Lambda records, in order: `sqs_record` of
    each. This runs for every message received, so the usual message is built inline as
    dict literals; any other goes through `sqs_record`.

    The usual message is recognised by its counts and the lookups building it: exactly
    five keys that are MessageId, ReceiptHandle, MD5OfBody, Body and Attributes (so no
    message attributes), and four system attributes that are the usual four. A lookup that
    fails sends the message the long way; checking key sets up front cost more than
    building the rest of the record (bench/percall.py)."""
    records: list[dict[str, Any]] = []
    append = records.append
    for message in messages:
        if len(message) == USUAL_MESSAGE_KEYS:
            try:
                attributes = message["Attributes"]
                if len(attributes) == USUAL_ATTRIBUTE_COUNT:
                    append(
                        {
                            "messageId": message["MessageId"],
                            "receiptHandle": message["ReceiptHandle"],
                            "body": message["Body"],
                            "attributes": {
                                "ApproximateReceiveCount": attributes["ApproximateReceiveCount"],
                                "SentTimestamp": attributes["SentTimestamp"],
                                "SenderId": attributes["SenderId"],
                                "ApproximateFirstReceiveTimestamp": attributes[
                                    "ApproximateFirstReceiveTimestamp"
                                ],
                            },
                            "messageAttributes": {},
                            "md5OfMessageAttributes": None,
                            "md5OfBody": message["MD5OfBody"],
                            "eventSource": "aws:sqs",
                            "eventSourceARN": queue_arn,
                            "awsRegion": region,
                        }
                    )
                    continue
            except (KeyError, TypeError):  # not the usual keys (a trace header, ...)
                pass
        append(sqs_record(message, queue_arn=queue_arn, region=region))
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
