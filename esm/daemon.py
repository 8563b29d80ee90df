"""The daemon: runs one runtime per enabled mapping, serves /metrics /healthz /readyz,
applies config reloads, and drains on SIGTERM.

Shutdown follows Lambda's spirit and the at-least-once promise: the first SIGTERM/SIGINT
stops every poller, lets in-flight batches finish (bounded by `drain_timeout`, by default
the longest function timeout plus a margin), deletes or checkpoints what succeeded and
returns. A second signal cancels everything at once; what was not deleted or checkpointed
is simply delivered again.

Reload (SIGHUP, `esm reload`, or `Daemon.reload`): mappings are compared by name. Added
ones start; removed, disabled and changed ones stop the way SIGTERM stops them (in-flight
batches finish, checkpoints stay), and changed ones start again with the new settings. A
changed function restarts every mapping that uses it. `[daemon]` and `[state]` changes
need a restart; reload says so in its log line and keeps the running values. A reload never
takes the daemon down: a file that cannot be loaded, or a function that cannot be created,
is one log line and the running configuration stays.
"""

from __future__ import annotations

import gc
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import TaskGroup, TaskStatus

from esm.aws import AwsClients
from esm.config import Config, DaemonConfig, FunctionConfig, load_config
from esm.errors import ConfigError, EsmError
from esm.filtering import FilterSet
from esm.http_server import StatusServer
from esm.idle_pacing import IdleReadPacer
from esm.invokers import Function, create_functions
from esm.observability import Metrics, get_logger
from esm.sources import registry
from esm.sources.base import MappingConfig, MappingRuntime, RuntimeBuilder, RuntimeResources
from esm.state.base import CheckpointStore

log = get_logger("esm.daemon")

DRAIN_MARGIN_SECONDS = 5.0


@dataclass
class _Running:
    """A mapping runtime and the event set when its `run` has returned."""

    config: MappingConfig
    runtime: MappingRuntime
    finished: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True)
class ReloadResult:
    started: list[str]
    stopped: list[str]
    restarted: list[str]
    needs_restart: list[str]
    """Top-level sections whose changes only a restart applies ([daemon], [state])."""


class Daemon:
    def __init__(
        self, config: Config, metrics: Metrics | None = None, config_path: Path | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.metrics = metrics or Metrics()
        self.functions: dict[str, Function] = create_functions(
            config.functions, self.metrics, config.daemon
        )
        self.running: dict[str, _Running] = {}
        self.idle_pacer = IdleReadPacer(config.daemon.idle_shard_reads_per_second)
        self.metrics.caught_up_shards.set_function(lambda: self.idle_pacer.caught_up)
        self.metrics.idle_read_interval.set_function(self.idle_pacer.longest_wait)
        self.http_port: int | None = None
        self.on_ready: Callable[[], None] | None = None
        """Called once, when every enabled mapping first reports ready (systemd READY=1)."""
        self.on_stopping: Callable[[], None] | None = None
        """Called once, when the drain begins (systemd STOPPING=1)."""
        self._stop_requested: anyio.Event | None = None
        self._stop_early = False
        self._aws: AwsClients | None = None
        self._store: CheckpointStore | None = None
        self._mappings: TaskGroup | None = None
        self._reload_lock = anyio.Lock()
        self._reload_requested = anyio.Event()
        self._mappings_started = anyio.Event()

    @property
    def runtimes(self) -> list[MappingRuntime]:
        return [r.runtime for r in self.running.values()]

    def request_stop(self) -> None:
        """Begin the drain; safe to call before `run` has started (it then drains at once).

        The first request calls the `on_stopping` hook when one was set (systemd's
        STOPPING=1, sent by `esm run`)."""
        if not self._stop_early and self.on_stopping is not None:
            self.on_stopping()
        self._stop_early = True
        if self._stop_requested is not None:
            self._stop_requested.set()

    def request_reload(self) -> None:
        """Re-read `config_path` soon (SIGHUP, POST /-/reload); errors are logged."""
        self._reload_requested.set()

    def not_ready(self) -> list[str]:
        """Mappings not yet positioned (before they are started, every enabled one: the HTTP
        server answers /readyz from the start), then unhealthy functions as `function NAME: why`."""
        if not self._mappings_started.is_set():
            waiting = [m.name for m in self.config.mappings if m.enabled]
        else:
            waiting = [r.name for r in self.runtimes if not r.ready]
        for name, function in self.functions.items():
            if (reason := function.unhealthy) is not None:
                waiting.append(f"function {name}: {reason}")
        return waiting

    def not_ready_reasons(self) -> dict[str, str]:
        """Why each mapping that is not ready is not, where its runtime says (Kafka and the
        broker queues: the brokers cannot be reached, naming them and the error)."""
        if not self._mappings_started.is_set():
            return {}
        reasons = {}
        for runtime in self.runtimes:
            reason = runtime.not_ready_reason
            if reason is not None and not runtime.ready:
                reasons[runtime.name] = reason
        return reasons

    @property
    def drain_timeout(self) -> float:
        longest = max((f.timeout for f in self.functions.values()), default=0.0)
        return min(self.config.daemon.drain_timeout, longest + DRAIN_MARGIN_SECONDS)

    async def run(
        self,
        *,
        handle_signals: bool = False,
        task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until `request_stop()` (or a signal), then drain and return."""
        daemon = self.config.daemon
        tune_garbage_collector()
        self._stop_requested = anyio.Event()
        if self._stop_early:
            self._stop_requested.set()
        async with AwsClients(daemon, self.metrics) as aws:
            self._aws = aws
            server = StatusServer(
                daemon.http_host,
                daemon.http_port,
                self.metrics.registry,
                self.not_ready,
                on_reload=self.request_reload if self.config_path is not None else None,
                not_ready_reasons=self.not_ready_reasons,
            )
            async with anyio.create_task_group() as tg:
                self.http_port = await tg.start(server.serve)
                if handle_signals:
                    tg.start_soon(self._watch_signals, tg.cancel_scope)
                tg.start_soon(self._watch_reload_requests)
                tg.start_soon(self._watch_readiness)
                task_status.started(self.http_port)
                await self._run_mappings()
                tg.cancel_scope.cancel()
        for function in self.functions.values():
            await function.invoker.aclose()
        if self._store is not None:
            await self._store.close()
        log.info("daemon.stopped")

    async def _run_mappings(self) -> None:
        assert self._stop_requested is not None
        with anyio.CancelScope() as drain_scope:
            async with anyio.create_task_group() as mappings:
                self._mappings = mappings
                for mapping in self.config.mappings:
                    if mapping.enabled:
                        await self._start(mapping)
                log.info("daemon.started", mappings=list(self.running))
                self._mappings_started.set()
                await self._stop_requested.wait()
                async with self._reload_lock:
                    log.info("daemon.draining", timeout_s=self.drain_timeout)
                    drain_scope.deadline = anyio.current_time() + self.drain_timeout
                    for running in self.running.values():
                        running.runtime.stop()
        if drain_scope.cancelled_caught:
            log.warning("daemon.drain_timed_out", timeout_s=self.drain_timeout)

    async def _start(self, mapping: MappingConfig) -> None:
        assert self._mappings is not None and self._aws is not None
        running = _Running(mapping, await self._build(mapping, self._aws))
        self.running[mapping.name] = running
        self._mappings.start_soon(self._run_one, running)

    async def _run_one(self, running: _Running) -> None:
        try:
            await running.runtime.run()
        finally:
            running.finished.set()

    async def _stop(self, name: str) -> None:
        running = self.running.pop(name)
        running.runtime.stop()
        await running.finished.wait()

    async def reload(self, new: Config) -> ReloadResult:
        """Apply a validated config to the running daemon (see the module docstring).

        Changed functions are created before anything stops: a handler that cannot load
        rejects the reload (EsmError) and the running mappings go on untouched."""
        async with self._reload_lock:
            if self._stop_requested is not None and self._stop_requested.is_set():
                return ReloadResult([], [], [], [])
            old = self.config
            changed_functions = _changed_functions(old.functions, new.functions)
            retiring = [self.functions[n] for n in changed_functions if n in self.functions]
            _retire(retiring, True)
            try:
                replacements = await _create_all(
                    {n: new.functions[n] for n in changed_functions if n in new.functions},
                    self.metrics,
                    old.daemon,
                )
            except BaseException:
                _retire(retiring, False)
                raise
            wanted = {m.name: m for m in new.mappings if m.enabled}
            restart = [
                name
                for name, running in self.running.items()
                if name in wanted
                and (running.config != wanted[name] or running.config.function in changed_functions)
            ]
            stop = [name for name in self.running if name not in wanted]
            async with anyio.create_task_group() as stopping:
                for name in stop + restart:
                    stopping.start_soon(self._stop, name)
            for name in changed_functions:
                if name in self.functions:
                    await self.functions.pop(name).invoker.aclose()
            self.functions.update(replacements)
            self.config = Config(
                daemon=old.daemon, state=old.state, functions=new.functions, mappings=new.mappings
            )
            start = [name for name in wanted if name not in self.running]
            failed = [name for name in start if not await self._start_after_reload(wanted[name])]
            needs_restart = [
                section
                for section, before, after in (
                    ("daemon", old.daemon, new.daemon),
                    ("state", old.state, new.state),
                )
                if before != after
            ]
            result = ReloadResult(
                started=[n for n in start if n not in restart and n not in failed],
                stopped=stop,
                restarted=[n for n in restart if n not in failed],
                needs_restart=needs_restart,
            )
            log.info(
                "daemon.reloaded",
                started=result.started,
                stopped=result.stopped,
                restarted=result.restarted,
                needs_restart=result.needs_restart,
            )
            return result

    async def _start_after_reload(self, mapping: MappingConfig) -> bool:
        """Start one mapping of a reload; one that cannot start (its checkpoint store is
        unreachable, ...) is logged and left out, the others start, and the next reload
        tries it again."""
        try:
            await self._start(mapping)
        except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon down
            log.error(
                "daemon.mapping_start_failed",
                mapping=mapping.name,
                error_type=type(exc).__name__,
                error=str(exc),
            )
            return False
        return True

    async def reload_from_file(self) -> ReloadResult | None:
        """Re-read `config_path`; a file that is invalid, unreadable, huge or hostile is
        rejected in one log line and the running configuration stays (README, "Changing
        mappings while running"). Parsing runs in a worker thread, so a large file never
        stalls the pollers."""
        assert self.config_path is not None
        try:
            new = await anyio.to_thread.run_sync(
                load_config, self.config_path, abandon_on_cancel=True
            )
        except ConfigError as exc:
            log.error("daemon.reload_rejected", problems=exc.problems)
            return None
        except Exception as exc:  # noqa: BLE001 - load_config's contract is ConfigError only
            log.error(
                "daemon.reload_rejected",
                problems=[f"{self.config_path}: cannot be loaded ({type(exc).__name__})"],
            )
            return None
        try:
            return await self.reload(new)
        except EsmError as exc:
            log.error("daemon.reload_failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a reload must never take the daemon down
            log.error("daemon.reload_failed", error_type=type(exc).__name__, error=str(exc))
        return None

    async def _watch_reload_requests(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested = anyio.Event()
            if self.config_path is None:
                log.warning(
                    "daemon.reload_ignored", reason="the daemon was not started from a file"
                )
                continue
            await self.reload_from_file()

    async def _watch_readiness(self) -> None:
        """Tell `on_ready` once every enabled mapping polls (systemd's READY=1); with no
        enabled mapping that is at once."""
        await self._mappings_started.wait()
        while self.on_ready is not None:
            if not self.not_ready():
                self.on_ready()
                return
            await anyio.sleep(0.1)

    async def _watch_signals(self, everything: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    log.info("daemon.signal", signal="SIGHUP")
                    self.request_reload()
                    continue
                if self._stop_early:
                    log.warning("daemon.exit_now", signal=signal.Signals(signum).name)
                    everything.cancel()
                    return
                log.info("daemon.signal", signal=signal.Signals(signum).name)
                self.request_stop()

    async def _checkpoint_store(self) -> CheckpointStore:
        """Opened on first use: SQS-only daemons never create a state file or lease table."""
        if self._store is None:
            state = self.config.state
            if state.backend == "dynamodb":
                import structlog

                from esm.state.dynamodb import DynamoDBCheckpointStore, LeaseTimings

                assert self._aws is not None and state.table is not None
                store = await DynamoDBCheckpointStore.open(
                    self._aws,
                    state.table,
                    create=state.create_table,
                    timings=LeaseTimings(
                        state.lease_renewal_interval,
                        state.failover_time,
                        state.max_leases_taken_per_cycle,
                    ),
                )
                self.metrics.worker_info.labels(store.worker_id).set(1)
                # Every log line of the mappings started from here names the worker.
                structlog.contextvars.bind_contextvars(worker=store.worker_id)
                self._store = store
            else:
                from esm.state.sqlite import SqliteCheckpointStore

                self._store = await SqliteCheckpointStore.open(state.path)
        return self._store

    async def _build(self, mapping: MappingConfig, aws: AwsClients) -> MappingRuntime:
        """The mapping's runtime, as its source family's registry entry builds it."""
        function = self.functions[mapping.function]
        filters = FilterSet.compile(mapping.filter_patterns) if mapping.filter_patterns else None
        build: RuntimeBuilder = registry.load(registry.family_of(mapping).runtime)
        resources = RuntimeResources(aws, self.metrics, self._checkpoint_store, self.idle_pacer)
        return await build(mapping, function, filters, resources)


def tune_garbage_collector() -> None:
    """Fewer, cheaper collections. Every record allocates a few dicts; with CPython's
    default thresholds (700 allocations) the collector ran thousands of times a second and
    took a quarter to a third of the hot path's CPU (bench/). Objects alive at start-up
    (modules, config, clients) are frozen out of every later collection. The young
    generation holds 200,000 net allocations: a 10,000-record Kinesis page adds ~20,000
    tracked containers while it is buffered, and at 50,000 a collection ran every page or
    two; measured interleaved, 200,000 gave +7-11% on figure 1's Kinesis cells."""
    gc.freeze()
    gc.set_threshold(200_000, 20, 20)


async def _create_all(
    configs: Mapping[str, FunctionConfig], metrics: Metrics, daemon: DaemonConfig
) -> dict[str, Function]:
    """Every function or none: if one cannot be created, those already created are closed."""
    created: dict[str, Function] = {}
    try:
        for name, config in configs.items():
            created.update(create_functions({name: config}, metrics, daemon))
    except BaseException:
        for function in created.values():
            await function.invoker.aclose()
        raise
    return created


def _retire(functions: list[Function], retiring: bool) -> None:
    """Tell the invokers a reload replaces them (an in-process function's replacement, or a
    renamed copy, then runs its own init: a new execution environment, as on Lambda)."""
    for function in functions:
        retire = getattr(function.invoker, "retire", None)
        if callable(retire):
            retire(retiring)


def _changed_functions(
    old: Mapping[str, FunctionConfig], new: Mapping[str, FunctionConfig]
) -> set[str]:
    return {name for name in set(old) | set(new) if old.get(name) != new.get(name)}
