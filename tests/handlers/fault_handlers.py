"""Handlers for the fault suite: append one id per record to RECORD_PATH, from any source.

The id is the SQS body, the decoded Kinesis data, or the DynamoDB item's `id` attribute,
so one file shows what every mapping handled, duplicates included.
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any


def record_id(record: dict[str, Any]) -> str:
    if "body" in record:
        return str(record["body"])
    if "kinesis" in record:
        return base64.b64decode(record["kinesis"]["data"]).decode()
    return str(record["dynamodb"]["NewImage"]["id"]["S"])


def write_ids(event: dict[str, Any], context: Any) -> None:
    lines = "".join(record_id(r) + "\n" for r in event["Records"])
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()
    seconds = float(os.environ.get("HANDLER_SLEEP", "0"))
    if seconds:
        time.sleep(seconds)
