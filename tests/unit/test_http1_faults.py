"""esm.http1 against a raw socket server that misbehaves the ways real peers do: resets,
half-closes, Connection: close, bodies ended by EOF, chunked bodies cut anywhere. Each case
ends in a response, a retry or a clear `ConnectionError`, never a hang (the read timeout is
the backstop, set high so that a hang would show as a failure of the test's own timeout).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from esm.aws import RetryPolicy, is_retryable
from esm.http1 import HttpClient, HttpConnectionError, Proxy

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    if request.param[1]["use_uvloop"]:
        pytest.importorskip("uvloop", reason="uvloop is an optional extra (esm[fast])")
    return request.param


class RawServer:
    """Serves connection n with `script[n]` (the last one repeats); counts connections."""

    def __init__(self) -> None:
        self.script: list[Behaviour] = []
        self.connections = 0
        self.url = ""

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        behaviour = self.script[min(self.connections, len(self.script) - 1)]
        self.connections += 1
        try:
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    state = RawServer()
    server = await asyncio.start_server(state._handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield state


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return await reader.readexactly(length)


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), as a crashed peer or a load balancer does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        body = await read_request(reader)
        writer.write(ok(body))
        await writer.drain()


def client(raw: RawServer) -> HttpClient:
    return HttpClient(raw.url, read_timeout=60)


async def test_a_reset_mid_response_is_a_retryable_connection_error(raw: RawServer) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        reset(writer)

    raw.script = [cut]
    c = client(raw)
    with pytest.raises(HttpConnectionError) as caught:
        await c.post({}, b"x")
    assert is_retryable(caught.value)
    assert c._idle == []


async def test_esm_aws_retry_policy_retries_a_reset_on_a_new_connection(raw: RawServer) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Le")
        await writer.drain()
        reset(writer)

    raw.script = [cut, keep_alive]
    c = client(raw)
    policy = RetryPolicy(initial=0.01, maximum=0.01)
    assert await policy.call("Test", lambda: c.post({}, b"again")) == (200, b"again")
    assert raw.connections == 2
    await c.aclose()


async def test_a_kept_alive_connection_reset_while_idle_is_replaced(raw: RawServer) -> None:
    async def then_reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(await read_request(reader)))
        await writer.drain()
        reset(writer)

    raw.script = [then_reset, keep_alive]
    c = client(raw)
    assert await c.post({}, b"1") == (200, b"1")
    # Whether or not the RST has been seen yet, the next post succeeds on a new connection.
    assert await c.post({}, b"2") == (200, b"2")
    assert raw.connections == 2
    await c.aclose()


async def test_a_half_closed_keep_alive_connection_is_not_reused(raw: RawServer) -> None:
    async def half_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(await read_request(reader)))
        await writer.drain()
        writer.write_eof()  # FIN: the server will say nothing more, but still reads
        while await reader.read(65536):
            pass

    raw.script = [half_close, keep_alive]
    c = client(raw)
    assert await c.post({}, b"1") == (200, b"1")
    assert await c.post({}, b"2") == (200, b"2")
    assert raw.connections == 2
    await c.aclose()


async def test_connection_close_after_the_response_opens_a_new_connection(raw: RawServer) -> None:
    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(await read_request(reader), b"Connection: close\r\n"))
        await writer.drain()

    raw.script = [once]
    c = client(raw)
    for i in range(3):
        assert await c.post({}, b"%d" % i) == (200, b"%d" % i)
    assert raw.connections == 3
    assert c._idle == []


async def test_a_body_ended_by_the_connection_closing_comes_back_whole(raw: RawServer) -> None:
    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for part in (b"no ", b"length ", b"given"):
            writer.write(part)
            await writer.drain()

    raw.script = [until_eof]
    c = client(raw)
    assert await c.post({}, b"") == (200, b"no length given")
    assert c._idle == []


async def test_a_chunked_body_split_anywhere_comes_back_whole_and_keeps_alive(
    raw: RawServer,
) -> None:
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n"
    )

    async def byte_by_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            for i in range(len(response)):
                writer.write(response[i : i + 1])
                await writer.drain()

    raw.script = [byte_by_byte]
    c = client(raw)
    for _ in range(2):
        assert await c.post({}, b"") == (200, b"hello 0123456789")
    assert raw.connections == 1
    await c.aclose()


@pytest.mark.parametrize(
    "truncated",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Len",
    ],
    ids=["mid-chunk", "before-last-chunk", "short-content-length", "mid-headers"],
)
async def test_a_response_cut_by_a_clean_close_is_a_clear_error(
    raw: RawServer, truncated: bytes
) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(truncated)
        await writer.drain()

    raw.script = [cut]
    c = client(raw)
    with pytest.raises(HttpConnectionError, match="connection closed"):
        await c.post({}, b"")


async def test_garbage_instead_of_http_is_a_clear_error(raw: RawServer) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        await reader.read()

    raw.script = [garbage]
    with pytest.raises(HttpConnectionError, match="bad HTTP response"):
        await client(raw).post({}, b"")


async def test_bytes_sent_on_an_idle_connection_retire_it(raw: RawServer) -> None:
    served = asyncio.Event()

    async def then_408(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(await read_request(reader)))
        await writer.drain()
        writer.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        served.set()
        await reader.read()  # keeps the connection open: only the client can retire it

    raw.script = [then_408, keep_alive]
    c = client(raw)
    assert await c.post({}, b"1") == (200, b"1")
    await served.wait()
    # The 408 comes in the same read as the 200 (never pooled) or after it (pooled, then
    # retired when it arrives): either way the connection is not used again.
    for _ in range(1000):
        if all(connection.closed for connection in c._idle):
            break
        await asyncio.sleep(0.001)
    assert all(connection.closed for connection in c._idle)
    assert await c.post({}, b"2") == (200, b"2")
    assert raw.connections == 2
    await c.aclose()


async def test_a_peer_that_never_answers_the_tls_handshake_is_a_connect_timeout(
    raw: RawServer,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # takes the ClientHello, says nothing

    raw.script = [silent]
    url = raw.url.replace("http://", "https://")
    c = HttpClient(url, connect_timeout=0.3)
    with pytest.raises(HttpConnectionError, match=r"could not connect to 127.0.0.1:\d+ within"):
        await c.post({}, b"")


@pytest.mark.parametrize("answer", [None, b"", b"HTTP/1.1 502 Bad Gateway\r\n\r\n"])
async def test_a_proxy_that_says_nothing_hangs_up_or_fails_is_a_clear_error(
    raw: RawServer, answer: bytes | None
) -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is None:
            await reader.read()  # never answers CONNECT
        elif answer:
            writer.write(answer)
            await writer.drain()

    raw.script = [proxy]
    port = int(raw.url.rsplit(":", 1)[1])
    c = HttpClient("https://sqs.example.test", proxy=Proxy("127.0.0.1", port), connect_timeout=0.3)
    expected = {
        None: r"could not connect to sqs.example.test through proxy 127.0.0.1:\d+ within",
        b"": r"proxy 127.0.0.1:\d+ closed the connection before answering CONNECT",
        b"HTTP/1.1 502 Bad Gateway\r\n\r\n": r"refused CONNECT sqs.example.test:443: 'HTTP/1.1 502",
    }[answer]
    with pytest.raises(HttpConnectionError, match=expected):
        await c.post({}, b"")
