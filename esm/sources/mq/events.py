"""The events Lambda hands a function for Amazon MQ mappings, built from broker messages.

Pure shaping: no I/O, no acknowledgement. The shapes follow Lambda's sample events and
recordings of real Amazon MQ invocations (Lambda guide "Using Lambda with Amazon MQ";
aws-lambda-go's recorded `activemq-event.json`) and are checked against Powertools'
`RabbitMQEvent` / `ActiveMQEvent` in tests/mq:

- RabbitMQ: `{"eventSource": "aws:rmq", "eventSourceArn", "rmqMessagesByQueue":
  {"<queue>::<virtual host>": [{"basicProperties", "redelivered", "data"}]}}`. Lambda reads
  the broker with the Java AMQP client and serialises its values as that client holds
  them: a string header is `{"bytes": [...]}` (a LongString), `timestamp` is a date in
  Java's medium format ("Jan 1, 1970, 12:33:41 AM", UTC), absent properties are null,
  `bodySize` is the body's length in bytes.
- ActiveMQ: `{"eventSource": "aws:mq", "eventSourceArn", "messages": [...]}` with the JMS
  fields of each message: `messageID`, `messageType` (`jms/text-message` or
  `jms/bytes-message`), `timestamp`, `deliveryMode` (1 non-persistent, 2 persistent),
  `correlationID`, `replyTo` (the string "null" when unset, as recorded), `destination`
  {`physicalName`}, `redelivered`, `type`, `expiration`, `priority`, `data` (base64),
  `brokerInTime`, `brokerOutTime` (milliseconds) and `properties` (string values).
  esm reads ActiveMQ over STOMP, which carries these as frame headers; STOMP has no
  broker-in time, so `brokerInTime` is the broker's `timestamp` header and `brokerOutTime`
  the moment esm received the frame.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

RABBITMQ_EVENT_SOURCE: Final = "aws:rmq"
ACTIVEMQ_EVENT_SOURCE: Final = "aws:mq"
TEXT_MESSAGE: Final = "jms/text-message"
BYTES_MESSAGE: Final = "jms/bytes-message"


def rabbitmq_key(queue: str, virtual_host: str) -> str:
    """`rmqMessagesByQueue`'s key: `"<queue>::<virtual host>"`."""
    return f"{queue}::{virtual_host}"


def rabbitmq_message(properties: Any, body: bytes, redelivered: bool) -> dict[str, Any]:
    """One entry of `rmqMessagesByQueue[...]`, from a delivery's AMQP basic properties
    (pamqp's `Basic.Properties`: content_type, headers, message_type, timestamp...)."""
    headers = properties.headers
    return {
        "basicProperties": {
            "contentType": properties.content_type,
            "contentEncoding": properties.content_encoding,
            "headers": _java_value(dict(headers)) if headers is not None else None,
            "deliveryMode": properties.delivery_mode,
            "priority": properties.priority,
            "correlationId": properties.correlation_id,
            "replyTo": properties.reply_to,
            "expiration": properties.expiration,
            "messageId": properties.message_id,
            "timestamp": java_date(properties.timestamp) if properties.timestamp else None,
            "type": properties.message_type,
            "userId": properties.user_id,
            "appId": properties.app_id,
            "clusterId": properties.cluster_id,
            "bodySize": len(body),
        },
        "redelivered": redelivered,
        "data": base64.b64encode(body).decode("ascii"),
    }


def rabbitmq_event(
    arn: str, queue: str, virtual_host: str, messages: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "eventSource": RABBITMQ_EVENT_SOURCE,
        "eventSourceArn": arn,
        "rmqMessagesByQueue": {rabbitmq_key(queue, virtual_host): list(messages)},
    }


def java_date(moment: datetime) -> str:
    """A date as Lambda's RabbitMQ events print it: Java's medium date-time format, UTC."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    hour = utc.hour % 12 or 12
    half = "AM" if utc.hour < 12 else "PM"
    return f"{utc:%b} {utc.day}, {utc.year}, {hour}:{utc:%M:%S} {half}"


def _java_value(value: Any) -> Any:
    """A header value as the Java client holds it, in JSON: strings are LongStrings."""
    if isinstance(value, str):
        return {"bytes": list(value.encode("utf-8"))}
    if isinstance(value, bytes | bytearray):
        return {"bytes": list(value)}
    if isinstance(value, Mapping):
        return {str(k): _java_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_java_value(v) for v in value]
    if isinstance(value, datetime):
        return java_date(value)
    if isinstance(value, Decimal):
        return float(value)
    return value


STOMP_HEADERS: Final = frozenset(
    {
        "message-id",
        "destination",
        "subscription",
        "ack",
        "content-length",
        "content-type",
        "timestamp",
        "expires",
        "priority",
        "persistent",
        "correlation-id",
        "reply-to",
        "type",
        "redelivered",
        "receipt",
        "transformation",
    }
)
"""STOMP frame headers that carry JMS fields; every other header is a message property."""


def activemq_message(headers: Mapping[str, str], body: bytes, received_ms: int) -> dict[str, Any]:
    """One entry of an ActiveMQ event's `messages`, from a STOMP MESSAGE frame."""
    timestamp = _int(headers.get("timestamp"))
    return {
        "messageID": headers.get("message-id", ""),
        "messageType": BYTES_MESSAGE if "content-length" in headers else TEXT_MESSAGE,
        "timestamp": timestamp,
        "deliveryMode": 2 if headers.get("persistent") == "true" else 1,
        "correlationID": headers.get("correlation-id", ""),
        "replyTo": _physical_name(headers["reply-to"]) if "reply-to" in headers else "null",
        "destination": {"physicalName": _physical_name(headers.get("destination", ""))},
        "redelivered": headers.get("redelivered") == "true",
        "type": headers.get("type", ""),
        "expiration": _int(headers.get("expires")),
        "priority": _int(headers.get("priority")),
        "data": base64.b64encode(body).decode("ascii"),
        "brokerInTime": timestamp,
        "brokerOutTime": received_ms,
        "properties": {k: v for k, v in headers.items() if k not in STOMP_HEADERS},
    }


def activemq_event(arn: str, messages: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"eventSource": ACTIVEMQ_EVENT_SOURCE, "eventSourceArn": arn, "messages": list(messages)}


def broker_event(
    engine: str, arn: str, queue: str, virtual_host: str, messages: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """A batch's event for either engine (the registry's envelope; each session builds
    its own engine's directly)."""
    if engine == "rabbitmq":
        return rabbitmq_event(arn, queue, virtual_host, messages)
    return activemq_event(arn, messages)


def _physical_name(destination: str) -> str:
    """`/queue/orders` -> `orders`: JMS names a destination without STOMP's prefix."""
    for prefix in ("/queue/", "/topic/", "/temp-queue/", "/temp-topic/"):
        if destination.startswith(prefix):
            return destination[len(prefix) :]
    return destination


def _int(text: str | None) -> int:
    try:
        return int(text) if text else 0
    except ValueError:
        return 0
