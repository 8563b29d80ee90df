"""Handlers for the broker-queue tests, imported in-process (code_path = tests/mq).

Each records the events it got per eventSourceArn. Behaviour is chosen by the message data,
as a real function decides: a body containing "fail" raises, "slow" sleeps a second.
When MQ_HANDLED_FILE is set (the SIGKILL test's subprocess) every handled body is
appended to that file, one per line, after the batch succeeded.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import defaultdict
from typing import Any

EVENTS: dict[str, list[dict[str, Any]]] = defaultdict(list)
_lock = threading.Lock()


def messages_of(event: dict[str, Any]) -> list[dict[str, Any]]:
    if "rmqMessagesByQueue" in event:
        return [m for ms in event["rmqMessagesByQueue"].values() for m in ms]
    return list(event["messages"])


def bodies(event: dict[str, Any]) -> list[str]:
    return [base64.b64decode(m["data"]).decode() for m in messages_of(event)]


def events_for(arn: str) -> list[dict[str, Any]]:
    with _lock:
        return list(EVENTS[arn])


def bodies_for(arn: str) -> list[str]:
    return [b for e in events_for(arn) for b in bodies(e)]


def record(event: dict[str, Any], context: Any) -> None:
    with _lock:
        EVENTS[event["eventSourceArn"]].append(event)
    texts = bodies(event)
    if any("slow" in t for t in texts):
        time.sleep(1.0)
    if any("fail" in t for t in texts):
        raise RuntimeError("a message asked to fail")
    path = os.environ.get("MQ_HANDLED_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(t + "\n" for t in texts))


_running = 0
MAX_RUNNING: dict[str, int] = defaultdict(int)


def record_concurrency(event: dict[str, Any], context: Any) -> None:
    """Like `record`, and tracks how many invocations ran at once per eventSourceArn."""
    global _running
    arn = event["eventSourceArn"]
    with _lock:
        _running += 1
        MAX_RUNNING[arn] = max(MAX_RUNNING[arn], _running)
    try:
        time.sleep(0.5)
        record(event, context)
    finally:
        with _lock:
            _running -= 1
