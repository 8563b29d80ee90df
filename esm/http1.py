"""A small keep-alive HTTP/1.1 client for the per-batch AWS calls, parsed by httptools.

Every idle shard's GetRecords and every SQS receive/delete is one small POST; through
aiohttp's client each cost ~110 us of CPU, against ~20 us for the same request written on
an asyncio protocol and parsed by httptools (llhttp, the C parser uvicorn uses; bench/
percall.py measures both). This module only writes the request head and keeps connections:
parsing (status line, headers, chunked bodies, keep-alive rules) is httptools'.

The network path is botocore's (esm.aws_json reads it from the client): an `http://` proxy
(absolute-form requests for an http endpoint, a CONNECT tunnel for https, basic credentials
from the proxy URL) and TLS verified against botocore's CA bundle, or the one AWS_CA_BUNDLE /
`ca_bundle` / REQUESTS_CA_BUNDLE names, with SNI and the hostname checked.

Failures are `ConnectionError`s or `TimeoutError`, which esm.aws's retry policy retries.
A reused connection the server closed while it was idle is retried once on a new one
before anything is reported, as aiohttp and urllib3 do.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import httptools
from botocore.httpsession import get_cert_path

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 40.0
MAX_IDLE_CONNECTIONS = 1000
_FRAMING_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
_MAX_TUNNEL_HEAD = 16384


class HttpConnectionError(ConnectionError):
    """The connection failed or closed before a whole response arrived."""


class HttpTlsError(HttpConnectionError):
    """The TLS handshake failed, most often an untrusted or mismatched certificate."""


class HttpProxyError(HttpConnectionError):
    """The proxy refused to open a tunnel to the endpoint."""


@dataclass(frozen=True)
class Proxy:
    """An `http://[user:password@]host[:port]` forward proxy (as botocore accepts it)."""

    host: str
    port: int
    authorization: str | None = None
    """The `Proxy-Authorization` value, from the URL's user and password."""

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """botocore's reading: a URL without a scheme is http (`host:3128`, `//host`)."""
        scheme, sep, rest = url.partition("://")
        if sep and (scheme.lower() != "http" or "://" in rest):  # socks5://, https://, ...
            raise ValueError(f"proxy must be http://host[:port], got {_masked(url)!r}")
        if sep:
            url = "http://" + rest
        else:
            url = "http:" + url if url.startswith("//") else "http://" + url
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"proxy must be http://host[:port], got {_masked(url)!r}")
        authorization = None
        if parts.username is not None and parts.password is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password)}".encode()
            authorization = "Basic " + base64.b64encode(pair).decode()
        return cls(parts.hostname, parts.port or 80, authorization)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def authority(host: str, port: int | None, default_port: int | None) -> str:
    """A URL's host (and port, unless the scheme's default) as the Host header and SigV4's
    `host` name it: an IPv6 literal in brackets (RFC 9110 7.2, RFC 3986 3.2.2), as
    botocore writes it; `urlsplit` gives the literal without them."""
    if ":" in host:
        host = f"[{host}]"
    return host if port in (None, default_port) else f"{host}:{port}"


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


_contexts: dict[bool | str, ssl.SSLContext] = {}


def tls_context(verify: bool | str = True) -> ssl.SSLContext:
    """The client context botocore would build for `verify`: True checks against botocore's
    bundle (certifi's when installed), a path against that file or directory of CAs, False
    checks nothing. Hostname checking is on whenever the certificate is verified.

    Cached per value: loading a bundle costs ~10 ms and a daemon may open many clients."""
    context = _contexts.get(verify)
    if context is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        if verify is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            path = get_cert_path(verify)
            try:
                if os.path.isdir(path):
                    context.load_verify_locations(capath=path)
                else:
                    context.load_verify_locations(cafile=path)
            except (OSError, ssl.SSLError) as exc:
                raise HttpTlsError(
                    f"CA bundle {path!r} (AWS_CA_BUNDLE, the profile's ca_bundle or"
                    f" REQUESTS_CA_BUNDLE) cannot be loaded: {exc}"
                ) from exc
        _contexts[verify] = context
    return context


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.tunnel: asyncio.Future[bytes] | None = None
        """Pending while a proxy's answer to CONNECT is read (before TLS starts)."""
        self.head = b""
        self.chunks: list[bytes] = []
        self.started = False
        """Whether any byte of the current response has arrived."""
        self.headers_done = False
        self.framed = False
        """Whether the response has a Content-Length or Transfer-Encoding (else EOF ends it)."""
        self.closed = False
        self.reusable = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            if self.tunnel is not None:
                self._tunnel_data(data)
            else:
                self.close()  # unasked-for bytes (e.g. a 408 before closing): unusable
            return
        self.started = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(HttpConnectionError(f"bad HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and self.headers_done and not self.framed and exc is None:
            self.on_message_complete()  # a body delimited by the end of the connection
            return
        self._fail(HttpConnectionError(f"connection closed: {exc or 'by the server'}"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second response in the same read: nobody asked for it
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in _FRAMING_HEADERS:
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = b"".join(self.chunks)
        self.chunks = []
        self.reusable = self.parser.should_keep_alive()
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self.parser.get_status_code(), body))

    def _tunnel_data(self, data: bytes) -> None:
        assert self.tunnel is not None
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > _MAX_TUNNEL_HEAD:
                self._fail(HttpProxyError("the proxy's answer to CONNECT has no end"))
            return
        tunnel, self.tunnel = self.tunnel, None
        if not tunnel.done():
            tunnel.set_result(self.head[:end])

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None and not tunnel.done():
            tunnel.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def open_tunnel(self, request: bytes) -> asyncio.Future[bytes]:
        """Send CONNECT; the future gets the proxy's status line and headers."""
        assert self.transport is not None
        self.tunnel = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self.tunnel

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.started = False
        self.headers_done = False
        self.framed = False
        self.reusable = False
        self.transport.write(data)
        return self.waiter


class HttpClient:
    """POSTs to one origin (scheme://host:port) over a pool of kept-alive connections,
    directly or through an http:// forward proxy."""

    def __init__(
        self,
        url: str,
        *,
        proxy: Proxy | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint URL must be http(s)://host[:port], got {url!r}")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        self.host_header = authority(self._host, self._port, 443 if self._tls else 80)
        self._path = parts.path or "/"
        self._ssl: ssl.SSLContext | None = None
        if self._tls:
            self._ssl = ssl_context or tls_context(True)
        self._proxy = proxy
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._idle: list[_Connection] = []
        self._head = f"POST {self._path} HTTP/1.1\r\nHost: {self.host_header}\r\n"
        if proxy is not None and not self._tls:
            # A plain-http request through a proxy names its whole URL (RFC 9112 3.2.2).
            target = f"http://{self.host_header}{self._path}"
            self._head = f"POST {target} HTTP/1.1\r\nHost: {self.host_header}\r\n"
            if proxy.authorization:
                self._head += f"Proxy-Authorization: {proxy.authorization}\r\n"

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
        lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        head = f"{self._head}{lines}Content-Length: {len(body)}\r\n\r\n"
        return head.encode("latin-1") + body

    def _where(self) -> str:
        if self._proxy is None:
            return self.host_header
        return f"{self.host_header} through proxy {self._proxy}"

    async def _connect(self) -> _Connection:
        try:
            async with asyncio.timeout(self._connect_timeout):
                return await self._open()
        except TimeoutError:
            raise HttpConnectionError(
                f"could not connect to {self._where()} within {self._connect_timeout:g} s"
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise HttpTlsError(
                f"TLS certificate of {self.host_header} refused: {exc.verify_message}"
                " (trust its CA with AWS_CA_BUNDLE or the profile's ca_bundle)"
            ) from exc
        except ssl.SSLError as exc:
            raise HttpTlsError(f"TLS handshake with {self.host_header} failed: {exc}") from exc
        except HttpConnectionError:
            raise
        except OSError as exc:
            raise HttpConnectionError(f"could not connect to {self._where()}: {exc}") from exc

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        if self._proxy is None:
            transport, connection = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._tls else None,
            )
            # uvloop may call connection_made after create_connection has returned.
            connection.transport = transport
            return connection
        transport, connection = await loop.create_connection(
            _Connection, self._proxy.host, self._proxy.port
        )
        connection.transport = transport
        if self._ssl is None:
            return connection
        try:
            await self._tunnel(connection)
            tls = await loop.start_tls(transport, connection, self._ssl, server_hostname=self._host)
        except BaseException:
            transport.close()
            raise
        if tls is None:  # only when the loop closed under us
            raise HttpConnectionError(f"TLS to {self._where()} did not start")
        connection.transport = tls
        return connection

    async def _tunnel(self, connection: _Connection) -> None:
        """CONNECT host:port through the proxy; anything but a 2xx is a clear error."""
        assert self._proxy is not None
        target = authority(self._host, self._port, None)
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if self._proxy.authorization:
            request += f"Proxy-Authorization: {self._proxy.authorization}\r\n"
        try:
            head = await connection.open_tunnel(f"{request}\r\n".encode("latin-1"))
        except HttpProxyError:
            raise
        except HttpConnectionError as exc:
            raise HttpProxyError(
                f"proxy {self._proxy} closed the connection before answering CONNECT {target}"
            ) from exc
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].startswith("2"):
            hint = ""
            if len(fields) > 1 and fields[1] == "407":
                hint = " (put user:password in the proxy URL, as for boto3)"
            raise HttpProxyError(
                f"proxy {self._proxy} refused CONNECT {target}: {status_line!r}{hint}"
            )

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
