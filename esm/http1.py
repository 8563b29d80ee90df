"""A small keep-alive HTTP/1.1 client for the per-batch AWS calls, parsed by httptools.

Every idle shard's GetRecords and every SQS receive/delete is one small POST; through
aiohttp's client each cost ~110 us of CPU, against ~20 us for the same request written on
an asyncio protocol and parsed by httptools (llhttp, the C parser uvicorn uses; bench/
percall.py measures both). This module only writes the request head and keeps connections:
parsing (status line, headers, chunked bodies, keep-alive rules) is httptools'.

Failures are `ConnectionError`s or `TimeoutError`, which esm.aws's retry policy retries.
A reused connection the server closed while it was idle is retried once on a new one
before anything is reported, as aiohttp and urllib3 do.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

import httptools

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 40.0
MAX_IDLE_CONNECTIONS = 1000


class HttpConnectionError(ConnectionError):
    """The connection failed or closed before a whole response arrived."""


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.started = False
        """Whether any byte of the current response has arrived."""
        self.closed = False
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(HttpConnectionError(f"connection closed: {exc or 'by the server'}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.chunks)
        self.chunks = []
        self.reusable = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = False
        self.reusable = False
        self.transport.write(data)
        return self.waiter


class HttpClient:
    """POSTs to one origin (scheme://host:port) over a pool of kept-alive connections."""

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint URL must be http(s)://host[:port], got {url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        default_port = self._port == (443 if self._tls else 80)
        self.host_header = self._host if default_port else f"{self._host}:{self._port}"
        self._path = parts.path or "/"
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if self._tls else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._head = f"POST {self._path} HTTP/1.1\r\nHost: {self.host_header}\r\n"

    async def post(self, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """Send one POST; return (status, body)."""
        request = self._request_bytes(headers, body)
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._exchange(connection, request)
            except HttpConnectionError:
                if connection.started:
                    raise
                # The server closed the idle connection: try a fresh one.
                break
        return await self._exchange(await self._connect(), request)

    def _request_bytes(self, headers: dict[str, str], body: bytes) -> bytes:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = f"{self._head}{lines}Content-Length: {len(body)}\r\n\r\n"
        return head.encode("latin-1") + body

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                transport, connection = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._tls else None,
                )
        except TimeoutError:
            raise HttpConnectionError(
                f"could not connect to {self.host_header} within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise HttpConnectionError(f"could not connect to {self.host_header}: {exc}") from exc
        # uvloop may call connection_made after create_connection has returned.
        connection.transport = transport
        return connection

    async def _exchange(self, connection: _Connection, request: bytes) -> tuple[int, bytes]:
        """One request on `connection`; it goes back to the pool only after a whole,
        keep-alive response (a cancelled or failed exchange leaves its state unknown)."""
        loop = asyncio.get_running_loop()
        waiter = connection.send(request)
        timer = loop.call_later(self._read_timeout, _expire, waiter, self._read_timeout)
        try:
            result = await waiter
        except BaseException:
            connection.close()
            raise
        finally:
            timer.cancel()
        if connection.reusable and not connection.closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()
        return result

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


def _expire(waiter: asyncio.Future[tuple[int, bytes]], seconds: float) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError(f"no response within {seconds:g} s"))
