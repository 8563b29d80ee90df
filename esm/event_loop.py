"""Which asyncio event loop the daemon runs on: uvloop where it is installed (esm[fast]),
asyncio's own otherwise, or when `ESM_EVENT_LOOP=asyncio` asks for it.

uvloop is a drop-in loop (libuv) that anyio selects through its backend options; it makes
each loop iteration cheaper, which is what thousands of idle shard reads and SQS long polls
mostly are (bench/percall.py measures esm's CPU per AWS call on both loops).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from esm.errors import ConfigError

EVENT_LOOP_ENV = "ESM_EVENT_LOOP"
EVENT_LOOPS = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def choice() -> str:
    """The loop to use: "uvloop" or "asyncio"; a bad ESM_EVENT_LOOP is a ConfigError (which
    `esm run` prints as one line, like any configuration problem)."""
    wanted = os.environ.get(EVENT_LOOP_ENV, "auto").strip().lower() or "auto"
    if wanted not in EVENT_LOOPS:
        raise ConfigError([f"{EVENT_LOOP_ENV}={wanted!r} is not one of {', '.join(EVENT_LOOPS)}"])
    available = importlib.util.find_spec("uvloop") is not None
    if wanted == "uvloop" and not available:
        raise ConfigError(
            [f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed (pip install 'esm[fast]')"]
        )
    if wanted == "asyncio" or not available:
        return "asyncio"
    return "uvloop"


def backend_options() -> dict[str, Any]:
    """anyio.run's backend options for the chosen loop."""
    return {"use_uvloop": choice() == "uvloop"}


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """anyio.run on the chosen loop: the daemon's entry point calls this."""
    return anyio.run(fn, *args, backend="asyncio", backend_options=backend_options())
