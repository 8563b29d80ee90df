"""The Lambda Runtime API (2018-06-01) that esm serves to its execution environments.

One `RuntimeApiEndpoint` per execution environment, on 127.0.0.1 and an ephemeral port:
the port an environment was given says which environment is calling, so an environment
can only ever see and answer its own invocations. An `InvocationChannel` holds that
environment's side of the protocol, at most one invocation at a time, as in Lambda:

- `GET  /2018-06-01/runtime/invocation/next` blocks until an invocation is submitted and
  answers the event with `Lambda-Runtime-Aws-Request-Id`, `-Deadline-Ms`,
  `-Invoked-Function-Arn` and `-Trace-Id`;
- `POST /2018-06-01/runtime/invocation/{id}/response` (202) finishes it with the body;
- `POST /2018-06-01/runtime/invocation/{id}/error` (202) finishes it with the error document
  (errorType, errorMessage, stackTrace; `Lambda-Runtime-Function-Error-Type` header);
- `POST /2018-06-01/runtime/init/error` (202) fails the pending invocation, or the first
  one submitted after it, with the initialization error.

This module owns the protocol only. It does not start or stop processes, keep time or
decide retries: `esm.invokers.process` does.

Threat model: the endpoint binds loopback only, so nothing off the host reaches it. Any
process on the host can connect to a loopback port, though (and find it in
/proc/net/tcp), and Lambda's Runtime API has no authentication of its own: in Lambda it
is reachable only inside the sandbox. So each endpoint answers only its own
environment: every new connection is traced, through the kernel's sock_diag (or
/proc/net/tcp) and /proc/<pid>/fd, to the process holding the client's socket, which
must belong to the environment's session (the environment is started with setsid, so
its process id is the session id every child inherits). Any other client gets 403 and
never sees an event. A path secret in AWS_LAMBDA_RUNTIME_API would not do: Node's
aws-lambda-ric refuses anything but host:port there. The check needs Linux's /proc;
elsewhere every client is refused.
"""

from __future__ import annotations

import os
import socket
import struct
import time
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
from aiohttp import web

from esm.invokers.result import MAX_RESPONSE_BYTES, FunctionFailure, response_too_large

API_PREFIX = "/2018-06-01/runtime"
"""Lambda's limit for a synchronous invocation's response payload."""
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
MAX_ERROR_MESSAGE_CHARS = 65_536
OWNER_WAIT = 5.0
"""Seconds a request may wait for esm to learn which process it started (fork/exec)."""
PROC = Path("/proc")
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1


class Invocation:
    """One event on its way through an environment: submitted, delivered, finished."""

    def __init__(self, request_id: str, payload: bytes, timeout: float, function_arn: str) -> None:
        self.request_id = request_id
        self.payload = payload
        self.timeout = timeout
        self.function_arn = function_arn
        self.trace_id = _trace_id()
        self.deadline_ms = 0
        self.delivered_at: float | None = None
        self.delivered = anyio.Event()
        """Set when the runtime received the event (or the invocation finished before)."""
        self.finished = anyio.Event()
        self.response: bytes | None = None
        self.failure: FunctionFailure | None = None

    def deliver(self) -> None:
        self.delivered_at = time.monotonic()
        self.deadline_ms = int((time.time() + self.timeout) * 1000)
        self.delivered.set()

    def finish(self, response: bytes | None = None, failure: FunctionFailure | None = None) -> bool:
        """Record the outcome once; later outcomes (a response after a timeout) are ignored."""
        if self.finished.is_set():
            return False
        self.response = response
        self.failure = failure
        self.finished.set()
        self.delivered.set()
        return True


class InvocationChannel:
    """One environment's side of the Runtime API: at most one invocation in flight."""

    def __init__(self) -> None:
        self.pending: Invocation | None = None
        """Submitted, not yet fetched by the runtime."""
        self.current: Invocation | None = None
        """Fetched by the runtime, not yet answered."""
        self.init_failure: FunctionFailure | None = None
        self.closed = False
        self._wakeup = anyio.Event()

    def submit(self, invocation: Invocation) -> None:
        if self.init_failure is not None:
            invocation.finish(failure=self.init_failure)
            return
        self.pending = invocation
        self._wakeup.set()

    async def next(self) -> Invocation | None:
        """The next invocation for the runtime; None once the environment is being torn down."""
        while True:
            if self.closed:
                return None
            current = self.current
            if current is not None and current.finish(
                failure=FunctionFailure(
                    "Runtime.InvalidResponse",
                    f"RequestId: {current.request_id} Error: the runtime asked for the next "
                    "invocation without answering this one",
                )
            ):
                self.current = None
            invocation, self.pending = self.pending, None
            if invocation is not None and not invocation.finished.is_set():
                self.current = invocation
                invocation.deliver()
                return invocation
            self._wakeup = anyio.Event()
            await self._wakeup.wait()

    def answer(self, request_id: str) -> Invocation | None:
        """The in-flight invocation `request_id` names, taken off the channel; None if none."""
        current = self.current
        if current is None or current.request_id != request_id or current.finished.is_set():
            return None
        self.current = None
        return current

    def init_error(self, failure: FunctionFailure) -> None:
        self.init_failure = failure
        for invocation in (self.pending, self.current):
            if invocation is not None:
                invocation.finish(failure=failure)
        self.pending = self.current = None

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()


class RuntimeApiEndpoint:
    """The Runtime API for one environment: an aiohttp server on 127.0.0.1:<ephemeral>.

    Only clients in the session `admit()` names are served (see the module's threat
    model); the verdict is kept per connection, so a kept-alive client is traced once.
    """

    def __init__(self, channel: InvocationChannel, log: Any) -> None:
        self.channel = channel
        self._log = log
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.session: int | None = None
        self._admitted = anyio.Event()
        self._verdicts: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    @property
    def address(self) -> str:
        """What AWS_LAMBDA_RUNTIME_API holds: host:port, no scheme."""
        return f"127.0.0.1:{self.port}"

    def admit(self, session: int) -> None:
        """Serve the processes of this session (the environment's pid, as it runs setsid)."""
        self.session = session
        self._admitted.set()

    async def start(self) -> None:
        app = web.Application(
            client_max_size=MAX_RESPONSE_BYTES, middlewares=[self._only_the_environment]
        )
        app.router.add_get(f"{API_PREFIX}/invocation/next", self._next)
        app.router.add_post(f"{API_PREFIX}/invocation/{{request_id}}/response", self._response)
        app.router.add_post(f"{API_PREFIX}/invocation/{{request_id}}/error", self._error)
        app.router.add_post(f"{API_PREFIX}/init/error", self._init_error)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await runner.cleanup()
            raise
        self._runner = runner
        self.port = int(runner.addresses[0][1])

    @web.middleware
    async def _only_the_environment(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        """403 for any client that is not a process of this environment."""
        if not await self._allowed(request):
            return _error_response(
                403, "AccessDeniedException", "this Runtime API serves another environment"
            )
        return await handler(request)

    async def _allowed(self, request: web.Request) -> bool:
        transport = request.transport
        if transport is None:
            return False
        verdict = self._verdicts.get(transport)
        if verdict is not None:
            return verdict
        with anyio.move_on_after(OWNER_WAIT):
            await self._admitted.wait()
        peer = transport.get_extra_info("peername")
        session = self.session
        verdict = False
        if session is not None and isinstance(peer, tuple) and peer[0] == "127.0.0.1":
            verdict = await anyio.to_thread.run_sync(
                client_in_session, int(peer[1]), self.port, session
            )
        self._verdicts[transport] = verdict
        if not verdict:
            self._log.warning(
                "runtime_api.foreign_client_refused", peer_port=peer[1] if peer else None
            )
        return verdict

    async def aclose(self) -> None:
        self.channel.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _next(self, request: web.Request) -> web.StreamResponse:
        invocation = await self.channel.next()
        if invocation is None:
            return _error_response(
                500, "Runtime.Terminated", "the execution environment is stopping"
            )
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
            "Content-Type": "application/json",
        }
        return web.Response(body=invocation.payload, headers=headers)

    async def _response(self, request: web.Request) -> web.StreamResponse:
        invocation = self.channel.answer(request.match_info["request_id"])
        if invocation is None:
            return _unknown_request(request)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            invocation.finish(failure=response_too_large())
            return _error_response(413, "RequestEntityTooLarge", "response payload too large")
        invocation.finish(response=body)
        return _accepted()

    async def _error(self, request: web.Request) -> web.StreamResponse:
        invocation = self.channel.answer(request.match_info["request_id"])
        if invocation is None:
            return _unknown_request(request)
        body = await _read_capped(request)
        invocation.finish(
            failure=failure_from_error_body(body, request.headers.get(ERROR_TYPE_HEADER))
        )
        return _accepted()

    async def _init_error(self, request: web.Request) -> web.StreamResponse:
        body = await _read_capped(request)
        failure = failure_from_error_body(
            body, request.headers.get(ERROR_TYPE_HEADER), "Runtime.Unknown"
        )
        self._log.warning("environment.init_error", error_type=failure.error_type)
        self.channel.init_error(failure)
        return _accepted()


def client_in_session(client_port: int, server_port: int, session: int) -> bool:
    """Whether the socket 127.0.0.1:client_port -> 127.0.0.1:server_port is held open by a
    process of `session`: its inode (sock_diag, else /proc/net/tcp), then the session
    leader's file descriptors, then its other processes'. False when anything cannot be
    read (refuse, never guess)."""
    inode = _socket_inode(client_port, server_port)
    if inode is None:
        return False
    target = f"socket:[{inode}]"
    if _holds(session, target):  # most runtimes connect from their first process
        return True
    return any(_holds(pid, target) for pid in _session_members(session)[1:])


def _holds(pid: int, target: str) -> bool:
    """Whether one of `pid`'s file descriptors is `target` (socket:[inode])."""
    try:
        descriptors = os.listdir(PROC / str(pid) / "fd")
    except OSError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(PROC / str(pid) / "fd" / fd) == target:
                return True
        except OSError:
            continue
    return False


def _socket_inode(client_port: int, server_port: int) -> str | None:
    """The client socket's inode: asked of the kernel (sock_diag), else read off
    /proc/net/tcp (one line per socket on the host: ~8 ms with 3,000 of them)."""
    inode = _sock_diag_inode(client_port, server_port)
    return str(inode) if inode else _proc_net_tcp_inode(client_port, server_port)


def _sock_diag_inode(client_port: int, server_port: int) -> int | None:
    """One NETLINK_SOCK_DIAG request for exactly 127.0.0.1:client -> 127.0.0.1:server
    (inet_diag_req_v2 by socket id; struct layouts of linux/inet_diag.h)."""
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    sockid = (
        struct.pack("!HH", client_port, server_port)
        + loopback
        + loopback
        + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
    )
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)
    body = request + sockid
    header = struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(header + body)
            reply = nl.recv(65536)
    except (OSError, AttributeError):
        return None
    if len(reply) < 88:
        return None
    _, kind, _, _, _ = struct.unpack_from("=IHHII", reply)
    if kind != SOCK_DIAG_BY_FAMILY:
        return None
    (inode,) = struct.unpack_from("=I", reply, 84)
    return int(inode)


def _proc_net_tcp_inode(client_port: int, server_port: int) -> str | None:
    local = f"0100007F:{client_port:04X}"
    remote = f"0100007F:{server_port:04X}"
    try:
        lines = (PROC / "net" / "tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[1] == local and fields[2] == remote:
            return fields[9]
    return None


def _session_members(session: int) -> list[int]:
    """Pids whose session id (field 6 of /proc/<pid>/stat) is `session`, leader first."""
    members = [session]
    try:
        entries = os.listdir(PROC)
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit() or int(entry) == session:
            continue
        try:
            stat = (PROC / entry / "stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(session).encode():
            members.append(int(entry))
    return members


def failure_from_error_body(
    body: bytes,
    error_type: str | None = None,
    default_type: str = "Unhandled",
    handled: bool = False,
) -> FunctionFailure:
    """Lambda's error document from whatever a runtime or endpoint sent.

    A JSON object gives errorType, errorMessage and stackTrace (Node's `trace` too);
    anything else becomes the message, typed by `error_type` (the runtime's
    Lambda-Runtime-Function-Error-Type header) or `default_type`.
    """
    document: Any = None
    if body:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
    if isinstance(document, dict):
        stack = document.get("stackTrace", document.get("trace"))
        return FunctionFailure(
            error_type=str(document.get("errorType") or error_type or default_type),
            error_message=_message(document.get("errorMessage", "")),
            stack_trace=tuple(str(line) for line in stack) if isinstance(stack, list) else (),
            handled=handled,
        )
    text = body.decode("utf-8", errors="replace")
    return FunctionFailure(error_type or default_type, _message(text), handled=handled)


def _message(value: Any) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text[:MAX_ERROR_MESSAGE_CHARS]


async def _read_capped(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        return orjson.dumps(
            {
                "errorType": "Function.ResponseSizeTooLarge",
                "errorMessage": "error document too large",
            }
        )


def _accepted() -> web.Response:
    return web.json_response({"status": "OK"}, status=202)


def _unknown_request(request: web.Request) -> web.Response:
    request_id = request.match_info["request_id"]
    return _error_response(
        400, "InvalidRequestID", f"request {request_id} is not the invocation in progress here"
    )


def _error_response(status: int, error_type: str, message: str) -> web.Response:
    return web.json_response({"errorType": error_type, "errorMessage": message}, status=status)


def _trace_id() -> str:
    """An X-Ray trace header, as Lambda passes one to every invocation."""
    return (
        f"Root=1-{int(time.time()):08x}-{os.urandom(12).hex()};"
        f"Parent={os.urandom(8).hex()};Sampled=0"
    )
