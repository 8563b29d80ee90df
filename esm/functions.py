"""Functions at run time: one invoker per [functions.*] entry, metered the same way for all kinds.

Sources call `Function.invoke`; it counts Invocations / Errors / Throttles, times Duration
and tracks ConcurrentExecutions (AWS's per-function metrics), whatever the kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esm.config import FunctionConfig
from esm.errors import HandlerLoadError
from esm.invocation import InvocationResult, Invoker
from esm.observability import Metrics


def create_invoker(config: FunctionConfig) -> Invoker:
    if config.kind == "python":
        from esm.invokers.python import PythonInvoker

        return PythonInvoker(config)
    raise HandlerLoadError(f"function {config.name}: kind {config.kind!r} is not supported")


class Function:
    """An invoker plus its metrics; shared by every mapping that names the function."""

    def __init__(self, invoker: Invoker, metrics: Metrics, concurrency: int | None = None) -> None:
        self.invoker = invoker
        self.concurrency = concurrency
        """reserved_concurrent_executions: caps SQS receivers when maximum_concurrency is unset."""
        self.name = invoker.name
        self.arn = invoker.arn
        self.timeout = invoker.timeout
        self._invocations = metrics.invocations.labels(self.name)
        self._errors = metrics.errors.labels(self.name)
        self._throttles = metrics.throttles.labels(self.name)
        self._duration = metrics.duration.labels(self.name)
        self._concurrent = metrics.concurrent.labels(self.name)

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        self._concurrent.inc()
        try:
            result = await self.invoker.invoke(event)
        finally:
            self._concurrent.dec()
        if result.throttled:
            self._throttles.inc()
            return result
        self._invocations.inc()
        self._duration.observe(result.duration_s)
        if result.failure is not None:
            self._errors.inc()
        return result


def create_functions(configs: Mapping[str, FunctionConfig], metrics: Metrics) -> dict[str, Function]:
    return {
        name: Function(create_invoker(config), metrics, config.reserved_concurrent_executions)
        for name, config in configs.items()
    }
