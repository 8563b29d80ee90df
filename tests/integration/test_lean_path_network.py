"""The lean AWS path (esm.aws_json on esm.http1) on the network path botocore would take:
through a real forward proxy (HTTPS_PROXY, NO_PROXY) to moto behind TLS with a test CA
(AWS_CA_BUNDLE). Settings esm.http1 does not follow go through the botocore client's own
session, still through the proxy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import recorder
from conftest import build_config, wait_until
from net_parts import ForwardProxy, LocalCa, TlsFront
from structlog.testing import capture_logs
from test_sqs_mapping import make_queue, mapping, queue_depth

from esm.aws import AwsClients
from esm.aws_json import JsonApi, _BotocorePoster
from esm.config import DaemonConfig
from esm.http1 import HttpClient, HttpTlsError

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")
CA_VARIABLES = ("AWS_CA_BUNDLE", "REQUESTS_CA_BUNDLE")


@dataclass
class Network:
    ca: LocalCa
    front: TlsFront
    proxy: ForwardProxy

    @property
    def endpoint(self) -> str:
        return f"https://localhost:{self.front.port}"

    @property
    def connect(self) -> str:
        return f"CONNECT localhost:{self.front.port}"


@pytest.fixture
def network(endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    for name in PROXY_VARIABLES + CA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ca = LocalCa(tmp_path)
    front = TlsFront(ca.issue("localhost"), int(endpoint.rsplit(":", 1)[1])).start()
    proxy = ForwardProxy().start()
    yield Network(ca, front, proxy)
    proxy.stop()
    front.stop()


def receive(network: Network, queue_url: str) -> tuple[bytes | BaseException, Any]:
    """One ReceiveMessage on the lean path, as an SQS mapping makes it."""

    async def run() -> tuple[bytes | BaseException, Any]:
        async with AwsClients(DaemonConfig(endpoint_url=network.endpoint)) as aws:
            api = JsonApi(
                aws,
                client_service="sqs",
                signing_name="sqs",
                target_prefix="AmazonSQS",
                json_version="1.0",
            )
            try:
                payload = {"QueueUrl": queue_url, "MaxNumberOfMessages": 10}
                return await api.call("ReceiveMessage", payload), api._http
            except Exception as exc:
                return exc, api._http
            finally:
                await api.aclose()

    return asyncio.run(run())


def test_lean_calls_go_through_https_proxy_to_an_endpoint_with_a_private_ca(
    network: Network,
    sqs,
    unique,
    monkeypatch,
) -> None:
    url, _ = make_queue(sqs, f"proxied-{unique}")
    sqs.send_message(QueueUrl=url, MessageBody="through the tunnel")
    monkeypatch.setenv("HTTPS_PROXY", network.proxy.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(network.ca.bundle))
    raw, http = receive(network, url)
    assert isinstance(http, HttpClient)
    assert isinstance(raw, bytes) and b"through the tunnel" in raw
    assert network.proxy.requests == [network.connect]
    assert network.front.server_names == ["localhost"]


def test_requests_ca_bundle_is_read_when_aws_ca_bundle_is_not(
    network: Network,
    sqs,
    unique,
    monkeypatch,
) -> None:
    url, _ = make_queue(sqs, f"requests-ca-{unique}")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(network.ca.bundle))
    raw, http = receive(network, url)
    assert isinstance(http, HttpClient) and isinstance(raw, bytes)
    assert network.proxy.requests == []  # no proxy configured: straight to the endpoint


def test_an_untrusted_endpoint_is_refused_through_the_proxy_with_a_clear_error(
    network: Network,
    sqs,
    unique,
    monkeypatch,
) -> None:
    url, _ = make_queue(sqs, f"untrusted-{unique}")
    sqs.send_message(QueueUrl=url, MessageBody="never read")
    monkeypatch.setenv("HTTPS_PROXY", network.proxy.url)
    error, _ = receive(network, url)
    assert isinstance(error, HttpTlsError)
    assert "refused: unable to get local issuer certificate" in str(error)
    assert "AWS_CA_BUNDLE" in str(error)
    assert network.proxy.requests == [network.connect]  # routed by the proxy, not around it
    assert queue_depth(sqs, url) == 1


def test_no_proxy_sends_the_endpoint_around_the_proxy(
    network: Network,
    sqs,
    unique,
    monkeypatch,
) -> None:
    url, _ = make_queue(sqs, f"bypass-{unique}")
    monkeypatch.setenv("HTTPS_PROXY", network.proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(network.ca.bundle))
    raw, http = receive(network, url)
    assert isinstance(http, HttpClient) and isinstance(raw, bytes)
    assert network.proxy.requests == []
    assert network.front.handshakes >= 1


def test_an_https_proxy_falls_back_to_botocores_session_and_says_so_once(
    network: Network,
    sqs,
    unique,
    monkeypatch,
) -> None:
    url, _ = make_queue(sqs, f"tls-proxy-{unique}")
    sqs.send_message(QueueUrl=url, MessageBody="via a TLS proxy")
    tls_proxy = ForwardProxy(context=network.ca.issue("127.0.0.1")).start()
    try:
        monkeypatch.setenv("HTTPS_PROXY", tls_proxy.url)
        monkeypatch.setenv("AWS_CA_BUNDLE", str(network.ca.bundle))
        with capture_logs() as logs:
            raw, http = receive(network, url)
            again, _ = receive(network, url)
        assert isinstance(http, _BotocorePoster)
        assert isinstance(raw, bytes) and b"via a TLS proxy" in raw
        assert isinstance(again, bytes)
        assert network.connect in tls_proxy.requests  # still through the proxy
        fallbacks = [e for e in logs if e["event"] == "http.client_fallback"]
        assert len(fallbacks) == 1 and fallbacks[0]["log_level"] == "info"
        assert "https://, not http://" in fallbacks[0]["reason"]
    finally:
        tls_proxy.stop()


def test_an_sqs_mapping_reads_and_deletes_through_the_proxy(
    network: Network,
    sqs,
    unique,
    monkeypatch,
    run_daemon,
) -> None:
    url, arn = make_queue(sqs, f"mapped-{unique}")
    for i in range(5):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    monkeypatch.setenv("HTTPS_PROXY", network.proxy.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(network.ca.bundle))
    config = build_config(network.endpoint, {"f": {"handler": "recorder.record"}}, [mapping(arn)])
    daemon = run_daemon(config)
    # The set of bodies seen, not exactly five deliveries: five receivers start on a full
    # queue, and moto (like SQS, at-least-once) may hand a message to two of them.
    sent = {f"m{i}" for i in range(5)}
    wait_until(lambda: set(recorder.bodies_for(arn)) == sent)
    wait_until(lambda: queue_depth(sqs, url) == 0)
    daemon.stop()
    assert set(recorder.bodies_for(arn)) == sent
    assert set(network.proxy.requests) == {network.connect}


def test_the_aiohttp_opt_out_takes_the_same_route(
    network: Network, sqs, unique, monkeypatch
) -> None:
    url, _ = make_queue(sqs, f"opt-out-{unique}")
    sqs.send_message(QueueUrl=url, MessageBody="opted out")
    monkeypatch.setenv("ESM_HTTP_CLIENT", "aiohttp")
    monkeypatch.setenv("HTTPS_PROXY", network.proxy.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(network.ca.bundle))
    raw, http = receive(network, url)
    assert isinstance(http, _BotocorePoster)
    assert isinstance(raw, bytes) and b"opted out" in raw
    assert network.proxy.requests == [network.connect]
