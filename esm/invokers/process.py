"""`kind = "process"`: execution environments that speak the Lambda Runtime API.

An environment is a process running the function's `command` (by default esm's built-in
Python runtime client; `awslambdaric` or a custom runtime's `./bootstrap` work the same
way) with the standard Lambda environment variables and `AWS_LAMBDA_RUNTIME_API` pointing
at its own loopback endpoint (`esm.invokers.runtime_api`). Lambda's rules, as far as a
host process can follow them:

- an environment runs one invocation at a time and stays warm for the next; up to the
  function's concurrency (`reserved_concurrent_executions`, else DEFAULT_CONCURRENCY) run
  at once, started on demand;
- the runtime has INIT_TIMEOUT seconds (Lambda's init limit) to ask for its event, then
  the function's `timeout` to answer it; at the timeout the environment is killed and the
  invocation fails with `Task timed out after N.NN seconds`; a fresh one starts on demand;
- an init error (`/runtime/init/error`) or an environment that exits mid-invocation is a
  function error carrying the runtime's message (`Runtime.ExitError` for an exit), and
  that environment is replaced; an environment that exits before it asked for its first
  event fails the invocation at once (not after INIT_TIMEOUT), and the error and the
  `environment.exited` log line carry the last lines of its stderr;
- `memory_size` becomes RLIMIT_DATA for the process (its private writable memory: heap,
  anonymous mappings), set in a preexec_fn: allocations beyond it fail (Python raises
  MemoryError, Node "allocation failed"). Not RLIMIT_AS (address space): V8 reserves
  about 1 GB of address space it never touches, so Node could not even start under
  Lambda's 128 MB default that way (it hung before its first /invocation/next);
- when esm runs as root, the runtime starts with no capability (its bounding set is
  emptied before exec; it keeps uid 0), so it cannot read the non-dumpable daemon's
  /proc/<pid>/environ, maps or mem (see `protect_daemon`);
- each environment gets its own temporary directory as TMPDIR (removed with it); /tmp
  itself is shared with the host;
- the process does not inherit esm's environment, except PATH, HOME, LANG, LC_ALL and
  the AWS credential variables (standing in for an execution role's credentials); the
  function's `environment` is applied on top, then the variables Lambda reserves;
- its stdout and stderr are forwarded line by line as `function.log` events;
- an environment left idle for IDLE_LIFETIME seconds is stopped, as Lambda reclaims idle
  environments (it doesn't say when; minutes, not hours): a burst's extra environments
  don't hold their memory for good, and the next invocation after a quiet spell starts cold.

Process handling is callback-driven (an asyncio SubprocessProtocol), so no task outlives
the call that needs it: an invocation waits for its own outcome, and `aclose()` kills
every environment (and waits for the stopping of idle ones already under way). The
asyncio backend is required (as for aiobotocore).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson

from esm import lambda_environment
from esm.config import DaemonConfig, FunctionConfig
from esm.invokers.result import FunctionFailure, InvocationResult
from esm.invokers.runtime_api import Invocation, InvocationChannel, RuntimeApiEndpoint
from esm.observability import get_logger

log = get_logger("esm.process")

DEFAULT_CONCURRENCY = 10
"""Environments per function when reserved_concurrent_executions is unset."""
INIT_TIMEOUT = 10.0
"""Seconds a runtime has to ask for its event (Lambda's init phase limit)."""
KILL_WAIT = 5.0
IDLE_LIFETIME = 600.0
"""Seconds an environment may wait unused before it is stopped."""
MAX_LOG_LINE = 16_384
EXIT_OUTPUT_WAIT = 0.2
"""Seconds an exit waits for the environment's last output before it is reported."""
STDERR_TAIL_LINES = 5
STDERR_TAIL_CHARS = 1000
"""How much of a dead environment's stderr goes into its error message."""
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
INHERITED_VARIABLES = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
BUILT_IN_CLIENT = Path(__file__).resolve().parent.parent / "runtime_client.py"


def default_command(handler: str) -> tuple[str, ...]:
    """esm's built-in client, run by path with esm's interpreter: needs nothing installed."""
    return (sys.executable, str(BUILT_IN_CLIENT), handler)


class EnvironmentStartError(Exception):
    def __init__(self, failure: FunctionFailure) -> None:
        super().__init__(failure.error_message)
        self.failure = failure


class _Output(asyncio.SubprocessProtocol):
    """Forwards the environment's stdout/stderr as log events and notices its exit."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self._partial: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        buffer = self._partial.setdefault(fd, bytearray())
        buffer.extend(data)
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) >= MAX_LOG_LINE:
                    self._emit(fd, bytes(buffer[:MAX_LOG_LINE]))
                    del buffer[:MAX_LOG_LINE]
                    continue
                return
            self._emit(fd, bytes(buffer[:end]))
            del buffer[: end + 1]

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        buffer = self._partial.get(fd)
        if buffer:
            self._emit(fd, bytes(buffer))
            buffer.clear()

    def process_exited(self) -> None:
        # Its last stderr lines may still be in the pipes: wait for them (connection_lost),
        # but not for long, as a surviving grandchild may hold the pipes open.
        asyncio.get_running_loop().call_later(EXIT_OUTPUT_WAIT, self._exited)

    def connection_lost(self, exc: Exception | None) -> None:
        self._exited()

    def _exited(self) -> None:
        if not self.environment.exited.is_set():
            self.environment.on_exit()

    def _emit(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", errors="replace").rstrip("\r")
        if fd == 2:
            self.environment.stderr_tail.append(text)
        self.environment.log.info(
            "function.log", stream="stdout" if fd == 1 else "stderr", line=text
        )


class Environment:
    """One execution environment: a process, its Runtime API endpoint and its TMPDIR."""

    def __init__(self, env_id: str, endpoint: RuntimeApiEndpoint, tmpdir: str, log: Any) -> None:
        self.id = env_id
        self.endpoint = endpoint
        self.channel = endpoint.channel
        self.tmpdir = tmpdir
        self.log = log
        self.transport: asyncio.SubprocessTransport | None = None
        self.pid = 0
        self.exited = anyio.Event()
        self.returncode: int | None = None
        self.invocations = 0
        self.asked = False
        """Whether the runtime ever asked for an event (its init phase is over)."""
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.discarded = False
        self.killed = False
        self.retirement: asyncio.TimerHandle | None = None
        """Set while idle: stops the environment when it stays unused too long."""

    @property
    def alive(self) -> bool:
        return not self.exited.is_set() and not self.discarded

    def on_exit(self) -> None:
        self.returncode = self.transport.get_returncode() if self.transport is not None else None
        self.exited.set()
        if not self.discarded and not self.killed:  # esm's own kills are logged elsewhere
            self.log.warning(
                "environment.exited",
                returncode=self.returncode,
                during_init=not self.asked,
                stderr_tail=list(self.stderr_tail),
            )
        for invocation in (self.channel.pending, self.channel.current):
            if invocation is not None:
                invocation.finish(failure=self.exit_failure(invocation.request_id))

    def exit_failure(self, request_id: str) -> FunctionFailure:
        """Lambda's Runtime.ExitError; before the first /next, with the stderr tail (why
        the runtime could not start is what the user needs, and Lambda logs it too)."""
        code = self.returncode
        if code is None or code == 0:
            reason = "Runtime exited without providing a reason"
        elif code < 0:
            reason = f"Runtime exited with error: signal: {_signal_name(-code)}"
        else:
            reason = f"Runtime exited with error: exit status {code}"
        message = f"RequestId: {request_id} Error: {reason}"
        if not self.asked and self.stderr_tail:
            message += "; stderr: " + " | ".join(self.stderr_tail)[-STDERR_TAIL_CHARS:]
        return FunctionFailure("Runtime.ExitError", message)

    def kill(self) -> None:
        """SIGKILL the whole process group (a bootstrap's children too)."""
        self.killed = True
        if self.pid and not self.exited.is_set():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)


class ProcessInvoker:
    """A pool of execution environments for one function."""

    def __init__(
        self,
        function: FunctionConfig,
        region: str,
        idle_lifetime: float = IDLE_LIFETIME,
        daemon: DaemonConfig | None = None,
    ) -> None:
        self.function = function
        self.daemon = daemon
        """Feeds the Lambda environment (esm.lambda_environment): endpoint, credentials."""
        self.name = function.name
        self.arn = function.arn
        self.timeout = function.timeout
        self.concurrency = function.reserved_concurrent_executions or DEFAULT_CONCURRENCY
        self.command = function.command or default_command(function.handler)
        self.code_path = Path(function.code_path).resolve()
        self.region = region
        self._slots = anyio.CapacityLimiter(self.concurrency)
        self.idle_lifetime = idle_lifetime
        self._idle: list[Environment] = []
        self._environments: set[Environment] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self._log = log.bind(function=self.name)

    async def invoke(self, event: dict[str, Any]) -> InvocationResult:
        request_id = str(uuid.uuid4())
        if self._closed:
            return InvocationResult(request_id, 0.0, throttled=True)
        invocation = Invocation(request_id, orjson.dumps(event), self.timeout, self.arn)
        async with self._slots:
            started = time.monotonic()
            try:
                environment = await self._take()
            except EnvironmentStartError as exc:
                self._log.warning("environment.start_failed", error_type=exc.failure.error_type)
                return InvocationResult(request_id, time.monotonic() - started, failure=exc.failure)
            reusable = False
            try:
                reusable = await self._run(environment, invocation)
            finally:
                if reusable and not self._closed:
                    self._park(environment)
                else:
                    with anyio.CancelScope(shield=True):
                        await self._discard(environment)
        failure = invocation.failure
        if self._closed and failure is not None and failure.error_type == "Runtime.ExitError":
            # esm killed the environment (shutdown, reload): the function could not finish.
            return InvocationResult(request_id, time.monotonic() - started, throttled=True)
        return _result(invocation, started)

    async def _run(self, environment: Environment, invocation: Invocation) -> bool:
        """Hand the event over and wait for its outcome; True if the environment stays warm."""
        environment.invocations += 1
        environment.channel.submit(invocation)
        if environment.exited.is_set():  # died before this submit: no exit callback to come
            invocation.finish(failure=environment.exit_failure(invocation.request_id))
            return False
        with anyio.move_on_after(INIT_TIMEOUT):
            await invocation.delivered.wait()
        if not invocation.delivered.is_set():
            invocation.finish(
                failure=FunctionFailure(
                    "Runtime.Unavailable",
                    f"RequestId: {invocation.request_id} Error: the runtime did not ask for the "
                    f"event within {INIT_TIMEOUT:g} seconds (GET /runtime/invocation/next)",
                )
            )
            self._log.warning(
                "environment.unresponsive",
                environment=environment.id,
                stderr_tail=list(environment.stderr_tail),
            )
            return False
        environment.asked = True
        if not invocation.finished.is_set():
            assert invocation.delivered_at is not None
            remaining = invocation.delivered_at + self.timeout - time.monotonic()
            with anyio.move_on_after(remaining):
                await invocation.finished.wait()
        if invocation.finish(
            failure=FunctionFailure(
                "Sandbox.Timedout", f"Task timed out after {self.timeout:.2f} seconds"
            )
        ):
            self._log.warning(
                "environment.timed_out",
                environment=environment.id,
                request_id=invocation.request_id,
            )
            return False
        return environment.alive and environment.channel.init_failure is None

    def _park(self, environment: Environment) -> None:
        """Keep a warm environment for the next invocation, until it idles too long."""
        self._idle.append(environment)
        environment.retirement = asyncio.get_running_loop().call_later(
            self.idle_lifetime, self._retire, environment
        )

    def _retire(self, environment: Environment) -> None:
        if environment not in self._idle or self._closed:
            return
        self._idle.remove(environment)
        environment.log.info("environment.idle_expired", idle_s=self.idle_lifetime)
        task = asyncio.get_running_loop().create_task(self._discard(environment))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _take(self) -> Environment:
        while self._idle:
            environment = self._idle.pop()  # the most recently used: the others may retire
            if environment.retirement is not None:
                environment.retirement.cancel()
            if environment.alive:
                return environment
            await self._discard(environment)
        return await self._start()

    async def _start(self) -> Environment:
        env_id = uuid.uuid4().hex[:12]
        env_log = self._log.bind(environment=env_id)
        tmpdir = tempfile.mkdtemp(prefix=f"esm-{_safe(self.name)}-{env_id}-")
        endpoint = RuntimeApiEndpoint(InvocationChannel(), env_log)
        environment = Environment(env_id, endpoint, tmpdir, env_log)
        try:
            await endpoint.start()
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await loop.subprocess_exec(
                    lambda: _Output(environment),
                    *self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=str(self.code_path),
                    env=self._environment_variables(env_id, endpoint.address, tmpdir),
                    start_new_session=True,
                    preexec_fn=_limits(self.function.memory_size),
                )
            except OSError as exc:  # missing, not executable, bad cwd: Lambda's wording
                raise EnvironmentStartError(
                    FunctionFailure(
                        "Runtime.InvalidEntrypoint",
                        f"Error: fork/exec {self.command[0]}: {exc.strerror or exc}",
                    )
                ) from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await endpoint.aclose()
                await anyio.to_thread.run_sync(shutil.rmtree, tmpdir, True)
            raise
        environment.transport = transport
        environment.pid = transport.get_pid()
        endpoint.admit(environment.pid)  # start_new_session: the pid is the session id
        if transport.get_returncode() is not None:
            environment.on_exit()
        self._environments.add(environment)
        env_log.info("environment.started", pid=environment.pid, command=self.command[0])
        return environment

    def _environment_variables(self, env_id: str, api_address: str, tmpdir: str) -> dict[str, str]:
        """Lambda's environment (esm.lambda_environment) plus what this host adds: the
        inherited variables, TZ, TMPDIR and the environment's Runtime API address."""
        inherited = {k: os.environ[k] for k in INHERITED_VARIABLES if k in os.environ}
        inherited.setdefault("PATH", os.defpath)
        inherited.update({"TZ": ":UTC", "PYTHONUNBUFFERED": "1"})
        function = self.function
        variables = lambda_environment.environment(
            function,
            self.daemon,
            region=self.region,
            inherited=inherited,
            log_stream=f"esm/{env_id}",
            execution_env=(
                lambda_environment.python_execution_env() if function.command is None else None
            ),
        )
        variables.update(
            {
                "AWS_LAMBDA_RUNTIME_API": api_address,
                "LAMBDA_TASK_ROOT": str(self.code_path),
                "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
                "TMPDIR": tmpdir,
            }
        )
        return variables

    async def _discard(self, environment: Environment) -> None:
        """Kill an environment and free its port and TMPDIR (idempotent)."""
        if environment.discarded:
            return
        environment.discarded = True
        self._environments.discard(environment)
        environment.channel.close()
        environment.kill()
        with anyio.move_on_after(KILL_WAIT):
            await environment.exited.wait()
        if environment.transport is not None:
            environment.transport.close()
        await environment.endpoint.aclose()
        await anyio.to_thread.run_sync(shutil.rmtree, environment.tmpdir, True)
        environment.log.info(
            "environment.stopped",
            pid=environment.pid,
            returncode=environment.returncode,
            invocations=environment.invocations,
        )

    async def aclose(self) -> None:
        """Kill every environment (the daemon calls this at shutdown)."""
        self._closed = True
        environments = list(self._environments)
        for environment in self._idle:
            if environment.retirement is not None:
                environment.retirement.cancel()
        self._idle.clear()
        for environment in environments:
            environment.kill()
        with anyio.CancelScope(shield=True):
            for environment in environments:
                await self._discard(environment)
            if self._retiring:
                await asyncio.gather(*self._retiring)


def _result(invocation: Invocation, started: float) -> InvocationResult:
    """Lambda's view of the outcome: the response parsed as JSON, or the error document."""
    begun = invocation.delivered_at or started
    duration = time.monotonic() - begun
    if invocation.failure is not None:
        return InvocationResult(invocation.request_id, duration, failure=invocation.failure)
    body = invocation.response or b""
    if not body.strip():
        return InvocationResult(invocation.request_id, duration)
    try:
        response = orjson.loads(body)
    except orjson.JSONDecodeError:
        return InvocationResult(invocation.request_id, duration, invalid_response=True)
    return InvocationResult(invocation.request_id, duration, response=response)


def _limits(memory_mb: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: memory limit, die with esm and, under
    root, no capability (the last two on Linux only)."""
    limit = memory_mb * 1024 * 1024
    prctl = _prctl()
    capabilities = range(_last_capability() + 1) if os.geteuid() == 0 else range(0)

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            # Root: empty the bounding set, so the runtime starts with no capability, as
            # Lambda's do (CAP_SYS_PTRACE alone is not enough: /proc/<esm>/environ stays
            # readable to a root process holding the others).
            for capability in capabilities:
                prctl(PR_CAPBSET_DROP, capability, 0, 0, 0)

    return apply


PR_SET_PDEATHSIG = 1
"""prctl(PR_SET_PDEATHSIG, SIGKILL): environments do not outlive a killed daemon."""


def _last_capability() -> int:
    """The highest capability number this kernel knows (CAP_LAST_CAP)."""
    try:
        return int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    except (OSError, ValueError):
        return 40


def _prctl() -> Callable[..., int] | None:
    """libc's prctl, on Linux; looked up before fork (no import in the child)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return prctl


def protect_daemon() -> bool:
    """Make esm's own process non-dumpable (prctl PR_SET_DUMPABLE 0), once at start-up.

    Then /proc/<esm pid>/environ, mem, maps and fd links are closed to processes of the same
    uid, which is what environments are: a hostile function cannot read the daemon's
    environment or memory (http bearer tokens, credentials). A root environment could
    still with its capabilities, which `_limits` drops. Children are dumpable again after
    exec. True when it took effect (Linux).
    """
    prctl = _prctl()
    if prctl is None:
        return False
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0


def _signal_name(number: int) -> str:
    try:
        return {signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault"}.get(
            signal.Signals(number), signal.Signals(number).name
        )
    except ValueError:
        return str(number)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:40]
