"""Handlers the benchmarks invoke in-process (code_path = bench/handlers).

`count` is the no-op handler of the throughput figures: it only adds the batch's size to a
counter (one lock per batch) so a run can check that every record arrived. `stamp` notes
the time it started and the records it got, for the latency figure. Both are sync, as
most Lambda Python handlers are, so esm runs them in a worker thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any

_lock = threading.Lock()
RECORDS = 0
BATCHES = 0
LAST_AT = 0.0
"""`time.perf_counter()` when `count` last finished a batch: a drain's clock stops there,
not when a waiting loop next looks."""
STAMPS: list[tuple[float, list[dict[str, Any]]]] = []


def reset() -> None:
    global RECORDS, BATCHES, LAST_AT
    with _lock:
        RECORDS = 0
        BATCHES = 0
        LAST_AT = 0.0
        STAMPS.clear()


def count(event: dict[str, Any], context: Any) -> None:
    global RECORDS, BATCHES, LAST_AT
    n = len(event["Records"])
    with _lock:
        RECORDS += n
        BATCHES += 1
        LAST_AT = time.perf_counter()


IN_FLIGHT = 0
"""Batches `hold` is running now: the concurrency the SQS ramp figure plots."""


async def hold(event: dict[str, Any], context: Any) -> None:
    """An async handler that takes a second per batch, so concurrency is what the scaling
    gives it (sleeping in the event loop: hundreds at once need no threads)."""
    global IN_FLIGHT, RECORDS, BATCHES
    import asyncio

    IN_FLIGHT += 1
    try:
        await asyncio.sleep(HOLD_SECONDS)
    finally:
        IN_FLIGHT -= 1
    RECORDS += len(event["Records"])
    BATCHES += 1


HOLD_SECONDS = 1.0


def noop(event: dict[str, Any], context: Any) -> None:
    return None


def stamp(event: dict[str, Any], context: Any) -> None:
    started = time.time()
    STAMPS.append((started, event["Records"]))
