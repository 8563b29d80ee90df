"""Secrets for source_access_configurations, read as AWS reads them (moto's Secrets Manager)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiobotocore.session import get_session

from esm.config import _Table
from esm.errors import SourceUnavailable
from esm.sources.kafka.auth import (
    bootstrap_servers,
    client_options,
    msk_broker_string,
    secretsmanager_fetcher,
    worker_client_id,
)
from esm.sources.kafka.config import KafkaMappingConfig, parse_kafka_mapping

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

pytestmark = pytest.mark.anyio
MSK_ARN = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abcd1234-ab12-cd34-ef56-1234567890ab-1"


def mapping(access: list[dict[str, str]], **raw: Any) -> KafkaMappingConfig:
    problems: list[str] = []
    table = {
        "function": "f",
        "topics": ["t"],
        "starting_position": "LATEST",
        "source_access_configurations": access,
        **raw,
    }
    if "event_source_arn" not in raw:
        table["self_managed_event_source"] = {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b:9092"]}}
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    return config


@pytest.fixture
async def aws_client(endpoint: str) -> AsyncIterator[Any]:
    async def make(service: str) -> Any:
        return get_session().create_client(service, region_name="us-east-1", endpoint_url=endpoint)

    yield make


async def test_scram_secret_from_secrets_manager(endpoint: str, aws_client: Any) -> None:
    sm = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    arn = sm.create_secret(
        Name="kafka-scram", SecretString=json.dumps({"username": "alice", "password": "s3cret"})
    )["ARN"]
    config = mapping([{"type": "SASL_SCRAM_512_AUTH", "uri": arn}])
    async with await aws_client("secretsmanager") as client:
        options = await client_options(config, secretsmanager_fetcher(client))
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "alice"
    assert options["sasl_plain_password"] == "s3cret"
    assert options["security_protocol"] == "SASL_SSL"  # AWS: SASL over TLS only


async def test_basic_auth_from_env_with_the_esm_plaintext_override(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_LOGIN", json.dumps({"username": "bob", "password": "pw"}))
    config = mapping(
        [{"type": "BASIC_AUTH", "uri": "env:KAFKA_LOGIN"}], kafka_security_protocol="SASL_PLAINTEXT"
    )
    options = await client_options(config)
    assert options == {
        "client_id": worker_client_id(),
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "bob",
        "sasl_plain_password": "pw",
        "security_protocol": "SASL_PLAINTEXT",
    }


async def test_secret_file_missing_a_field_names_the_file_not_the_value(tmp_path: Path) -> None:
    secret = tmp_path / "kafka.json"
    secret.write_text(json.dumps({"username": "carol", "pass": "hunter2"}))
    config = mapping([{"type": "SASL_SCRAM_256_AUTH", "uri": f"file:{secret}"}])
    with pytest.raises(SourceUnavailable) as info:
        await client_options(config)
    assert str(secret) in str(info.value) and "'password'" in str(info.value)
    assert "hunter2" not in str(info.value)


async def test_no_access_configuration_is_plaintext() -> None:
    assert await client_options(mapping([])) == {
        "client_id": worker_client_id(),
        "security_protocol": "PLAINTEXT",
    }


def test_the_client_id_names_the_esm_process() -> None:
    assert worker_client_id() == f"esm-{socket.gethostname()}-{os.getpid()}"


async def test_msk_without_override_asks_get_bootstrap_brokers(aws_client: Any) -> None:
    config = mapping([], event_source_arn=MSK_ARN)
    async with await aws_client("kafka") as client:
        with pytest.raises(SourceUnavailable, match="set msk_bootstrap_servers"):
            await bootstrap_servers(config, client)  # moto's kafka has no GetBootstrapBrokers
    override = mapping([], event_source_arn=MSK_ARN, msk_bootstrap_servers=["127.0.0.1:9092"])
    assert await bootstrap_servers(override, None) == ("127.0.0.1:9092",)


def test_msk_broker_string_follows_the_auth() -> None:
    response = {
        "BootstrapBrokerString": "p1:9092,p2:9092",
        "BootstrapBrokerStringTls": "t1:9094",
        "BootstrapBrokerStringSaslScram": "s1:9096",
    }
    scram = mapping([{"type": "SASL_SCRAM_512_AUTH", "uri": "env:X"}], event_source_arn=MSK_ARN)
    assert msk_broker_string(scram, response) == ("s1:9096",)
    assert msk_broker_string(mapping([], event_source_arn=MSK_ARN), response) == ("t1:9094",)
