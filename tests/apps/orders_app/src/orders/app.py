"""Writes each order from the queue to the table; an order marked poison fails alone."""

import json
import os

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from order_keys import order_key
from tabulate import tabulate

logger = Logger()
processor = BatchProcessor(event_type=EventType.SQS)
table = boto3.resource("dynamodb").Table(os.environ["TABLE_NAME"])


def record_handler(record):
    order = json.loads(record.body)
    if order.get("poison"):
        raise ValueError(f"order {order['id']} is poison")
    summary = tabulate([[order["id"], order["qty"]]], headers=["id", "qty"], tablefmt="plain")
    table.put_item(
        Item={
            "id": order_key(order["id"]),
            "qty": order["qty"],
            "summary": summary,
            "written_by": os.environ["AWS_LAMBDA_FUNCTION_NAME"],
        }
    )
    logger.info("order stored", extra={"order_id": order["id"]})


@logger.inject_lambda_context
def lambda_handler(event, context):
    return process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
