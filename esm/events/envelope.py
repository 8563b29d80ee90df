"""The `{"Records": [...]}` envelope Lambda wraps SQS, Kinesis and DynamoDB Streams batches
in (and S3 on-failure payloads store), built here only."""

from __future__ import annotations

from typing import Any


def records_envelope(records: list[Any]) -> dict[str, Any]:
    """The invocation event of a batch of SQS messages or stream records, in order."""
    return {"Records": records}
