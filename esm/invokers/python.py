"""In-process Python functions: `module.function`, called the way Lambda's Python runtime does.

Sync handlers run in a worker thread (bounded per function), async ones are awaited. At
the timeout an async handler is cancelled; a sync handler's thread cannot be killed, so the
invocation is counted failed ("Task timed out after N.NN seconds") while the thread runs
on to its end. Use `kind = "process"` for isolation. Functions share the daemon's process:
their `environment` is applied to os.environ when loaded, and modules are shared.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import json
import os
import queue
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from esm.config import FunctionConfig
from esm.errors import HandlerLoadError
from esm.invocation import (
    MAX_RESPONSE_BYTES,
    FunctionFailure,
    InvocationResult,
    response_too_large,
)

DEFAULT_CONCURRENCY = 100
IDLE_THREAD_SECONDS = 10.0
"""A handler thread unused this long is stopped (the next invocation starts one)."""


class LambdaContext:
    """The `context` argument of a Lambda Python handler, with the same attribute names."""

    def __init__(self, function: FunctionConfig, request_id: str, deadline: float) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = str(function.memory_size)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = f"esm/{os.getpid()}"
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(function: FunctionConfig) -> Callable[..., Any]:
    """Import `module.function` with code_path first on sys.path, like LAMBDA_TASK_ROOT."""
    module_name, _, attribute = function.handler.rpartition(".")
    code_path = str(Path(function.code_path).resolve())
    if code_path not in sys.path:
        sys.path.insert(0, code_path)
    os.environ.update(function.environment)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise HandlerLoadError(
            f"function {function.name}: Unable to import module '{module_name}': {exc}"
        ) from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise HandlerLoadError(
            f"function {function.name}: Handler '{attribute}' missing on module '{module_name}'"
        )
    return handler  # type: ignore[no-any-return]


class PythonInvoker:
    def __init__(self, function: FunctionConfig) -> None:
        self.function = function
        self.name = function.name
        self.arn = function.arn
        self.timeout = function.timeout
        self._handler = load_handler(function)
        self._is_async = inspect.iscoroutinefunction(self._handler)
        self._slots = anyio.CapacityLimiter(
            function.reserved_concurrent_executions or DEFAULT_CONCURRENCY
        )
        self._threads = HandlerThreads(f"esm-{function.name}")

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        request_id = str(uuid.uuid4())
        started = time.monotonic()
        context = LambdaContext(self.function, request_id, started + self.timeout)
        response: Any = None
        failure: FunctionFailure | None = None
        with anyio.move_on_after(self.timeout) as scope:
            try:
                response = await self._call(event, context)
            except anyio.get_cancelled_exc_class():
                raise
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a handler is its error too
                # The function's own error, reported as Lambda does. SystemExit and
                # KeyboardInterrupt raised by a handler end its invocation, not the daemon.
                failure = _failure_from_exception(exc)
        duration = time.monotonic() - started
        if scope.cancelled_caught:
            failure = FunctionFailure(
                "Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"
            )
        elif failure is None:
            response, failure = _marshal(response)
        return InvocationResult(request_id, duration, response=response, failure=failure)

    async def _call(self, event: dict[str, Any], context: LambdaContext) -> Any:
        if self._is_async:
            return await self._handler(event, context)
        slots = self._slots
        try:
            slots.acquire_nowait()  # no scheduling round when a slot is free (the usual case)
        except anyio.WouldBlock:
            await slots.acquire()
        try:
            return await self._threads.run(self._handler, event, context)
        finally:
            slots.release()

    async def aclose(self) -> None:
        self._threads.close()


class HandlerThreads:
    """Worker threads for a sync handler: each call runs in an idle thread, or a new one.

    Same contract as `anyio.to_thread.run_sync(..., abandon_on_cancel=True)`: the call sees
    a copy of the caller's contextvars, its exception is raised in the caller, and a caller
    cancelled (the function's timeout) stops waiting while the thread runs on to its end.
    Leaner: no extra scheduling round, no cancel scope, a lock-free queue per thread; on
    this hot path anyio's hop cost ~140 us of CPU per invocation, this one ~40 us (bench/).
    Used from one event loop thread; the caller bounds concurrency (a CapacityLimiter)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._idle: deque[_HandlerThread] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.close()  # threads report to the loop that started them
            self._loop, self._closed = loop, False
        now = time.monotonic()
        idle = self._idle
        while idle and now - idle[0].idle_since >= IDLE_THREAD_SECONDS:
            idle.popleft().stop()
        worker = idle.pop() if idle else _HandlerThread(self._name, loop, self)
        future: asyncio.Future[Any] = loop.create_future()
        worker.jobs.put((future, contextvars.copy_context(), fn, args))
        return await future

    def finished(self, worker: _HandlerThread) -> None:
        """A thread's call ended (in the loop thread): it waits for the next one."""
        if self._closed or worker.loop is not self._loop:
            worker.stop()
        else:
            worker.idle_since = time.monotonic()
            self._idle.append(worker)

    def close(self) -> None:
        """Stop idle threads; threads still running a call stop when it ends."""
        self._closed = True
        while self._idle:
            self._idle.pop().stop()


_Job = tuple["asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple[Any, ...]]


class _HandlerThread(threading.Thread):
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, pool: HandlerThreads) -> None:
        super().__init__(name=name, daemon=True)
        self.loop = loop
        self.pool = pool
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.idle_since = 0.0
        self.start()

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, context, fn, args = job
            result: Any = None
            error: BaseException | None = None
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as anyio does
                error = exc
            try:
                self.loop.call_soon_threadsafe(self._report, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits any more
                return
            del job, future, context, fn, args, result, error

    def _report(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        self.pool.finished(self)
        if future.cancelled():
            return
        if error is None:
            future.set_result(result)
        elif isinstance(error, StopIteration):  # a future cannot hold StopIteration
            future.set_exception(RuntimeError(f"handler raised StopIteration: {error!r}"))
        else:
            future.set_exception(error)


def _failure_from_exception(exc: BaseException) -> FunctionFailure:
    frames = traceback.extract_tb(exc.__traceback__)
    return FunctionFailure(
        error_type=type(exc).__name__,
        error_message=str(exc),
        stack_trace=tuple(traceback.format_list(frames)),
    )


def _marshal(response: Any) -> tuple[Any, FunctionFailure | None]:
    """Lambda serialises the return value to JSON: what cannot be serialised (wrong types,
    nesting too deep) is Runtime.MarshalError, and more than 6 MB is too large."""
    if response is None or isinstance(response, int | float | bool):
        return response, None
    try:
        text = response if isinstance(response, str) else json.dumps(response)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, FunctionFailure("Runtime.MarshalError", f"Unable to marshal response: {exc}")
    if len(text.encode()) > MAX_RESPONSE_BYTES:
        return None, response_too_large()
    return (response if isinstance(response, str) else json.loads(text)), None
