"""The daemon's own HTTP endpoints: /metrics (Prometheus), /healthz (alive), /readyz,
and POST /-/reload.

A minimal HTTP/1.1 server on anyio streams: four routes do not justify a web framework
dependency. /readyz answers 200 only when every enabled mapping is polling, and lists the
ones that are not. POST /-/reload only asks the daemon to re-read its own config file (it
takes no body), so whoever can reach the address can at most trigger a reload; the
address is loopback by default.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import orjson
from anyio.abc import SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from esm.observability import get_logger

log = get_logger("esm.http")

MAX_REQUEST_BYTES = 16 * 1024


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        registry: CollectorRegistry,
        not_ready: Callable[[], list[str]],
        on_reload: Callable[[], None] | None = None,
        not_ready_reasons: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._registry = registry
        self._not_ready = not_ready
        self._on_reload = on_reload
        self._reasons = not_ready_reasons

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port (useful with port 0)."""
        listener = await anyio.create_tcp_listener(local_host=self.host, local_port=self.port)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            log.info("http.listening", address=f"{self.host}:{self.port}")
            task_status.started(self.port)
            await listener.serve(self._handle)

    async def _handle(self, stream: SocketStream) -> None:
        async with stream:
            try:
                with anyio.fail_after(10):
                    request = await _read_head(stream)
                method, _, rest = request.partition(" ")
                path = rest.split(" ", 1)[0].split("?", 1)[0]
                status, content_type, body = self._route(method, path)
                head = (
                    f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                await stream.send(head.encode() + (body if method != "HEAD" else b""))
            except (TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError, ValueError):
                return

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if path == "/-/reload" and method == "POST":
            if self._on_reload is None:
                return (
                    "409 Conflict",
                    "text/plain",
                    b"this daemon was not started from a config file\n",
                )
            self._on_reload()
            return "202 Accepted", "text/plain", b"reload requested\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            waiting = self._not_ready()
            answer: dict[str, object] = {"ready": not waiting, "not_ready": waiting}
            if waiting and self._reasons is not None and (reasons := self._reasons()):
                answer["reasons"] = reasons  # mapping -> why, where its family says
            body = orjson.dumps(answer) + b"\n"
            status = "200 OK" if not waiting else "503 Service Unavailable"
            return status, "application/json", body
        return "404 Not Found", "text/plain", b"not found\n"


async def _read_head(stream: SocketStream) -> str:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive()
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            raise ValueError("request head too large")
    return data.split(b"\n", 1)[0].decode("latin-1").strip()
