"""Sample handlers, written exactly as for AWS Lambda (used by config.example.toml, `esm demo`,
the sidecar example app and the deploy/ examples).

- `handle`: SQS orders; reports messages whose body is not JSON as failed items
  (ReportBatchItemFailures), so only those are retried and end in the queue's DLQ.
- `readings`: Kinesis sensor readings; a reading whose `celsius` is not a number raises,
  failing the whole batch, which is what makes `bisect_batch_on_function_error`, retries
  and the on-failure destination visible in `esm demo`.
- `table_changes`: DynamoDB Streams; counts INSERT / MODIFY / REMOVE records.
"""

from __future__ import annotations

import base64
import json
import logging
from collections import Counter
from typing import Any

logger = logging.getLogger(__name__)


class InvalidReading(ValueError):
    """A sensor reading without a numeric temperature."""


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Process an SQS batch; report messages whose body is not JSON as failed items."""
    failures = []
    for record in event["Records"]:
        try:
            json.loads(record["body"])
        except ValueError:
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}


def readings(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Average the readings of a Kinesis batch; raise on an invalid one (the whole batch fails)."""
    temperatures = []
    for record in event["Records"]:
        reading = json.loads(base64.b64decode(record["kinesis"]["data"]))
        celsius = reading.get("celsius")
        if not isinstance(celsius, int | float):
            raise InvalidReading(
                f"sensor {reading.get('sensor')}: celsius is {celsius!r}, not a number"
                f" (sequence number {record['kinesis']['sequenceNumber']})"
            )
        temperatures.append(celsius)
    return {"readings": len(temperatures), "average": sum(temperatures) / len(temperatures)}


def table_changes(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Count the kinds of change in a DynamoDB Streams batch."""
    return dict(Counter(record["eventName"] for record in event["Records"]))
