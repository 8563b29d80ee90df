"""An IPv6 literal endpoint (`http://[::1]:PORT`) on the lean path: moto listening on ::1,
esm's own receive (esm.aws_json on esm.http1) with no credentials configured, as a local
quick start has none: loopback placeholders are used and the request is sent to ::1."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import boto3
import orjson
import pytest
from conftest import wait_for_http

from esm.aws import AwsClients
from esm.aws_json import JsonApi
from esm.config import DaemonConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def ipv6_endpoint() -> Iterator[str]:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = int(probe.getsockname()[1])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "::1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://[::1]:{port}"
    try:
        wait_for_http(f"{url}/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_receive_from_an_ipv6_loopback_endpoint_without_credentials(
    ipv6_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    sqs = boto3.client(
        "sqs",
        endpoint_url=ipv6_endpoint,
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    url = sqs.create_queue(QueueName="ipv6")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="over ::1")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", f"{tmp_path}/none")
    monkeypatch.setenv("AWS_CONFIG_FILE", f"{tmp_path}/none")
    async with AwsClients(DaemonConfig(region="us-east-1", endpoint_url=ipv6_endpoint)) as aws:
        api = JsonApi(
            aws,
            client_service="sqs",
            signing_name="sqs",
            target_prefix="AmazonSQS",
            json_version="1.0",
        )
        try:
            raw = await api.call("ReceiveMessage", {"QueueUrl": url, "WaitTimeSeconds": 1})
        finally:
            await api.aclose()
    assert [m["Body"] for m in orjson.loads(raw)["Messages"]] == ["over ::1"]
