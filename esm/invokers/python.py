"""In-process Python functions: `module.function`, called the way Lambda's Python runtime does.

Sync handlers run in a worker thread (bounded per function), async ones are awaited. At
the timeout an async handler is cancelled; a sync handler's thread cannot be killed, so the
invocation is counted failed ("Task timed out after N.NN seconds") while the thread runs
on to its end; at MAX_HUNG_THREADS such threads the function is unhealthy and its
invocations are throttled (retried, never lost) until some end. Use `kind = "process"`
for isolation (it kills a timed-out handler). Functions share the daemon's process and
its os.environ (InProcessEnvironment); each handler module is loaded from its own file
(FunctionModules), and a failing import is the function's init error, never the daemon's.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import importlib.machinery
import inspect
import json
import os
import queue
import sys
import sysconfig
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from random import getrandbits
from types import ModuleType
from typing import Any

import anyio
import anyio.to_thread

from esm import lambda_environment
from esm.config import DaemonConfig, FunctionConfig
from esm.errors import HandlerLoadError
from esm.invokers.result import (
    MAX_RESPONSE_BYTES,
    FunctionFailure,
    InvocationResult,
    response_too_large,
)
from esm.lambda_environment import TRACE_VARIABLE
from esm.observability import get_logger

log = get_logger("esm.python")

DEFAULT_CONCURRENCY = 100
IDLE_THREAD_SECONDS = 10.0
"""A handler thread unused this long is stopped (the next invocation starts one)."""
BRIEF_WAIT_SECONDS = 0.0005
"""How long the event loop waits, with the GIL released, for a handler whose last call
returned within this time, before it awaits the call like any other (HandlerThreads)."""
MAX_HUNG_THREADS = 16
"""Threads of one function still running invocations that timed out; at this many the
function takes no more invocations (they are throttled) until some of them end."""


class LambdaContext:
    """The `context` argument of a Lambda Python handler, with the same attribute names."""

    def __init__(self, function: FunctionConfig, request_id: str, deadline: float) -> None:
        self.function_name = function.name
        self.function_version = "$LATEST"
        self.invoked_function_arn = function.arn
        self.memory_limit_in_mb = str(function.memory_size)
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function.name}"
        self.log_stream_name = log_stream_name()
        self.identity = None
        self.client_context = None
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(function: FunctionConfig, owner: object) -> Callable[..., Any]:
    """Import `module.function` from code_path (on sys.path, like LAMBDA_TASK_ROOT) under
    the identity of its file, never whatever module of that name was imported first.
    `owner` (the function instance) holds the code_path's modules until release_modules().

    Raises HandlerLoadError with Lambda's wording (Runtime.ImportModuleError /
    Runtime.HandlerNotFound); the invoker turns it into the function's init error."""
    module_name, _, attribute = function.handler.rpartition(".")
    code_path = Path(function.code_path).resolve()
    try:
        module = _MODULES.load(module_name, code_path, owner)
    except Exception as exc:  # noqa: BLE001 - any import-time error is the function's init error
        raise HandlerLoadError(
            f"function {function.name}: Unable to import module '{module_name}': {exc}"
        ) from exc
    handler = getattr(module, attribute, None)
    if not callable(handler):
        raise HandlerLoadError(
            f"function {function.name}: Handler '{attribute}' missing on module '{module_name}'"
        )
    return handler  # type: ignore[no-any-return]


def release_modules(owner: object) -> None:
    """The function instance `owner` closed (see FunctionModules.release)."""
    _MODULES.release(owner)


def retire_modules(owner: object, retiring: bool = True) -> None:
    """The function instance `owner` is being replaced (see FunctionModules.retire)."""
    _MODULES.retire(owner, retiring)


class _CodePath:
    """The open function instances using one code_path, and what was there before them."""

    def __init__(self, root: str) -> None:
        self.owners: set[object] = set()
        """The open function instances."""
        self.sharing: set[object] = set()
        """The instances whose init made (or shared) the modules now in sys.modules."""
        self.preexisting = {
            name: module for name, module in sys.modules.items() if _is_under(module, root)
        }
        """Modules of code_path imported before any function used it (not by esm): kept."""
        self.added_to_path = root not in sys.path


class FunctionModules:
    """Loads each function's handler module by file, so same-named modules of different
    code_paths (every `sam init` app has `app.py`) each run their own code.

    One interpreter has one sys.modules and one sys.path, so the limit is this (README
    "kind = python"): while a function's module is imported (its init), modules of the
    same name from elsewhere and every module loaded from another function's code_path are
    hidden from sys.modules, so its own `import utils` finds its own `utils.py`, and the
    modules it binds stay its own. Afterwards the hidden modules come back: a contested
    name stays with the function that loaded it first, which is what an import run at
    invocation time then gets. Functions naming the same file share its module.

    A function instance is an execution environment (Lambda's rule: a configuration change
    means new ones, whose init sees the new environment). Its init imports afresh when the
    modules in sys.modules belong only to closed instances or to instances being replaced
    or removed (retire(), by a reload); when the last instance using a code_path closes,
    its modules leave sys.modules."""

    def __init__(self) -> None:
        self._code_paths: dict[str, _CodePath] = {}
        self._retiring: set[object] = set()
        self._lock = threading.RLock()  # an init retry loads from a worker thread

    def load(self, module_name: str, code_path: Path, owner: object) -> ModuleType:
        with self._lock:
            root = str(code_path)
            state = self._code_paths.get(root)
            if state is None:
                state = self._code_paths[root] = _CodePath(root)
            others = state.sharing - {owner}
            if others and others <= self._retiring:
                self._forget_modules(root, state)  # theirs: this instance inits afresh
                state.sharing.clear()
            state.owners.add(owner)
            state.sharing.add(owner)
            return self._import(module_name, code_path, root)

    def retire(self, owner: object, retiring: bool = True) -> None:
        """`owner` is about to close (a reload replaces or removes it): instances created
        meanwhile do not share its modules. retiring=False undoes it (the reload failed)."""
        with self._lock:
            if retiring:
                self._retiring.add(owner)
            else:
                self._retiring.discard(owner)

    def release(self, owner: object) -> None:
        """`owner` closed. The last instance using a code_path takes its modules out of
        sys.modules (never installed libraries, never modules imported before esm loaded
        any function from there) and its code_path off sys.path if esm put it there."""
        with self._lock:
            self._retiring.discard(owner)
            for root, state in list(self._code_paths.items()):
                if owner not in state.owners:
                    continue
                state.owners.discard(owner)
                state.sharing.discard(owner)
                if not state.owners:
                    del self._code_paths[root]
                    if state.added_to_path and root in sys.path:
                        sys.path.remove(root)
                if not state.sharing:  # the modules in sys.modules are closed instances'
                    self._forget_modules(root, state)

    def _forget_modules(self, root: str, state: _CodePath) -> None:
        """Take root's modules out of sys.modules, but not another open code_path's below it."""
        nested = tuple(p + os.sep for p in self._code_paths if p.startswith(root + os.sep))
        for name, module in list(sys.modules.items()):
            if state.preexisting.get(name) is module or not _is_under(module, root):
                continue
            if not (_module_location(module) or "").startswith(nested):
                del sys.modules[name]

    def _import(self, module_name: str, code_path: Path, root: str) -> ModuleType:
        origin = _find_origin(module_name, code_path)
        existing = sys.modules.get(module_name)
        if origin is None or (existing is not None and _module_file(existing) == origin):
            # Not in code_path (an installed package, a layer on sys.path), or already
            # loaded from this very file: Python's own import, as Lambda does.
            if root not in sys.path:
                sys.path.insert(0, root)
            return importlib.import_module(module_name)
        if root in sys.path:
            sys.path.remove(root)
        sys.path.insert(0, root)
        hidden = self._hide_others(root, module_name)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.modules.update(hidden)  # the first to load a name keeps it

    def _hide_others(self, root: str, module_name: str) -> dict[str, ModuleType]:
        others = tuple(p + os.sep for p in self._code_paths if p != root)
        top = module_name.partition(".")[0]
        hidden: dict[str, ModuleType] = {}
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if not isinstance(file, str) or file.startswith(root + os.sep):
                continue
            same_name = name == top or name.startswith(top + ".")
            if same_name or (file.startswith(others) and not file.startswith(_LIBRARY_PREFIXES)):
                hidden[name] = sys.modules.pop(name)
        return hidden


def _find_origin(module_name: str, code_path: Path) -> Path | None:
    """The file `module_name` is imported from when code_path is first on sys.path."""
    search: list[str] | None = [str(code_path)]
    spec = None
    for part in module_name.split("."):
        spec = importlib.machinery.PathFinder.find_spec(part, search)
        if spec is None:
            return None
        search = list(spec.submodule_search_locations or [])
    if spec is None or spec.origin is None or not spec.has_location:
        return None
    return Path(spec.origin).resolve()


def _module_location(module: ModuleType) -> str | None:
    """Where a module was loaded from: its file, or a namespace package's first directory."""
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return file
    path = getattr(module, "__path__", None)
    try:
        first = next(iter(path)) if path is not None else None
    except (TypeError, StopIteration):
        return None
    return os.path.join(first, "") if isinstance(first, str) else None


def _is_under(module: ModuleType, root: str) -> bool:
    """Loaded from below root, and not an installed library (a virtualenv in code_path)."""
    location = _module_location(module)
    return (
        location is not None
        and location.startswith(root + os.sep)
        and not location.startswith(_LIBRARY_PREFIXES)
    )


def _module_file(module: ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    try:
        return Path(file).resolve()
    except OSError:
        return None


_LIBRARY_PREFIXES = tuple(
    {
        os.path.join(path, "")
        for p in {sys.prefix, sys.base_prefix, *sysconfig.get_paths().values()}
        if p
        for path in (p, os.path.realpath(p))
    }
)
"""Installed libraries are shared, even when a virtualenv lives below a code_path."""
_MODULES = FunctionModules()


class InProcessEnvironment:
    """Lambda's environment for in-process functions, in the one os.environ they share.

    The shared variables (esm.lambda_environment) are set when the first in-process
    function loads; the per-function ones and the function's `environment` are set for the
    function being loaded and again when an invocation starts for a different function
    than the last one (a no-op for a single function), so concurrent invocations of two
    in-process functions see the values of the one started last. A variable another
    function set that this one does not define goes back to the daemon's own value (or
    away), so a function never sees another's `environment`, nor a reload's new instance
    a variable the reload removed. _X_AMZN_TRACE_ID is set per invocation. The daemon's
    original values come back when the last one closes."""

    def __init__(self) -> None:
        self._saved: dict[str, str | None] = {}
        self._shared: set[str] = set()
        self._users = 0
        self._current: object = None

    def acquire(self, shared: Mapping[str, str]) -> None:
        self._users += 1
        self._saved.setdefault(TRACE_VARIABLE, os.environ.get(TRACE_VARIABLE))
        self._shared.update(shared)
        self._set(shared)

    def enter(self, owner: object, variables: Mapping[str, str]) -> None:
        if owner is not self._current:
            self._restore_others(variables)
            self._set(variables)
            self._current = owner

    def _restore_others(self, variables: Mapping[str, str]) -> None:
        """Per-function variables set for another function, not defined by this one."""
        environ = os.environ
        for name, value in self._saved.items():
            if name in variables or name in self._shared or name == TRACE_VARIABLE:
                continue
            if value is None:
                environ.pop(name, None)
            elif environ.get(name) != value:
                environ[name] = value

    def trace(self, trace_id: str) -> None:
        """Python's view only (os.environ, os.getenv), not C's getenv(): glibc's setenv()
        keeps every value ever set, so a new one per invocation would grow the daemon
        without bound (~40 MB per 300,000 invocations, measured). The original value was
        saved by acquire()."""
        environ = os.environ
        data: dict[Any, Any] = environ._data  # type: ignore[attr-defined]
        data[environ.encodekey(TRACE_VARIABLE)] = environ.encodevalue(trace_id)

    def release(self, owner: object) -> None:
        self._users -= 1
        if self._current is owner:
            self._current = None
        if self._users <= 0:
            self._users = 0
            os.environ.pop(TRACE_VARIABLE, None)  # set around putenv: drop it from both views
            for name, value in self._saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            self._saved.clear()
            self._shared.clear()

    def _set(self, variables: Mapping[str, str]) -> None:
        environ = os.environ
        for name, value in variables.items():
            if name not in self._saved:
                self._saved[name] = environ.get(name)
            if environ.get(name) != value:
                environ[name] = value


IN_PROCESS_ENVIRONMENT = InProcessEnvironment()


class PythonInvoker:
    """A sync or async handler run in the daemon's process (no isolation: README)."""

    def __init__(
        self,
        function: FunctionConfig,
        daemon: DaemonConfig | None = None,
        max_hung_threads: int = MAX_HUNG_THREADS,
    ) -> None:
        self.function = function
        self.name = function.name
        self.arn = function.arn
        self.timeout = function.timeout
        self.max_hung_threads = max_hung_threads
        region = daemon.region if daemon is not None else "us-east-1"
        self._variables = {
            **function.environment,
            **lambda_environment.function_variables(function, log_stream_name()),
        }
        IN_PROCESS_ENVIRONMENT.acquire(
            lambda_environment.shared_variables(
                daemon,
                region=region,
                base={**os.environ, **function.environment},
                execution_env=lambda_environment.python_execution_env(),
            )
        )
        self._handler: Callable[..., Any] | None = None
        self._is_async = False
        self._init_error: HandlerLoadError | None = None
        self._init_lock = anyio.Lock()
        self._log = log.bind(function=self.name)
        self._slots = anyio.CapacityLimiter(
            function.reserved_concurrent_executions or DEFAULT_CONCURRENCY
        )
        self._threads = HandlerThreads(f"esm-{function.name}")
        self._unhealthy_logged = False
        self._load()

    def _load(self) -> Callable[..., Any] | None:
        """Run the function's init (import its module). A failure is the function's init
        error: every invocation reports it and tries the init again, as Lambda does; it
        never stops the daemon."""
        IN_PROCESS_ENVIRONMENT.enter(self, self._variables)
        try:
            handler = load_handler(self.function, self)
        except HandlerLoadError as exc:
            if self._init_error is None:
                self._log.error("function.init_failed", error=str(exc))
            self._init_error = exc
            return None
        if self._init_error is not None:
            self._log.info("function.init_recovered")
        self._init_error = None
        self._handler = handler
        self._is_async = inspect.iscoroutinefunction(handler)
        return handler

    async def _init_again(self) -> Callable[..., Any] | None:
        """After an init error, each invocation runs the init again (one at a time), in a
        worker thread: a slow failing import must not stall the daemon's event loop."""
        async with self._init_lock:
            if self._handler is None:
                importlib.invalidate_caches()  # files added since (a dependency installed)
                await anyio.to_thread.run_sync(self._load)
        return self._handler

    @property
    def hung_threads(self) -> int:
        """Handler threads still running an invocation that timed out."""
        return self._threads.abandoned

    @property
    def unhealthy(self) -> str | None:
        """Why the function cannot take invocations now (for /readyz), else None."""
        hung = self._threads.abandoned
        if hung >= self.max_hung_threads:
            return (
                f"{hung} handler threads hung past the timeout (limit {self.max_hung_threads});"
                ' use kind = "process", which kills a timed-out handler'
            )
        return None

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        request_id = new_request_id()
        started = time.monotonic()
        handler = self._handler or await self._init_again()
        if handler is None:
            assert self._init_error is not None
            return InvocationResult(
                request_id, time.monotonic() - started, failure=_init_failure(self._init_error)
            )
        if not self._is_async and self._threads.abandoned >= self.max_hung_threads:
            return self._refuse(request_id)
        if self._unhealthy_logged:
            self._unhealthy_logged = False
            self._log.info("function.healthy", hung_threads=self._threads.abandoned)
        IN_PROCESS_ENVIRONMENT.enter(self, self._variables)
        IN_PROCESS_ENVIRONMENT.trace(lambda_environment.trace_id())
        context = LambdaContext(self.function, request_id, started + self.timeout)
        response: Any = None
        failure: FunctionFailure | None = None
        with anyio.move_on_after(self.timeout) as scope:
            try:
                response = await self._call(handler, event, context)
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

    def _refuse(self, request_id: str) -> InvocationResult:
        """Too many threads hung: a throttle (retried, never lost) instead of one more."""
        if not self._unhealthy_logged:
            self._unhealthy_logged = True
            self._log.error(
                "function.unhealthy",
                hung_threads=self._threads.abandoned,
                limit=self.max_hung_threads,
                advice='use kind = "process", which kills a timed-out handler',
            )
        return InvocationResult(request_id, 0.0, throttled=True)

    async def _call(
        self, handler: Callable[..., Any], event: dict[str, Any], context: LambdaContext
    ) -> Any:
        if self._is_async:
            return await handler(event, context)
        slots = self._slots
        try:
            slots.acquire_nowait()  # no scheduling round when a slot is free (the usual case)
        except anyio.WouldBlock:
            await slots.acquire()
        try:
            return await self._threads.run(handler, event, context)
        finally:
            slots.release()

    def retire(self, retiring: bool = True) -> None:
        """A reload replaces or removes this function: a function created before this one
        closes (its replacement, or a renamed copy) runs its own init, not this one's."""
        retire_modules(self, retiring)

    async def aclose(self) -> None:
        """This execution environment ends: the next instance of the function runs its
        init again (release_modules), as a new Lambda execution environment does."""
        self._threads.close()
        release_modules(self)
        IN_PROCESS_ENVIRONMENT.release(self)


_UUID4_CLEAR = ~(0xF000 << 64) & ~(0xC000 << 48)
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """A random version-4 UUID, as Lambda's aws_request_id is, from the random module:
    an identifier, not a secret (like `lambda_environment.trace_id`), so no system call
    and no UUID object per invocation (~1 us against uuid4's ~3 us). The random module
    is reseeded in a forked child, so a child never repeats its parent's ids."""
    digits = f"{getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def log_stream_name() -> str:
    """AWS_LAMBDA_LOG_STREAM_NAME and context.log_stream_name of in-process functions."""
    return f"esm/{os.getpid()}"


def _init_failure(error: HandlerLoadError) -> FunctionFailure:
    message = str(error).partition(": ")[2] or str(error)
    missing = "missing on module" in message
    kind = "Runtime.HandlerNotFound" if missing else "Runtime.ImportModuleError"
    return FunctionFailure(kind, message)


class HandlerThreads:
    """Worker threads for a sync handler: each call runs in an idle thread, or a new one.

    Same contract as `anyio.to_thread.run_sync(..., abandon_on_cancel=True)`: the call sees
    a copy of the caller's contextvars, its exception is raised in the caller, and a caller
    cancelled (the function's timeout) stops waiting while the thread runs on to its end.
    Leaner: no extra scheduling round, no cancel scope, a lock-free queue per thread; on
    this hot path anyio's hop cost ~140 us of CPU per invocation, this one ~40 us (bench/).

    A handler whose last call returned within BRIEF_WAIT_SECONDS is first waited for on
    the loop thread with the GIL released, that long at most: the thread takes the GIL at
    once instead of waiting out the interpreter's switch interval behind the busy loop
    (a forced GIL hand-over and some six context switches per call, measured at ~300 us
    of CPU per invocation on the Kinesis hot path). A call that takes longer is awaited
    as before, under the caller's timeout; the loop is held up by at most that wait, and
    only for handlers that are quick.
    Used from one event loop thread; the caller bounds concurrency (a CapacityLimiter)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._idle: deque[_HandlerThread] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.abandoned = 0
        """Threads still running a call whose caller stopped waiting (timed out)."""
        self.quick = True
        """The last call returned within BRIEF_WAIT_SECONDS (the next one is waited for)."""

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self.close()  # threads report to the loop that started them
            self._loop, self._closed, self.abandoned = loop, False, 0
        now = time.monotonic()
        idle = self._idle
        while idle and now - idle[0].idle_since >= IDLE_THREAD_SECONDS:
            idle.popleft().stop()
        worker = idle.pop() if idle else _HandlerThread(self._name, loop, self)
        future: asyncio.Future[Any] = loop.create_future()
        worker.running = True
        quick = self.quick
        box: list[Any] = [] if quick else [_LATE]  # not waited for: the thread reports
        worker.jobs.put((future, contextvars.copy_context(), fn, args, box))
        if quick:
            outcome = worker.wait_briefly(box)
            if outcome is not None:
                self.finished(worker)
                return _unwrap(*outcome)
        try:
            return await future
        except BaseException:
            if worker.running and not worker.abandoned:  # cancelled: the thread runs on
                worker.abandoned = True
                self.abandoned += 1
            raise

    def finished(self, worker: _HandlerThread) -> None:
        """A thread's call ended (in the loop thread): it waits for the next one."""
        worker.running = False
        if worker.abandoned:
            worker.abandoned = False
            self.abandoned -= 1
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


_LATE = object()
"""Appended to a call's box by the loop thread when it stops waiting briefly: whichever
of the two appends comes first says who delivers the outcome (the box is append-only,
and list.append is atomic)."""


def _unwrap(result: Any, error: BaseException | None) -> Any:
    if error is None:
        return result
    if isinstance(error, StopIteration):  # a future cannot hold StopIteration
        raise RuntimeError(f"handler raised StopIteration: {error!r}")
    raise error


_Job = tuple[
    "asyncio.Future[Any]", contextvars.Context, Callable[..., Any], tuple[Any, ...], list[Any]
]


class _HandlerThread(threading.Thread):
    def __init__(self, name: str, loop: asyncio.AbstractEventLoop, pool: HandlerThreads) -> None:
        super().__init__(name=name, daemon=True)
        self.loop = loop
        self.pool = pool
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[None] = queue.SimpleQueue()
        """A call's end, for the loop thread waiting briefly for it."""
        self.idle_since = 0.0
        self.running = False
        self.abandoned = False
        self.start()

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        while (job := self.jobs.get()) is not None:
            future, context, fn, args, box = job
            result: Any = None
            error: BaseException | None = None
            started = time.monotonic()
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, as anyio does
                error = exc
            self.pool.quick = time.monotonic() - started < BRIEF_WAIT_SECONDS
            outcome = (result, error)
            box.append(outcome)
            if box[0] is outcome:
                self.done.put(None)  # the loop thread is waiting, or takes it in a moment
            else:
                try:
                    self.loop.call_soon_threadsafe(self._report, future, result, error)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return
            del job, future, context, fn, args, result, error, box, outcome

    def wait_briefly(self, box: list[Any]) -> tuple[Any, BaseException | None] | None:
        """The call's (result, error) if it ends within BRIEF_WAIT_SECONDS (the GIL is
        released meanwhile), else None: the thread then reports to the future."""
        try:
            self.done.get(timeout=BRIEF_WAIT_SECONDS)
        except queue.Empty:
            box.append(_LATE)
            if box[0] is _LATE:
                return None
            self.done.get()  # it finished just now: take its signal, which is on its way
        outcome: tuple[Any, BaseException | None] = box[0]
        return outcome

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
