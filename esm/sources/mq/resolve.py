"""What a broker-queue mapping learns when it starts: the broker's engine and endpoints and
its BASIC_AUTH credentials. The only module of the family that calls AWS.

AWS rules: Lambda reads an Amazon MQ broker's endpoints from `DescribeBroker`
(`BrokerInstances[].Endpoints`, `EngineType`) and its credentials from the Secrets Manager
secret named in BASIC_AUTH, a JSON object with `username` and `password` (Lambda guide
"Using Lambda with Amazon MQ", "Configure event source"). A secret's value never reaches a
log line: errors name the secret's location, not its content.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from esm.aws import AwsClients
from esm.errors import SourceUnavailable
from esm.sources.mq.config import URL_SCHEMES, Credentials, Engine, MqMappingConfig

ENGINE_TYPES: dict[str, Engine] = {"RABBITMQ": "rabbitmq", "ACTIVEMQ": "activemq"}


@dataclass(frozen=True)
class BrokerLogin:
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class Broker:
    """A broker as a mapping connects to it: engine, endpoints in failover order, login."""

    engine: Engine
    urls: tuple[str, ...]
    login: BrokerLogin | None


async def resolve_broker(config: MqMappingConfig, aws: AwsClients | None) -> Broker:
    """The broker of a mapping; raises SourceUnavailable when it cannot be found or read."""
    if config.broker_arn is not None:
        if aws is None:
            raise SourceUnavailable("a broker ARN needs AWS clients to call DescribeBroker")
        engine, urls = await describe_broker(aws, config.broker_arn)
    else:
        assert config.engine is not None  # the parser sets it for self-managed brokers
        engine, urls = config.engine, config.broker_urls
    if config.virtual_host is not None and engine != "rabbitmq":
        raise SourceUnavailable("VIRTUAL_HOST applies to RabbitMQ brokers only")
    login = await read_credentials(config.credentials, aws) if config.credentials else None
    return Broker(engine, urls, login)


async def describe_broker(aws: AwsClients, arn: str) -> tuple[Engine, tuple[str, ...]]:
    """Engine and the endpoints esm can read (AMQP for RabbitMQ, STOMP for ActiveMQ)."""
    client = await aws.client("mq")
    broker_id = arn.rsplit(":", 1)[-1]
    response = await aws.retry.call(
        "DescribeBroker", lambda: client.describe_broker(BrokerId=broker_id)
    )
    engine = ENGINE_TYPES.get(str(response.get("EngineType", "")).upper())
    if engine is None:
        raise SourceUnavailable(f"broker {arn}: unknown engine {response.get('EngineType')!r}")
    schemes = URL_SCHEMES[engine]
    urls = tuple(
        url
        for instance in response.get("BrokerInstances") or []
        for url in instance.get("Endpoints") or []
        if urlsplit(url).scheme in schemes
    )
    if not urls:
        wanted = "/".join(schemes)
        raise SourceUnavailable(f"broker {arn}: DescribeBroker lists no {wanted} endpoint")
    return engine, urls


async def read_credentials(source: Credentials, aws: AwsClients | None) -> BrokerLogin:
    if source.kind == "env":
        user = os.environ.get(f"{source.location}_USERNAME")
        password = os.environ.get(f"{source.location}_PASSWORD")
        if user is None or password is None:
            raise SourceUnavailable(
                f"BASIC_AUTH env:{source.location}: set {source.location}_USERNAME and "
                f"{source.location}_PASSWORD"
            )
        return BrokerLogin(user, password)
    if source.kind == "file":
        try:
            text = Path(source.location).read_text(encoding="utf-8")
        except OSError as exc:
            raise SourceUnavailable(
                f"BASIC_AUTH file:{source.location}: cannot read ({exc.strerror})"
            ) from None
        return _login(text, f"file:{source.location}")
    if aws is None:
        raise SourceUnavailable("a Secrets Manager secret needs AWS clients")
    client = await aws.client("secretsmanager")
    response = await aws.retry.call(
        "GetSecretValue", lambda: client.get_secret_value(SecretId=source.location)
    )
    return _login(response.get("SecretString") or "", source.location)


def _login(text: str, where: str) -> BrokerLogin:
    """AWS's secret shape: `{"username": "...", "password": "..."}`."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("username"), str)
        or not isinstance(value.get("password"), str)
    ):
        raise SourceUnavailable(
            f"BASIC_AUTH {where}: must be a JSON object with string username and password"
        )
    return BrokerLogin(value["username"], value["password"])
