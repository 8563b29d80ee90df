"""Pure parts of the broker-queue family: config validation, event shapes (checked with
Powertools' data classes), DescribeBroker / Secrets Manager resolution against moto, and the
failure ledger that carries an ActiveMQ message's redelivery count across reconnects."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.data_classes.active_mq_event import ActiveMQEvent
from aws_lambda_powertools.utilities.data_classes.rabbit_mq_event import RabbitMQEvent
from pamqp.commands import Basic

from esm.errors import ConfigError
from esm.sources.mq.config import Credentials, is_mq_mapping, parse_mq_table
from esm.sources.mq.events import (
    activemq_event,
    activemq_message,
    java_date,
    rabbitmq_event,
    rabbitmq_message,
)
from esm.sources.mq.runtime import Delivery, FailureLedger

ARN = "arn:aws:mq:us-east-1:123456789012:broker:orders:b-1234a5b6-78cd-901e-2fgh-3i45j6k178l9"
RABBIT = {"endpoints": {"RABBITMQ_BROKER_URLS": ["amqp://127.0.0.1:5672"]}}


def parse(**table: Any) -> Any:
    return parse_mq_table({"function": "fn", "queues": ["q"], **table}, "mappings[0]", {"fn"})


def problems(**table: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(**table)
    return info.value.problems


def test_defaults_are_lambdas() -> None:
    config = parse(event_source_arn=ARN)
    assert (config.batch_size, config.maximum_batching_window_in_seconds) == (100, 0.5)
    assert config.engine is None and config.broker_arn == ARN and config.region == "us-east-1"
    assert config.concurrency("rabbitmq") == 1 and config.concurrency("activemq") == 5
    assert config.event_source_arn == ARN


def test_self_managed_rabbitmq_with_auth_and_vhost() -> None:
    config = parse(
        self_managed_event_source=RABBIT,
        source_access_configurations=[
            {"type": "BASIC_AUTH", "uri": "env:RMQ"},
            {"type": "VIRTUAL_HOST", "uri": "prod"},
        ],
        batch_size=10_000,
        scaling_config={"maximum_concurrency": 3},
    )
    assert config.engine == "rabbitmq" and config.broker_urls == ("amqp://127.0.0.1:5672",)
    assert config.credentials == Credentials("env", "RMQ") and config.virtual_host == "prod"
    assert config.concurrency("rabbitmq") == 3
    assert config.event_source_arn.startswith("arn:aws:mq:local:")


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"batch_size": 0}, "mappings[0].batch_size: 0 is below the minimum 1 for Amazon MQ"),
        (
            {"batch_size": 10_001},
            "mappings[0].batch_size: 10001 is above the maximum 10000 for Amazon MQ",
        ),
        (
            {"maximum_batching_window_in_seconds": 301},
            "maximum_batching_window_in_seconds: 301 is above the maximum 300",
        ),
        ({"queues": ["a", "b"]}, "mappings[0].queues: must be a list of exactly one queue"),
        ({"event_source_arn": "arn:aws:sqs:us-east-1:1:q"}, "is not an Amazon MQ broker ARN"),
        ({"batch_sise": 5}, "mappings[0].batch_sise: unknown key"),
        (
            {"scaling_config": {"maximum_concurrency": 0}},
            "scaling_config.maximum_concurrency: 0 is below the minimum 1",
        ),
    ],
)
def test_bad_values_name_the_key_and_range(table: dict[str, Any], expected: str) -> None:
    base: dict[str, Any] = {"event_source_arn": ARN}
    found = problems(**{**base, **table})
    assert any(expected in p for p in found), found


def test_source_problems() -> None:
    assert any("exactly one of" in p for p in problems())
    assert any(
        "exactly one of" in p
        for p in problems(event_source_arn=ARN, self_managed_event_source=RABBIT)
    )
    bad_scheme = {"endpoints": {"RABBITMQ_BROKER_URLS": ["stomp://h:1"]}}
    assert any("amqp or amqps" in p for p in problems(self_managed_event_source=bad_scheme))
    login = {"endpoints": {"ACTIVEMQ_BROKER_URLS": ["stomp://u:p@h:61613"]}}
    assert any("must not hold credentials" in p for p in problems(self_managed_event_source=login))
    unknown = {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["h:9092"]}}
    found = problems(self_managed_event_source=unknown)
    assert any("KAFKA_BOOTSTRAP_SERVERS: unknown" in p for p in found)


def test_access_problems() -> None:
    amq = {"endpoints": {"ACTIVEMQ_BROKER_URLS": ["stomp://h:61613"]}}
    vhost = [{"type": "VIRTUAL_HOST", "uri": "/"}]
    assert any(
        "RabbitMQ brokers only" in p
        for p in problems(self_managed_event_source=amq, source_access_configurations=vhost)
    )
    plain = [{"type": "BASIC_AUTH", "uri": "guest:guest"}]
    assert any(
        "secret ARN, file:PATH or env:PREFIX" in p
        for p in problems(event_source_arn=ARN, source_access_configurations=plain)
    )
    twice = [{"type": "BASIC_AUTH", "uri": "env:A"}, {"type": "BASIC_AUTH", "uri": "env:B"}]
    assert any(
        "more than once" in p
        for p in problems(event_source_arn=ARN, source_access_configurations=twice)
    )


def test_filter_patterns_are_validated() -> None:
    good = {"filters": [{"pattern": '{"data": {"kind": ["a"]}}'}]}
    assert parse(event_source_arn=ARN, filter_criteria=good).filter_patterns
    bad = {"filters": [{"pattern": '{"data": {"kind": "a"}}'}]}
    assert any(
        "filter_criteria.filters[0].pattern" in p
        for p in problems(event_source_arn=ARN, filter_criteria=bad)
    )


def test_is_mq_mapping() -> None:
    assert is_mq_mapping({"event_source_arn": ARN})
    assert is_mq_mapping({"self_managed_event_source": RABBIT})
    assert not is_mq_mapping({"event_source_arn": "arn:aws:sqs:us-east-1:123456789012:q"})


def test_java_date_is_medium_format_utc() -> None:
    assert java_date(dt.datetime(1970, 1, 1, 0, 33, 41)) == "Jan 1, 1970, 12:33:41 AM"
    late = dt.datetime(2026, 7, 14, 23, 0, 5, tzinfo=dt.UTC)
    assert java_date(late) == "Jul 14, 2026, 11:00:05 PM"


def test_rabbitmq_event_matches_powertools() -> None:
    properties = Basic.Properties(
        content_type="text/plain",
        headers={"header1": "value1", "numberInHeader": 10, "nested": {"k": "v"}},
        delivery_mode=1,
        priority=34,
        expiration="60000",
        timestamp=dt.datetime(1970, 1, 1, 0, 33, 41),
        user_id="AIDACKCEVSQ6C2EXAMPLE",
    )
    body = b'{"timeout":0,"data":"CZrmf0Gw8Ov4bqLQxD4E"}'
    event = rabbitmq_event(ARN, "test", "/", [rabbitmq_message(properties, body, False)])
    parsed = RabbitMQEvent(event)
    (message,) = parsed.rmq_messages_by_queue["test::/"]
    assert message.json_data == {"timeout": 0, "data": "CZrmf0Gw8Ov4bqLQxD4E"}
    props = message.basic_properties
    assert props.headers == {
        "header1": {"bytes": list(b"value1")},
        "numberInHeader": 10,
        "nested": {"k": {"bytes": [118]}},
    }
    assert (props.delivery_mode, props.priority, props.expiration) == (1, 34, "60000")
    assert props.timestamp == "Jan 1, 1970, 12:33:41 AM"
    assert (props.correlation_id, props.message_id, props.get_type) == (None, None, None)
    assert props.body_size == len(body)


def test_activemq_event_matches_powertools_and_recorded_shape() -> None:
    headers = {
        "message-id": "ID:b-1-37557-1234520418293-4:1:1:1:1",
        "destination": "/queue/testQueue",
        "subscription": "s-1",
        "ack": "a-1",
        "persistent": "true",
        "priority": "4",
        "timestamp": "1598827811958",
        "expires": "0",
        "correlation-id": "myJMSCoID",
        "type": "order",
        "index": "1",
        "doAlarm": "false",
    }
    message = activemq_message(headers, b"ABC:AAAA", 1598827811959)
    event = activemq_event(ARN, [message])
    parsed = ActiveMQEvent(event)
    assert parsed.event_source == "aws:mq" and parsed.event_source_arn == ARN
    m = parsed.message
    assert m.message_id == "ID:b-1-37557-1234520418293-4:1:1:1:1"
    assert m.message_type == "jms/text-message"
    assert m.decoded_data == "ABC:AAAA"
    assert m.destination_physicalname == "testQueue"
    assert (m.delivery_mode, m.priority, m.expiration) == (2, 4, 0)
    assert (m.correlation_id, m.get_type, m.reply_to) == ("myJMSCoID", "order", "null")
    assert (m.timestamp, m.broker_in_time, m.broker_out_time) == (1598827811958,) * 2 + (
        1598827811959,
    )
    assert m.redelivered is False
    assert m.properties == {"index": "1", "doAlarm": "false"}
    # The keys and their order as in a recorded Amazon MQ invocation.
    assert list(message) == [
        "messageID",
        "messageType",
        "timestamp",
        "deliveryMode",
        "correlationID",
        "replyTo",
        "destination",
        "redelivered",
        "type",
        "expiration",
        "priority",
        "data",
        "brokerInTime",
        "brokerOutTime",
        "properties",
    ]


def test_activemq_bytes_message_and_redelivered() -> None:
    headers = {
        "message-id": "ID:1",
        "destination": "/queue/q",
        "content-length": "3",
        "redelivered": "true",
        "reply-to": "/queue/replies",
    }
    message = activemq_message(headers, b"\x00\x01\x02", 5)
    assert message["messageType"] == "jms/bytes-message"
    assert message["redelivered"] is True and message["replyTo"] == "replies"
    assert base64.b64decode(message["data"]) == b"\x00\x01\x02"
    assert message["properties"] == {}


def test_describe_broker_and_secret_from_moto(endpoint: str) -> None:
    import boto3
    from anyio.from_thread import start_blocking_portal

    from esm.aws import AwsClients
    from esm.config import DaemonConfig
    from esm.sources.mq.resolve import resolve_broker

    mq = boto3.client("mq", endpoint_url=endpoint, region_name="us-east-1")
    broker = mq.create_broker(
        BrokerName="orders",
        EngineType="RABBITMQ",
        EngineVersion="3.10.20",
        HostInstanceType="mq.t3.micro",
        DeploymentMode="SINGLE_INSTANCE",
        PubliclyAccessible=False,
        AutoMinorVersionUpgrade=True,
        Users=[{"Username": "admin", "Password": "adminadminadmin"}],
    )
    secrets = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1")
    secret = secrets.create_secret(
        Name="orders-broker", SecretString=json.dumps({"username": "u", "password": "p"})
    )["ARN"]
    config = parse(
        event_source_arn=broker["BrokerArn"],
        source_access_configurations=[{"type": "BASIC_AUTH", "uri": secret}],
    )

    async def resolve() -> Any:
        async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
            return await resolve_broker(config, aws)

    with start_blocking_portal() as portal:
        resolved = portal.call(resolve)
    assert resolved.engine == "rabbitmq"
    assert resolved.urls and all(u.startswith("amqps://") for u in resolved.urls)
    assert (resolved.login.username, resolved.login.password) == ("u", "p")
    assert "p" not in repr(resolved.login).replace("password", "").replace("username", "")


# --- Through the registry (what `esm validate` / `esm run` read) ---------------------------


def test_registry_recognises_the_familys_tables() -> None:
    from esm.sources.registry import recognise

    assert recognise({"event_source_arn": ARN}).family.name == "mq"
    assert recognise({"self_managed_event_source": RABBIT}).family.name == "mq"
    # An unresolved broker ARN left by `esm import`: `queues` names the family.
    assert recognise({"event_source_arn": "<unresolved: B>", "queues": ["q"]}).family.name == "mq"
    # Another service's ARN with `queues` stays that service (queues is then unknown).
    sqs = {"event_source_arn": "arn:aws:sqs:us-east-1:123456789012:q", "queues": ["q"]}
    assert recognise(sqs).family.name == "sqs"


def test_parse_config_builds_the_familys_config() -> None:
    from esm.config import parse_config
    from esm.sources.mq.config import MqMappingConfig
    from esm.sources.registry import family_of

    raw = {
        "functions": {"fn": {"handler": "app.handle"}},
        "mappings": [
            {"name": "jobs", "function": "fn", "event_source_arn": ARN, "queues": ["jobs"]}
        ],
    }
    (mapping,) = parse_config(raw).mappings
    assert isinstance(mapping, MqMappingConfig) and mapping.family == "mq"
    assert family_of(mapping).given_up_to == "dlq" and not family_of(mapping).ordered
    assert (mapping.queue, mapping.batch_size, mapping.function_response_types) == (
        "jobs",
        100,
        frozenset(),
    )


def test_config_problems_are_listed_by_key_path_each_once() -> None:
    from esm.config import parse_config

    raw = {
        "functions": {"fn": {"handler": "app.handle"}},
        "mappings": [
            {
                "function": "nope",
                "self_managed_event_source": {
                    "endpoints": {"RABBITMQ_BROKER_URLS": ["<unresolved: Url>"]}
                },
                "queues": ["<unresolved: !Ref Queue>"],
                "source_access_configurations": [{"type": "BASIC_AUTH", "uri": "<unresolved: S>"}],
                "function_response_types": ["ReportBatchItemFailures"],
                "batch_sise": 1,
            }
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    found = info.value.problems
    assert len(found) == len(set(found)) == 6, found
    expected = [
        "mappings[0].function: 'nope' is not a [functions.*] entry",
        "mappings[0].self_managed_event_source.endpoints.RABBITMQ_BROKER_URLS[0]: <unresolved:",
        "mappings[0].queues[0]: <unresolved: !Ref Queue> is a placeholder",
        "mappings[0].source_access_configurations[0].uri: <unresolved: S> is a placeholder",
        "mappings[0].function_response_types: does not apply to Amazon MQ mappings",
        "mappings[0].batch_sise: unknown key",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)


def test_reading_an_mq_config_imports_no_runtime() -> None:
    """The package's runtime is imported lazily: reading a config never imports a session,
    the runtime or the invokers (no import circle through esm.config)."""
    import subprocess
    import sys

    script = f"""
import sys
from esm.config import parse_config
parse_config({{"functions": {{"fn": {{"handler": "app.handle"}}}}, "mappings": [
    {{"function": "fn", "event_source_arn": "{ARN}", "queues": ["q"]}}]}})
import esm.sources.mq
loaded = [m for m in ("esm.sources.mq.runtime", "esm.sources.mq.rabbitmq",
    "esm.sources.mq.activemq", "esm.invokers.function", "aiormq") if m in sys.modules]
print(loaded)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_failure_ledger_counts_by_message_id_until_acknowledged() -> None:
    ledger = FailureLedger()
    assert ledger.failures("ID:1") == 0 and ledger.failures(None) == 0
    ledger.failed("ID:1", 3)
    ledger.failed(None, 5)  # an engine without IDs (RabbitMQ) records nothing
    assert ledger.failures("ID:1") == 3 and len(ledger) == 1
    ledger.forget([Delivery({}, 0, None, message_id="ID:1"), Delivery({}, 0, None)])
    assert ledger.failures("ID:1") == 0 and len(ledger) == 0


def test_failure_ledger_forgets_the_least_recently_failed_past_its_capacity() -> None:
    ledger = FailureLedger(capacity=2)
    ledger.failed("a", 1)
    ledger.failed("b", 1)
    ledger.failed("a", 2)  # "a" failed again: "b" is now the oldest
    ledger.failed("c", 1)
    assert (ledger.failures("a"), ledger.failures("b"), ledger.failures("c")) == (2, 0, 1)
