"""A handler as SAM samples write it: the SDK client is created at import time, with no
region or endpoint in the code (Lambda's environment supplies both)."""

import os

import boto3

table = boto3.resource("dynamodb").Table(os.environ["TABLE_NAME"])
ENVIRONMENT_AT_INIT = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "_", "LAMBDA"))}


def lambda_handler(event, context):  # type: ignore[no-untyped-def]
    for record in event["Records"]:
        table.put_item(Item={"id": record["messageId"], "body": record["body"]})
    return {}


def environment(event, context):  # type: ignore[no-untyped-def]
    """What Lambda's environment looks like to the handler, at init and per invocation."""
    names = (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_LAMBDA_FUNCTION_NAME",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
        "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_LOG_GROUP_NAME",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "_HANDLER",
        "LAMBDA_TASK_ROOT",
        "AWS_EXECUTION_ENV",
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "_X_AMZN_TRACE_ID",
    )
    return {"now": {n: os.environ.get(n) for n in names}, "init": ENVIRONMENT_AT_INIT}
