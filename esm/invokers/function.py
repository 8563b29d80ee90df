"""Functions at run time: one invoker per [functions.*] entry, metered the same way for all kinds.

Sources call `Function.invoke`; it counts Invocations / Errors / Throttles, times Duration
and tracks ConcurrentExecutions (AWS's per-function metrics), whatever the kind. It also
owns the two rules every kind shares:

- `reserved_concurrent_executions` caps the invocations of the function running at once,
  across every mapping that uses it. An invocation that finds no free slot is a throttle
  (counted) and waits for one;
- a throttle (no slot, or the invoker reports one: HTTP 429/503, Lambda's
  TooManyRequestsException, an unreachable endpoint) is retried here with full-jitter
  exponential backoff and never counted as an invocation or error. Retrying stops after
  the throttle budget (the function's timeout, at least THROTTLE_BUDGET_MIN seconds) and
  hands the source a throttled result, which streams retry without using up
  maximum_retry_attempts and SQS leaves in the queue: never dropped.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Mapping
from typing import Any

import anyio

from esm.config import DaemonConfig, FunctionConfig
from esm.errors import HandlerLoadError
from esm.invokers.result import InvocationResult, Invoker
from esm.observability import Metrics, get_logger

log = get_logger("esm.functions")

THROTTLE_BACKOFF_INITIAL = 0.05
THROTTLE_BACKOFF_MAX = 2.0
THROTTLE_BUDGET_MIN = 1.0


def create_invoker(config: FunctionConfig, daemon: DaemonConfig | None = None) -> Invoker:
    """Build the invoker of a function; nothing starts until its first invocation."""
    region = _region(daemon)
    if config.kind == "python":
        from esm.invokers.python import PythonInvoker

        return PythonInvoker(config, daemon)
    if config.kind == "process":
        from esm.invokers.process import ProcessInvoker

        return ProcessInvoker(config, region, daemon=daemon)
    if config.kind == "http":
        from esm.invokers.http import HttpInvoker

        return HttpInvoker(config)
    if config.kind == "lambda":
        from esm.invokers.lambda_ import LambdaInvoker

        return LambdaInvoker(
            config,
            daemon.region if daemon is not None else None,
            daemon.endpoint_url if daemon is not None else None,
        )
    raise HandlerLoadError(f"function {config.name}: kind {config.kind!r} is not supported")


def function_concurrency(config: FunctionConfig) -> int | None:
    """reserved_concurrent_executions, or the kind's own cap (process environments)."""
    if config.reserved_concurrent_executions is not None:
        return config.reserved_concurrent_executions
    if config.kind == "process":
        from esm.invokers.process import DEFAULT_CONCURRENCY

        return DEFAULT_CONCURRENCY
    return None


def _region(daemon: DaemonConfig | None) -> str:
    if daemon is not None:
        return daemon.region
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


class Function:
    """An invoker plus its metrics; shared by every mapping that names the function."""

    def __init__(self, invoker: Invoker, metrics: Metrics, concurrency: int | None = None) -> None:
        self.invoker = invoker
        self.concurrency = concurrency
        """reserved_concurrent_executions: caps SQS receivers when maximum_concurrency is unset."""
        self.name = invoker.name
        self.arn = invoker.arn
        self.timeout = invoker.timeout
        self.throttle_budget = max(THROTTLE_BUDGET_MIN, self.timeout)
        self._slots = anyio.CapacityLimiter(concurrency) if concurrency else None
        self._invocations = metrics.invocations.labels(self.name)
        self._errors = metrics.errors.labels(self.name)
        self._throttles = metrics.throttles.labels(self.name)
        self._duration = metrics.duration.labels(self.name)
        self._concurrent = metrics.concurrent.labels(self.name)
        self._log = log.bind(function=self.name)
        hung = getattr(invoker, "hung_threads", None)
        if isinstance(hung, int):  # in-process sync handlers: threads that timed out
            metrics.hung_threads.labels(self.name).set_function(
                lambda: float(getattr(invoker, "hung_threads", 0))
            )

    @property
    def unhealthy(self) -> str | None:
        """Why the function cannot run invocations now (its invoker says), else None."""
        reason = getattr(self.invoker, "unhealthy", None)
        return reason if isinstance(reason, str) else None

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        deadline = anyio.current_time() + self.throttle_budget
        attempt = 0
        while True:
            result = await self._invoke_in_slot(event, deadline)
            if not result.throttled:
                self._invocations.inc()
                self._duration.observe(result.duration_s)
                if result.failure is not None:
                    self._errors.inc()
                return result
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                self._log.warning("function.throttled", attempts=attempt + 1)
                return result
            delay = random.uniform(
                0, min(THROTTLE_BACKOFF_MAX, THROTTLE_BACKOFF_INITIAL * 2**attempt)
            )
            attempt += 1
            await anyio.sleep(min(delay, remaining))

    async def _invoke_in_slot(self, event: dict[str, Any], deadline: float) -> InvocationResult:
        """One attempt inside a concurrency slot; every throttle is counted here, once."""
        slots = self._slots
        if slots is not None:
            try:
                slots.acquire_nowait()
            except anyio.WouldBlock:
                self._throttles.inc()
                acquired = False
                with anyio.move_on_after(max(0.0, deadline - anyio.current_time())):
                    await slots.acquire()
                    acquired = True
                if not acquired:
                    return InvocationResult(str(uuid.uuid4()), 0.0, throttled=True)
            return await self._run_and_release(event, slots)
        result = await self._run(event)
        if result.throttled:
            self._throttles.inc()
        return result

    async def _run_and_release(
        self, event: dict[str, Any], slots: anyio.CapacityLimiter
    ) -> InvocationResult:
        try:
            result = await self._run(event)
        finally:
            slots.release()
        if result.throttled:
            self._throttles.inc()
        return result

    async def _run(self, event: dict[str, Any]) -> InvocationResult:
        self._concurrent.inc()
        try:
            return await self.invoker.invoke(event)
        finally:
            self._concurrent.dec()


def create_functions(
    configs: Mapping[str, FunctionConfig], metrics: Metrics, daemon: DaemonConfig | None = None
) -> dict[str, Function]:
    """One Function per [functions.*] entry. Pass `daemon` so invokers use its region."""
    return {
        name: Function(create_invoker(config, daemon), metrics, function_concurrency(config))
        for name, config in configs.items()
    }
