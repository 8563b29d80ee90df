"""Handlers for the Kafka runtime tests, imported in-process (code_path = tests/kafka).

Each records every event it gets per topic so a test reads them back; behaviour is chosen
by the record value, the way a real function would decide.
"""

from __future__ import annotations

import base64
import threading
from collections import defaultdict
from typing import Any

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.kafka_event import KafkaEventRecord

EVENTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
FAILS_LEFT: dict[str, int] = {}
"""value -> how many more invocations containing it fail (set by a test)."""
GATES: dict[str, threading.Event] = {}
"""value -> an event the first invocation containing it waits for before failing."""
HOLDS: dict[str, tuple[threading.Event, threading.Event]] = {}
"""value -> (set when an invocation holding it starts, what it waits for to succeed)."""
_lock = threading.Lock()


def _topic(event: dict[str, Any]) -> str:
    first = next(iter(event["records"].values()))
    return str(first[0]["topic"])


def events_for(topic: str) -> list[dict[str, Any]]:
    with _lock:
        return list(EVENTS[topic])


def values_for(topic: str) -> list[tuple[int, int, bytes]]:
    """(partition, offset, value) of every record delivered, in delivery order."""
    return [
        (r["partition"], r["offset"], base64.b64decode(r["value"]))
        for event in events_for(topic)
        for records in event["records"].values()
        for r in records
    ]


def record(event: dict[str, Any], context: Any) -> None:
    with _lock:
        EVENTS[_topic(event)].append(event)
        values = [
            base64.b64decode(r["value"]).decode()
            for records in event["records"].values()
            for r in records
        ]
        failing = [v for v in values if FAILS_LEFT.get(v, 0) > 0]
        for v in failing:
            FAILS_LEFT[v] -= 1
    if failing:
        raise RuntimeError(f"poison record {failing[0]}")


def gated(event: dict[str, Any], context: Any) -> None:
    """Record the event; if it holds a gated value, wait for the test's go, then fail once."""
    with _lock:
        EVENTS[_topic(event)].append(event)
        gates = [
            GATES.pop(base64.b64decode(r["value"]).decode(), None)
            for records in event["records"].values()
            for r in records
        ]
    gate = next((g for g in gates if g is not None), None)
    if gate is not None:
        gate.wait(timeout=50)
        raise RuntimeError("gated record fails once")


def held(event: dict[str, Any], context: Any) -> None:
    """`record`; an invocation holding a value of HOLDS says so and waits for the test's go."""
    record(event, context)
    for records in event["records"].values():
        for r in records:
            with _lock:
                hold = HOLDS.pop(base64.b64decode(r["value"]).decode(), None)
            if hold is not None:
                entered, release = hold
                entered.set()
                release.wait(timeout=50)


_processor = BatchProcessor(event_type=EventType.Kafka)


def _handle(record: KafkaEventRecord) -> None:
    value = record.decoded_value.decode()
    with _lock:
        left = FAILS_LEFT.get(value, 0)
        if left > 0:
            FAILS_LEFT[value] = left - 1
    if left > 0:
        raise ValueError(f"cannot handle {value}")


def powertools(event: dict[str, Any], context: Any) -> dict[str, Any]:
    with _lock:
        EVENTS[_topic(event)].append(event)
    return process_partial_response(
        event=event, record_handler=_handle, processor=_processor, context=context
    )


def append_to_file(event: dict[str, Any], context: Any) -> None:
    """Writes `partition offset value` per record to $KAFKA_RECORD_FILE as it handles it,
    slowly ($KAFKA_RECORD_DELAY seconds a record, default 0.005), so a test can SIGKILL or
    SIGSTOP the process in the middle of a batch."""
    import os
    import time

    delay = float(os.environ.get("KAFKA_RECORD_DELAY", "0.005"))

    with open(os.environ["KAFKA_RECORD_FILE"], "a", encoding="utf-8") as out:
        for records in event["records"].values():
            for r in records:
                value = base64.b64decode(r["value"]).decode()
                out.write(f"{r['partition']} {r['offset']} {value}\n")
                out.flush()
                time.sleep(delay)


def record_slowly(event: dict[str, Any], context: Any) -> None:
    """`record`, then 50 ms of work: a drain lasts long enough for faults to land mid-batch."""
    import time

    record(event, context)
    time.sleep(0.05)
