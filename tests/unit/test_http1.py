"""esm.http1 against a real aiohttp server on loopback, on asyncio's loop and on uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from esm.http1 import HttpClient, HttpConnectionError

pytestmark = pytest.mark.anyio


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


class Server:
    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.hold = asyncio.Event()
        self.url = ""

    async def echo(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        self.peers.append(transport.get_extra_info("peername") if transport else None)
        body = await request.read()
        mode = request.headers.get("X-Mode", "")
        if mode == "hold":
            await self.hold.wait()
        if mode == "chunked":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"ab", b"cd", body):
                await response.write(part)
            await response.write_eof()
            return response
        headers = {"Connection": "close"} if mode == "close" else {}
        status = 400 if mode == "error" else 200
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server()
    app = web.Application()
    app.router.add_post("/", state.echo)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=30)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}"
    yield state
    state.hold.set()
    await runner.cleanup()


async def test_posts_reuse_one_kept_alive_connection(server: Server) -> None:
    client = HttpClient(server.url)
    try:
        for i in range(3):
            body = b"x%d" % i
            assert await client.post({"Content-Type": "text/plain"}, body) == (200, body)
    finally:
        await client.aclose()
    assert len(server.peers) == 3 and len(set(server.peers)) == 1


async def test_connection_close_is_honoured(server: Server) -> None:
    client = HttpClient(server.url)
    try:
        assert await client.post({"X-Mode": "close"}, b"a") == (200, b"a")
        assert await client.post({}, b"b") == (200, b"b")
    finally:
        await client.aclose()
    assert len(set(server.peers)) == 2


async def test_chunked_body_and_error_status_come_back_whole(server: Server) -> None:
    client = HttpClient(server.url)
    try:
        assert await client.post({"X-Mode": "chunked"}, b"ef") == (200, b"abcdef")
        assert await client.post({"X-Mode": "error"}, b"bad") == (400, b"bad")
    finally:
        await client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    client = HttpClient(server.url)
    try:
        await client.post({}, b"1")
        idle = client._idle[0]
        idle.transport.abort()  # type: ignore[union-attr]
        for _ in range(1000):
            if idle.closed:
                break
            await asyncio.sleep(0.001)
        assert await client.post({}, b"2") == (200, b"2")
    finally:
        await client.aclose()
    assert len(set(server.peers)) == 2


async def test_no_response_within_the_read_timeout_is_a_timeout(server: Server) -> None:
    client = HttpClient(server.url, read_timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            await client.post({"X-Mode": "hold"}, b"")
        assert client._idle == []  # a timed-out connection is never reused
    finally:
        await client.aclose()


async def test_refused_connection_is_a_connection_error() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpClient(f"http://127.0.0.1:{port}")
    with pytest.raises(HttpConnectionError, match="could not connect"):
        await client.post({}, b"")


def test_bad_endpoint_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="endpoint URL must be"):
        HttpClient("ftp://example.com")


async def test_an_ipv6_literal_endpoint_is_bracketed_in_the_host_header() -> None:
    """`http://[::1]:port` is reached on ::1 and named `[::1]:port` in Host (RFC 9110 7.2),
    as botocore names it; unbracketed, `::1:port` is not a host a server can parse."""
    hosts: list[str] = []

    async def host(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        return web.Response(body=b"ok")

    app = web.Application()
    app.router.add_post("/", host)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "::1", 0)
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = HttpClient(f"http://[::1]:{port}")
    try:
        assert client.host_header == f"[::1]:{port}"
        assert await client.post({}, b"") == (200, b"ok")
    finally:
        await client.aclose()
        await runner.cleanup()
    assert hosts == [f"[::1]:{port}"]
