"""Handlers written for Lambda with Powertools for AWS Lambda, unchanged for esm.

Each one uses Powertools' batch utility (partial batch responses) and its Logger with
`inject_lambda_context`, which reads the context object's Lambda attributes. A record
whose payload starts with "flaky" fails the first time it is seen and succeeds after;
one starting with "poison" always fails. Every attempt appends a line
`<id> <function_request_id>` to RECORD_PATH.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
    DynamoDBRecord,
)
from aws_lambda_powertools.utilities.data_classes.kinesis_stream_event import (
    KinesisStreamRecord,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

logger = Logger(service="esm-powertools-test")
sqs_processor = BatchProcessor(event_type=EventType.SQS)
kinesis_processor = BatchProcessor(event_type=EventType.KinesisDataStreams)
dynamodb_processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


def _handle(item_id: str) -> None:
    request_id = logger.get_current_keys().get("function_request_id", "-")
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        f.write(f"{item_id} {request_id}\n")
    if item_id.startswith("poison"):
        raise ValueError(f"cannot process {item_id}")
    seen = Path(os.environ["RECORD_PATH"] + f".{item_id}.seen")
    if item_id.startswith("flaky") and not seen.exists():
        seen.touch()
        raise RuntimeError(f"{item_id} fails once")


def sqs_record(record: SQSRecord) -> None:
    _handle(record.body)


def kinesis_record(record: KinesisStreamRecord) -> None:
    _handle(record.kinesis.data_as_text())


def dynamodb_record(record: DynamoDBRecord) -> None:
    image = record.dynamodb.new_image if record.dynamodb else None
    _handle(str(image["id"]) if image else "-")


@logger.inject_lambda_context
def sqs_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=sqs_record, processor=sqs_processor, context=context
    )


@logger.inject_lambda_context
def kinesis_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=kinesis_record, processor=kinesis_processor, context=context
    )


@logger.inject_lambda_context
def dynamodb_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(
        event=event, record_handler=dynamodb_record, processor=dynamodb_processor, context=context
    )
