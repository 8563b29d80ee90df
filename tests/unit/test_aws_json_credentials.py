"""Which credentials esm.aws_json signs with: static keys frozen once at setup, refreshable
ones (assumed roles, SSO, instance metadata) frozen per call so a refresh is used at once."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from aiobotocore.credentials import AioRefreshableCredentials

from esm.aws import AwsClients
from esm.aws_json import JsonApi
from esm.config import DaemonConfig

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _api(aws: AwsClients) -> JsonApi:
    return JsonApi(
        aws, client_service="sqs", signing_name="sqs", target_prefix="AmazonSQS", json_version="1.0"
    )


async def test_static_keys_are_frozen_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSTATIC")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "static-secret")
    async with AwsClients(
        DaemonConfig(region="us-east-1", endpoint_url="http://127.0.0.1:9")
    ) as aws:
        api = _api(aws)
        await api._setup()  # creates the client; sends nothing
        first = await api._signing_credentials()
        assert (first.access_key, first.secret_key) == ("AKIDSTATIC", "static-secret")
        assert await api._signing_credentials() is first


async def test_refreshable_credentials_are_read_on_every_call() -> None:
    refreshes = 0

    async def refresh() -> dict[str, Any]:
        nonlocal refreshes
        refreshes += 1
        return _metadata(f"AKIDROLE{refreshes}")

    credentials = AioRefreshableCredentials.create_from_metadata(
        _metadata("AKIDROLE0"), refresh_using=refresh, method="assume-role"
    )
    async with AwsClients(
        DaemonConfig(region="us-east-1", endpoint_url="http://127.0.0.1:9")
    ) as aws:
        api = _api(aws)
        await api._setup()
        api._credentials = credentials  # what a role profile's client carries
        api._signing = None
        keys = [(await api._signing_credentials()).access_key for _ in range(3)]
    # Each expires within botocore's mandatory refresh window: every call refreshes.
    assert keys == ["AKIDROLE1", "AKIDROLE2", "AKIDROLE3"]


def _metadata(access_key: str) -> dict[str, Any]:
    expiry = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=1)
    return {
        "access_key": access_key,
        "secret_key": "role-secret",
        "token": "role-token",
        "expiry_time": expiry.isoformat(),
    }
