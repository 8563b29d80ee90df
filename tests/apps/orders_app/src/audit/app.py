"""Audits every new order in the table's stream to the audit queue."""

import json
import os

import boto3
import humanize
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)

logger = Logger()
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
sqs = boto3.client("sqs")
QUEUE_URL = os.environ["AUDIT_QUEUE_URL"]


def record_handler(record):
    image = record.dynamodb.new_image
    sqs.send_message(
        QueueUrl=QUEUE_URL,
        MessageBody=json.dumps(
            {
                "key": image["id"],
                "qty": humanize.intcomma(int(image["qty"])),
                "audited_by": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
                "table_env": os.environ.get("TABLE_NAME"),
            }
        ),
    )


@logger.inject_lambda_context
def lambda_handler(event, context):
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
