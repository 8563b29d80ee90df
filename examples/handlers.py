"""Sample handlers, written exactly as for AWS Lambda (used by config.example.toml and `esm demo`)."""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Process an SQS batch; report messages whose body is not JSON as failed items."""
    failures = []
    for record in event["Records"]:
        try:
            json.loads(record["body"])
        except ValueError:
            failures.append({"itemIdentifier": record["messageId"]})
    return {"batchItemFailures": failures}
