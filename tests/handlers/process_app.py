"""Handlers run inside execution environments (kind = "process"), in their own processes.

They cannot share memory with the test, so they answer with what they saw (pid, context,
environment) or append it to the file named by RECORD_PATH. Behaviour is chosen by the
event, the way a real function would decide.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

ENV_KEYS = (
    "_HANDLER",
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_REGION",
    "LAMBDA_TASK_ROOT",
    "TMPDIR",
    "ESM_TEST_ENV",
    "ESM_TEST_SECRET",
)


def _context(context: Any) -> dict[str, Any]:
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": str(context.memory_limit_in_mb),
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "remaining": context.get_remaining_time_in_millis(),
    }


def echo(event: Any, context: Any) -> dict[str, Any]:
    """Answer with the event and what the environment looks like from inside."""
    return {
        "event": event,
        "pid": os.getpid(),
        "context": _context(context),
        "env": {key: os.environ.get(key) for key in ENV_KEYS},
        "cwd": os.getcwd(),
    }


async def echo_async(event: Any, context: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return echo(event, context)


def behave(event: Any, context: Any) -> Any:
    """Do what the event says: sleep, crash, raise, allocate, print, or answer a value."""
    if "sleep" in event:
        time.sleep(event["sleep"])
    if event.get("crash"):
        os._exit(event["crash"])
    if "raise" in event:
        raise ValueError(event["raise"])
    if "allocate_mb" in event:
        block = bytearray(event["allocate_mb"] * 1024 * 1024)
        return len(block)
    if "print" in event:
        print(event["print"])
    if "write_tmp" in event:
        path = os.path.join(os.environ["TMPDIR"], "scratch")
        with open(path, "w", encoding="utf-8") as f:
            f.write(event["write_tmp"])
        return {"path": path, "pid": os.getpid()}
    return event.get("answer", {"pid": os.getpid()})


def _record(event: dict[str, Any], context: Any) -> None:
    line = {
        "bodies": [r["body"] for r in event["Records"]],
        "receive_counts": [r["attributes"]["ApproximateReceiveCount"] for r in event["Records"]],
        "pid": os.getpid(),
        "request_id": context.aws_request_id,
    }
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


def sqs_report_failures(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """SQS: record the batch, report every message whose body contains 'fail'."""
    _record(event, context)
    return {
        "batchItemFailures": [
            {"itemIdentifier": r["messageId"]} for r in event["Records"] if "fail" in r["body"]
        ]
    }


def sqs_sleep_on_first_receive(event: dict[str, Any], context: Any) -> None:
    """SQS: a message whose body is 'sleep' hangs on its first delivery, then succeeds."""
    _record(event, context)
    for record in event["Records"]:
        if record["body"] == "sleep" and record["attributes"]["ApproximateReceiveCount"] == "1":
            time.sleep(600)
