"""The daemon: builds one runtime per enabled mapping, serves /metrics /healthz /readyz,
and drains on SIGTERM.

Shutdown follows Lambda's spirit and the at-least-once promise: the first SIGTERM/SIGINT
stops every poller, lets in-flight batches finish (bounded by `drain_timeout`, by default
the longest function timeout plus a margin), deletes or checkpoints what succeeded and
returns. A second signal cancels everything at once; what was not deleted or checkpointed
is simply delivered again.
"""

from __future__ import annotations

import signal
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from esm.aws import AwsClients
from esm.config import Config, MappingConfig
from esm.filtering import FilterSet
from esm.functions import Function, create_functions
from esm.http_server import StatusServer
from esm.observability import Metrics, get_logger
from esm.state.base import CheckpointStore

log = get_logger("esm.daemon")

DRAIN_MARGIN_SECONDS = 5.0


class MappingRuntime(Protocol):
    name: str
    ready: bool

    async def run(self) -> None: ...

    def stop(self) -> None: ...


class Daemon:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.functions: dict[str, Function] = create_functions(config.functions, self.metrics)
        self.runtimes: list[MappingRuntime] = []
        self.http_port: int | None = None
        self._stop_requested: anyio.Event | None = None
        self._stop_early = False

    def request_stop(self) -> None:
        """Begin the drain; safe to call before `run` has started (it then drains at once)."""
        self._stop_early = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    def not_ready(self) -> list[str]:
        return [r.name for r in self.runtimes if not r.ready]

    @property
    def drain_timeout(self) -> float:
        longest = max((f.timeout for f in self.functions.values()), default=0.0)
        return min(self.config.daemon.drain_timeout, longest + DRAIN_MARGIN_SECONDS)

    async def run(
        self, *, handle_signals: bool = False, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until `request_stop()` (or a signal), then drain and return."""
        daemon = self.config.daemon
        self._stop_requested = anyio.Event()
        if self._stop_early:
            self._stop_requested.set()
        enabled = [mapping for mapping in self.config.mappings if mapping.enabled]
        store = await self._open_store() if any(m.source.kind != "sqs" for m in enabled) else None
        async with AwsClients(daemon, self.metrics) as aws:
            self.runtimes = [self._build(mapping, aws, store) for mapping in enabled]
            server = StatusServer(daemon.http_host, daemon.http_port, self.metrics.registry, self.not_ready)
            async with anyio.create_task_group() as tg:
                self.http_port = await tg.start(server.serve)
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                log.info("daemon.started", mappings=[r.name for r in self.runtimes])
                task_status.started(self.http_port)
                await self._run_mappings()
                tg.cancel_scope.cancel()
        for function in self.functions.values():
            await function.invoker.aclose()
        if store is not None:
            await store.close()
        log.info("daemon.stopped")

    async def _run_mappings(self) -> None:
        assert self._stop_requested is not None
        with anyio.CancelScope() as drain_scope:
            async with anyio.create_task_group() as mappings:
                for runtime in self.runtimes:
                    mappings.start_soon(runtime.run)
                await self._stop_requested.wait()
                log.info("daemon.draining", timeout_s=self.drain_timeout)
                drain_scope.deadline = anyio.current_time() + self.drain_timeout
                for runtime in self.runtimes:
                    runtime.stop()
        if drain_scope.cancelled_caught:
            log.warning("daemon.drain_timed_out", timeout_s=self.drain_timeout)

    async def _watch_signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stop_early:
                    log.warning("daemon.exit_now", signal=signal.Signals(signum).name)
                    everything.cancel()
                    return
                log.info("daemon.signal", signal=signal.Signals(signum).name)
                self.request_stop()

    async def _open_store(self) -> CheckpointStore:
        from esm.state.sqlite import SqliteCheckpointStore

        return await SqliteCheckpointStore.open(self.config.state.path)

    def _build(
        self, mapping: MappingConfig, aws: AwsClients, store: CheckpointStore | None
    ) -> MappingRuntime:
        function = self.functions[mapping.function]
        filters = FilterSet.compile(mapping.filter_patterns) if mapping.filter_patterns else None
        if mapping.source.kind == "sqs":
            from esm.sources.sqs import SqsMapping

            return SqsMapping(mapping, function, aws, self.metrics, filters)
        from esm.sources.stream_mapping import StreamMapping

        assert store is not None
        return StreamMapping(mapping, function, aws, self.metrics, filters, store)
