"""Which route esm.aws_json gives esm.http1: what botocore resolved for a real aiobotocore
client from the environment (no request is sent; creating a client reads the settings)."""

from __future__ import annotations

from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from esm.aws_json import Route, botocore_route
from esm.http1 import Proxy

pytestmark = pytest.mark.anyio
ENDPOINT = "https://sqs.example.test:8443"
VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
    "AWS_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER",
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def route(endpoint: str = ENDPOINT, **kwargs: Any) -> Route | str:
    async with get_session().create_client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="k",
        aws_secret_access_key="s",
        **kwargs,
    ) as client:
        return botocore_route(client, endpoint)


async def test_no_settings_is_a_direct_verified_route() -> None:
    assert await route() == Route(None, True)


async def test_the_proxy_of_the_endpoints_scheme_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:pw@proxy.corp:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.corp:8080")
    assert await route() == Route(Proxy("proxy.corp", 3128, "Basic dXNlcjpwdw=="), True)
    assert await route("http://sqs.example.test") == Route(Proxy("plain.corp", 8080), True)


async def test_no_proxy_sends_the_endpoint_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.example.test")
    assert await route() == Route(None, True)


async def test_ca_bundles_in_botocores_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/requests.pem")
    assert await route() == Route(None, "/etc/requests.pem")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/aws.pem")
    assert await route() == Route(None, "/etc/aws.pem")


@pytest.mark.parametrize(
    ("proxy", "reason"),
    [
        ("https://proxy.corp:3128", "the proxy for https is https://, not http://"),
        ("socks5://proxy.corp:1080", "the proxy for https is socks5://, not http://"),
    ],
)
async def test_proxies_esm_http1_cannot_use_are_reported(
    monkeypatch: pytest.MonkeyPatch, proxy: str, reason: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    assert await route() == reason


async def test_proxies_config_and_client_certificates_are_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    config = AioConfig(proxies_config={"proxy_ca_bundle": "/etc/proxy.pem"})
    assert await route(config=config) == "proxies_config (proxy_ca_bundle) is set"
    with_cert = AioConfig(client_cert="/etc/client.pem")
    assert await route(config=with_cert) == "a client certificate (client_cert) is configured"
    monkeypatch.setenv("BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER", "true")
    assert await route() == "BOTO_EXPERIMENTAL__ADD_PROXY_HOST_HEADER is set"
