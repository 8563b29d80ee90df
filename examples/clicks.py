"""Sample Kafka handler, written exactly as for AWS Lambda (used by `esm demo`'s Kafka source).

- `handler`: page views from a Kafka topic (self-managed Kafka or MSK): records come per
  `<topic>-<partition>` with base64 values; counts the views per page.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any


def handler(event: dict[str, Any], context: Any) -> dict[str, int]:
    """Count page views in a Kafka batch."""
    pages: Counter[str] = Counter()
    for records in event["records"].values():
        for record in records:
            pages[json.loads(base64.b64decode(record["value"]))["page"]] += 1
    return dict(pages)
