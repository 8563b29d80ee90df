"""esm.http1 through a real forward proxy and over TLS with a test CA, on asyncio and uvloop.

The proxy (tests/integration/net_parts.py) is a real one on loopback: CONNECT tunnels for
https, absolute-form requests for http, basic credentials; the endpoint is a real aiohttp
server, behind TLS with a certificate from a CA made for the test.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from net_parts import ForwardProxy, LocalCa

from esm.http1 import HttpClient, HttpProxyError, HttpTlsError, Proxy, tls_context

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


@pytest.fixture
def ca(tmp_path: Path) -> LocalCa:
    return LocalCa(tmp_path)


class Origin:
    """An aiohttp server echoing each POST body, recording its request targets and SNI."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.peers: list[Any] = []
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        self.targets.append(request.raw_path)
        transport = request.transport
        self.peers.append(transport.get_extra_info("peername") if transport else None)
        return web.Response(body=await request.read())

    async def serve(self, scheme: str, context: ssl.SSLContext | None) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.echo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"{scheme}://localhost:{port}"
        return runner


@pytest.fixture
async def http_origin() -> AsyncIterator[Origin]:
    origin = Origin()
    runner = await origin.serve("http", None)
    yield origin
    await runner.cleanup()


@pytest.fixture
async def tls_origin(ca: LocalCa) -> AsyncIterator[Origin]:
    origin = Origin()
    context = ca.issue("localhost")
    origin.server_names: list[str | None] = []  # type: ignore[misc]

    def sni(sock: Any, name: str | None, ctx: ssl.SSLContext) -> None:
        origin.server_names.append(name)  # type: ignore[attr-defined]

    context.sni_callback = sni
    runner = await origin.serve("https", context)
    yield origin
    await runner.cleanup()


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    running = ForwardProxy().start()
    yield running
    running.stop()


async def post_three(client: HttpClient) -> list[tuple[int, bytes]]:
    try:
        return [await client.post({"X-Test": "1"}, b"body-%d" % i) for i in range(3)]
    finally:
        await client.aclose()


async def test_http_through_a_proxy_sends_absolute_form_on_one_kept_alive_connection(
    http_origin: Origin, proxy: ForwardProxy
) -> None:
    client = HttpClient(http_origin.url, proxy=Proxy.parse(proxy.url))
    assert await post_three(client) == [(200, b"body-%d" % i) for i in range(3)]
    port = http_origin.url.rsplit(":", 1)[1]
    assert proxy.requests == [f"POST http://localhost:{port}/"]  # one proxy connection
    assert len(http_origin.targets) == 3 and len(set(http_origin.peers)) == 1


async def test_https_through_a_proxy_tunnels_with_connect_and_verifies_the_origin(
    tls_origin: Origin, proxy: ForwardProxy, ca: LocalCa
) -> None:
    client = HttpClient(
        tls_origin.url, proxy=Proxy.parse(proxy.url), ssl_context=tls_context(str(ca.bundle))
    )
    assert await post_three(client) == [(200, b"body-%d" % i) for i in range(3)]
    port = tls_origin.url.rsplit(":", 1)[1]
    assert proxy.requests == [f"CONNECT localhost:{port}"]
    assert tls_origin.targets == ["/", "/", "/"]  # origin-form inside the tunnel
    assert tls_origin.server_names == ["localhost"]  # type: ignore[attr-defined]


async def test_proxy_credentials_from_the_url_are_sent_and_their_absence_is_a_clear_error(
    tls_origin: Origin, ca: LocalCa
) -> None:
    guarded = ForwardProxy(credentials="user:secret").start()
    try:
        context = tls_context(str(ca.bundle))
        client = HttpClient(tls_origin.url, proxy=Proxy.parse(guarded.url), ssl_context=context)
        assert await post_three(client) == [(200, b"body-%d" % i) for i in range(3)]
        bare = HttpClient(
            tls_origin.url, proxy=Proxy("127.0.0.1", guarded.port), ssl_context=context
        )
        with pytest.raises(
            HttpProxyError, match=r"refused CONNECT localhost:\d+: .*407.*user:pass"
        ):
            await bare.post({}, b"x")
    finally:
        guarded.stop()


async def test_an_untrusted_certificate_is_refused_with_a_clear_error(tls_origin: Origin) -> None:
    client = HttpClient(tls_origin.url)  # botocore's default bundle: the test CA is not in it
    with pytest.raises(
        HttpTlsError, match=r"TLS certificate of localhost:\d+ refused: .*AWS_CA_BUNDLE"
    ):
        await client.post({}, b"x")
    assert tls_origin.targets == []


async def test_a_certificate_for_another_name_is_refused(ca: LocalCa, proxy: ForwardProxy) -> None:
    origin = Origin()
    runner = await origin.serve("https", ca.issue("other.example"))
    try:
        for via in (None, Proxy.parse(proxy.url)):
            client = HttpClient(origin.url, proxy=via, ssl_context=tls_context(str(ca.bundle)))
            with pytest.raises(HttpTlsError, match="refused: Hostname mismatch"):
                await client.post({}, b"x")
    finally:
        await runner.cleanup()
    assert origin.targets == []


async def test_an_unreadable_ca_bundle_names_the_settings(tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    with pytest.raises(HttpTlsError, match=r"none.pem.*AWS_CA_BUNDLE.*cannot be loaded"):
        tls_context(str(missing))


async def test_a_proxy_that_is_not_listening_is_a_connection_error(http_origin: Origin) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = HttpClient(http_origin.url, proxy=Proxy("127.0.0.1", port))
    with pytest.raises(ConnectionError, match=rf"through proxy 127.0.0.1:{port}"):
        await client.post({}, b"x")


def test_proxy_urls_are_read_as_botocore_reads_them() -> None:
    assert Proxy.parse("proxy.corp:3128") == Proxy("proxy.corp", 3128)
    assert Proxy.parse("//proxy.corp") == Proxy("proxy.corp", 80)
    # Percent-encoded credentials are decoded before they are sent (user:s@cret).
    assert Proxy.parse("http://user:s%40cret@p:1").authorization == "Basic dXNlcjpzQGNyZXQ="
    with pytest.raises(
        ValueError, match=r"proxy must be http://host\[:port\], got 'https://u:\*\*\*@p:1'"
    ):
        Proxy.parse("https://u:pw@p:1")
