"""Handlers used by the tests, imported by the daemon in-process (code_path = tests/handlers).

Each records the events it got in EVENTS (per queue ARN) so a test can read them back.
Behaviour is chosen by the message body, the way a real function would decide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from collections import defaultdict
from typing import Any

EVENTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
CONTEXTS: list[dict[str, Any]] = []
_lock = threading.Lock()


def _record(event: dict[str, Any]) -> None:
    with _lock:
        EVENTS[event["Records"][0]["eventSourceARN"]].append(event)


def events_for(arn: str) -> list[dict[str, Any]]:
    with _lock:
        return list(EVENTS[arn])


def bodies_for(arn: str) -> list[str]:
    return [r["body"] for e in events_for(arn) for r in e["Records"]]


def record(event: dict[str, Any], context: Any) -> None:
    _record(event)
    CONTEXTS.append(
        {
            "function_name": context.function_name,
            "aws_request_id": context.aws_request_id,
            "remaining": context.get_remaining_time_in_millis(),
            "memory_limit_in_mb": context.memory_limit_in_mb,
            "invoked_function_arn": context.invoked_function_arn,
            "env": os.environ.get("ESM_TEST_ENV"),
        }
    )


async def record_async(event: dict[str, Any], context: Any) -> None:
    await asyncio.sleep(0)
    _record(event)


def fail_on_poison(event: dict[str, Any], context: Any) -> None:
    """Raise when any message body contains 'poison' (the whole batch fails)."""
    _record(event)
    if any("poison" in r["body"] for r in event["Records"]):
        raise ValueError("poison message in batch")


def report_failures(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """ReportBatchItemFailures: report every message whose body contains 'fail'."""
    _record(event)
    return {
        "batchItemFailures": [
            {"itemIdentifier": r["messageId"]} for r in event["Records"] if "fail" in r["body"]
        ]
    }


def malformed_response(event: dict[str, Any], context: Any) -> Any:
    """Answer with what the first body says, parsed as JSON (a hostile partial response)."""
    _record(event)
    return json.loads(event["Records"][0]["body"])["response"]


def sleep_then_record(event: dict[str, Any], context: Any) -> None:
    seconds = float(json.loads(event["Records"][0]["body"]).get("sleep", 0))
    time.sleep(seconds)
    _record(event)


async def hang_async(event: dict[str, Any], context: Any) -> None:
    _record(event)
    await asyncio.sleep(3600)


def write_to_file(event: dict[str, Any], context: Any) -> None:
    """For daemons run as subprocesses: append each body to the file in RECORD_PATH."""
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for r in event["Records"]:
            f.write(json.dumps({"body": r["body"], "messageId": r["messageId"]}) + "\n")
    seconds = float(os.environ.get("HANDLER_SLEEP", "0"))
    if seconds:
        time.sleep(seconds)


def write_broker_messages_to_file(event: dict[str, Any], context: Any) -> None:
    """For daemons run as subprocesses with Amazon MQ mappings: append each message's
    decoded data (RabbitMQ's `rmqMessagesByQueue` or ActiveMQ's `messages`) to the file in
    RECORD_PATH, with the event's source, after the whole batch was read."""
    if "rmqMessagesByQueue" in event:
        messages = [m for ms in event["rmqMessagesByQueue"].values() for m in ms]
    else:
        messages = list(event["messages"])
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for m in messages:
            body = base64.b64decode(m["data"]).decode()
            f.write(json.dumps({"body": body, "eventSource": event["eventSource"]}) + "\n")


class ConcurrencyGauge:
    """Counts invocations running at once, to check maximum_concurrency is honoured."""

    def __init__(self) -> None:
        self.now = 0
        self.high_water = 0
        self.lock = threading.Lock()

    def __enter__(self) -> None:
        with self.lock:
            self.now += 1
            self.high_water = max(self.high_water, self.now)

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.now -= 1


CONCURRENCY = ConcurrencyGauge()


def slow_counted(event: dict[str, Any], context: Any) -> None:
    with CONCURRENCY:
        time.sleep(0.3)
    _record(event)


def kinesis_data(record: dict[str, Any]) -> str:
    import base64

    return base64.b64decode(record["kinesis"]["data"]).decode()


def stream_fail_on_poison(event: dict[str, Any], context: Any) -> None:
    """Streams: raise when any record's data contains 'poison'."""
    _record(event)
    if any("poison" in kinesis_data(r) for r in event["Records"]):
        raise ValueError("poison record in batch")


def stream_report_failures(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Streams: report records whose data contains 'fail' (by sequence number)."""
    _record(event)
    return {
        "batchItemFailures": [
            {"itemIdentifier": r["kinesis"]["sequenceNumber"]}
            for r in event["Records"]
            if "fail" in kinesis_data(r)
        ]
    }


def stream_fail_lane_of_key(event: dict[str, Any], context: Any) -> None:
    """Streams: fail every batch that holds a record with partition key 'stuck'."""
    _record(event)
    if any(r["kinesis"]["partitionKey"] == "stuck" for r in event["Records"]):
        raise RuntimeError("this key's lane is blocked")


def stream_write_to_file(event: dict[str, Any], context: Any) -> None:
    """For stream daemons run as subprocesses: append each record's data to RECORD_PATH."""
    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for r in event["Records"]:
            f.write(kinesis_data(r) + "\n")
    seconds = float(os.environ.get("HANDLER_SLEEP", "0"))
    if seconds:
        time.sleep(seconds)


WINDOW_EVENTS: dict[str, list[dict[str, Any]]] = defaultdict(list)


def count_per_key_in_window(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Tumbling windows: count records per partition key; remember every invocation."""
    with _lock:
        WINDOW_EVENTS[event["eventSourceARN"]].append(event)
    state = dict(event["state"])
    for r in event["Records"]:
        key = r["kinesis"]["partitionKey"]
        state[key] = state.get(key, 0) + 1
    return {"state": state}


def window_events_for(arn: str) -> list[dict[str, Any]]:
    with _lock:
        return list(WINDOW_EVENTS[arn])


def window_without_state(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Tumbling windows: forget to return `state` (Lambda counts that as a failure)."""
    with _lock:
        WINDOW_EVENTS[event["eventSourceARN"]].append(event)
    return {"batchItemFailures": []}


def kafka_write_to_file(event: dict[str, Any], context: Any) -> None:
    """For daemons run as subprocesses with a Kafka mapping: append `partition offset value`
    per record (value base64-decoded, as Lambda's Kafka event carries it) to RECORD_PATH."""
    import base64

    with open(os.environ["RECORD_PATH"], "a", encoding="utf-8") as f:
        for records in event["records"].values():
            for r in records:
                value = base64.b64decode(r["value"]).decode()
                f.write(f"{r['partition']} {r['offset']} {value}\n")


def kafka_fail_on_poison(event: dict[str, Any], context: Any) -> None:
    """`kafka_write_to_file`, then raise when any record's value contains 'poison'."""
    import base64

    kafka_write_to_file(event, context)
    values = [base64.b64decode(r["value"]) for rs in event["records"].values() for r in rs]
    if any(b"poison" in v for v in values):
        raise ValueError("poison record in batch")
