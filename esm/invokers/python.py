"""In-process Python functions: `module.function`, called the way Lambda's Python runtime does.

Sync handlers run in a worker thread (bounded per function), async ones are awaited. At
the timeout an async handler is cancelled; a sync handler's thread cannot be killed, so the
invocation is counted failed ("Task timed out after N.NN seconds") while the thread runs
on to its end. Use `kind = "process"` for isolation. Functions share the daemon's process:
their `environment` is applied to os.environ when loaded, and modules are shared.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from esm.config import FunctionConfig
from esm.errors import HandlerLoadError
from esm.invocation import (
    MAX_RESPONSE_BYTES,
    FunctionFailure,
    InvocationResult,
    response_too_large,
)

DEFAULT_CONCURRENCY = 100


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
        self._threads = anyio.CapacityLimiter(
            function.reserved_concurrent_executions or DEFAULT_CONCURRENCY
        )

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
        return await anyio.to_thread.run_sync(
            self._handler, event, context, limiter=self._threads, abandon_on_cancel=True
        )

    async def aclose(self) -> None:
        return None


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
