"""What every phase shares: timers, process stats, quiet logging, esm config and handlers."""

from __future__ import annotations

import contextlib
import gc
import io
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
HANDLERS_DIR = BENCH_DIR / "handlers"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

if str(HANDLERS_DIR) not in sys.path:
    sys.path.insert(0, str(HANDLERS_DIR))


def handlers() -> Any:
    import esm_bench_handlers

    return esm_bench_handlers


@dataclass
class Span:
    wall: float = 0.0
    cpu: float = 0.0
    """CPU seconds of this process (all threads, user + system)."""
    gc: float = 0.0
    """Seconds spent in Python's cyclic garbage collector (part of `cpu`)."""
    started: float = 0.0

    def elapsed(self) -> float:
        """Wall seconds since the span started (while it is still open)."""
        return time.perf_counter() - self.started


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _GcTimer:
    def __init__(self) -> None:
        self.total = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t0


@contextlib.contextmanager
def measure() -> Iterator[Span]:
    """Wall time, process CPU time and garbage-collector time of the block."""
    span = Span()
    timer = _GcTimer()
    gc.callbacks.append(timer)
    cpu0 = _process_cpu()
    span.started = time.perf_counter()
    try:
        yield span
    finally:
        span.wall = time.perf_counter() - span.started
        span.cpu = _process_cpu() - cpu0
        gc.callbacks.remove(timer)
        span.gc = timer.total


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included) from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE_SIZE


@contextlib.contextmanager
def quiet_esm_logging(level: str = "info") -> Iterator[None]:
    """esm's production logging (JSON events at INFO) rendered as usual, written to /dev/null,
    so the cost of logging stays in the figures but the table stays readable."""
    from esm.observability import configure_logging

    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed below
    real_stderr = sys.stderr
    sys.stderr = devnull
    try:
        configure_logging("json", level)
    finally:
        sys.stderr = real_stderr
    try:
        yield
    finally:
        sys.stderr = io.StringIO()
        try:
            configure_logging("json", "error")
        finally:
            sys.stderr = real_stderr
        devnull.close()


def esm_config(
    mappings: list[dict[str, Any]],
    *,
    endpoint: str | None = None,
    state_path: Path | None = None,
    handler: str = "esm_bench_handlers.count",
    function_timeout: float = 30,
) -> Any:
    """A validated esm Config (through the same parser the daemon uses)."""
    from esm.config import parse_config

    raw: dict[str, Any] = {
        "daemon": {"http_address": "127.0.0.1:0", "region": "us-east-1", "log_format": "json"},
        "functions": {
            "bench": {
                "handler": handler,
                "code_path": str(HANDLERS_DIR),
                "timeout": function_timeout,
            }
        },
        "mappings": mappings,
    }
    if endpoint is not None:
        raw["daemon"]["endpoint_url"] = endpoint
    if state_path is not None:
        raw["state"] = {"path": str(state_path)}
    return parse_config(raw)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def deadline_loop(timeout: float, interval: float = 0.05) -> Iterator[float]:
    """Yield elapsed seconds every `interval` until `timeout` (a bounded poll loop)."""
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed > timeout:
            return
        yield elapsed
        time.sleep(interval)
