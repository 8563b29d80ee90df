"""Kafka mapping config: AWS's keys, defaults and ranges; errors name the key."""

from __future__ import annotations

from typing import Any

import pytest

from esm.config import _Table
from esm.errors import ConfigError
from esm.sources.kafka.config import (
    KafkaMappingConfig,
    SecretRef,
    default_consumer_group_id,
    is_kafka_mapping,
    parse_kafka_mapping,
)

MSK_ARN = "arn:aws:kafka:us-east-1:123456789012:cluster/demo/abcd1234-ab12-cd34-ef56-1234567890ab-1"


def parse(**raw: Any) -> KafkaMappingConfig:
    problems: list[str] = []
    table = {"function": "f", "topics": ["orders"], "starting_position": "TRIM_HORIZON", **raw}
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    if problems:
        raise ConfigError(problems)
    assert config is not None
    return config


def self_managed(**raw: Any) -> KafkaMappingConfig:
    servers = {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b1:9092", "b2:9092"]}}
    return parse(self_managed_event_source=servers, **raw)


def test_self_managed_defaults_follow_aws() -> None:
    config = self_managed(name="orders")
    assert config.bootstrap_servers == ("b1:9092", "b2:9092")
    assert config.topic == "orders"
    assert config.batch_size == 100
    assert config.maximum_batching_window_in_seconds == 0.5
    assert config.event_source == "SelfManagedKafka"
    assert config.consumer_group_id == default_consumer_group_id("orders")


def test_default_group_is_a_stable_uuid_of_the_mapping_name() -> None:
    import uuid

    group = default_consumer_group_id("orders")
    assert uuid.UUID(group).version == 5
    assert group == default_consumer_group_id("orders") != default_consumer_group_id("other")


def test_consumer_group_id_is_taken_from_the_family_section() -> None:
    config = self_managed(self_managed_kafka_event_source_config={"consumer_group_id": "g-1"})
    assert config.consumer_group_id == "g-1"


def test_msk_takes_the_cluster_arn_and_the_override_brokers() -> None:
    config = parse(
        event_source_arn=MSK_ARN,
        msk_bootstrap_servers=["127.0.0.1:9092"],
        amazon_managed_kafka_event_source_config={"consumer_group_id": "g"},
    )
    assert config.is_msk and config.event_source == "aws:kafka"
    assert config.cluster_arn == MSK_ARN
    assert config.bootstrap_servers == ("127.0.0.1:9092",)
    assert config.consumer_group_id == "g"
    assert is_kafka_mapping({"event_source_arn": MSK_ARN})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"batch_size": 10_001}, "mappings[0].batch_size: 10001 is above the maximum 10000"),
        ({"batch_size": 0}, "mappings[0].batch_size: 0 is below the minimum 1"),
        ({"maximum_batching_window_in_seconds": 301}, "above the maximum 300"),
        ({"topics": ["a", "b"]}, "mappings[0].topics: must be a list with exactly one topic"),
        ({"starting_position": "AT_SEQUENCE_NUMBER"}, "is not one of TRIM_HORIZON, LATEST"),
        ({"starting_position": "AT_TIMESTAMP"}, "starting_position_timestamp: is required"),
        (
            {"self_managed_kafka_event_source_config": {"consumer_group_id": "bad group"}},
            "consumer_group_id: 'bad group' must be 1-200 characters",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "kafka://orders"}}},
            "destination: 'kafka://orders' is the mapping's own topic: Lambda refuses it",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "kafka://bad topic"}}},
            "kafka://<topic> needs a topic name",
        ),
        (
            {"destination_config": {"on_failure": {"destination": "arn:aws:lambda:r:1:fn:f"}}},
            "is not an SQS queue, SNS topic or S3 bucket ARN",
        ),
        ({"maximum_record_age_in_seconds": 59}, "use -1 (infinite) or 60..604800"),
        ({"maximum_record_age_in_seconds": 604_801}, "above the maximum 604800"),
        ({"bisect_batch_on_function_error": "yes"}, "bisect_batch_on_function_error"),
        ({"bogus": 1}, "mappings[0].bogus: unknown key"),
    ],
)
def test_bad_values_name_the_key_and_range(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        self_managed(**raw)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_self_managed_needs_its_brokers() -> None:
    with pytest.raises(ConfigError, match="self_managed_event_source: is required"):
        parse()


def test_brokers_must_be_host_port() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS: 'b1' is not host:port"):
        parse(self_managed_event_source={"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b1"]}})


def test_at_timestamp_is_accepted_as_aws_documents_for_kafka() -> None:
    config = self_managed(starting_position="AT_TIMESTAMP", starting_position_timestamp=1700000000)
    assert config.starting_position == "AT_TIMESTAMP"
    assert config.starting_position_timestamp is not None


def test_access_configurations_take_arn_file_and_env() -> None:
    arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:kafka-AbCdEf"
    config = self_managed(
        source_access_configurations=[
            {"type": "SASL_SCRAM_512_AUTH", "uri": arn},
            {"type": "SERVER_ROOT_CA_CERTIFICATE", "uri": "file:/etc/esm/ca.json"},
        ]
    )
    assert config.access_of(["SASL_SCRAM_512_AUTH"]) is not None
    assert [a.uri for a in config.access] == [
        SecretRef("secretsmanager", arn),
        SecretRef("file", "/etc/esm/ca.json"),
    ]
    env = self_managed(source_access_configurations=[{"type": "BASIC_AUTH", "uri": "env:KAFKA"}])
    assert env.access[0].uri == SecretRef("env", "KAFKA")


def test_two_authentication_methods_are_an_error() -> None:
    with pytest.raises(ConfigError, match="2 authentication methods"):
        self_managed(
            source_access_configurations=[
                {"type": "BASIC_AUTH", "uri": "env:A"},
                {"type": "SASL_SCRAM_256_AUTH", "uri": "env:B"},
            ]
        )


def test_msk_rejects_self_managed_only_access_types() -> None:
    with pytest.raises(ConfigError, match="'BASIC_AUTH' is not one of SASL_SCRAM_512_AUTH"):
        parse(
            event_source_arn=MSK_ARN,
            source_access_configurations=[{"type": "BASIC_AUTH", "uri": "env:A"}],
        )


def test_bad_secret_uri_says_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match="must be a Secrets Manager secret ARN"):
        self_managed(source_access_configurations=[{"type": "BASIC_AUTH", "uri": "s3://x"}])


def test_failure_handling_keys_are_parsed() -> None:
    config = self_managed(
        maximum_record_age_in_seconds=60,
        bisect_batch_on_function_error=True,
        destination_config={"on_failure": {"destination": "arn:aws:sqs:us-east-1:1:dlq"}},
    )
    kafka = self_managed(destination_config={"on_failure": {"destination": "kafka://dlt"}})
    assert kafka.on_failure_destination == "kafka://dlt"
    assert config.maximum_record_age_in_seconds == 60
    assert config.bisect_batch_on_function_error
    assert config.on_failure_destination == "arn:aws:sqs:us-east-1:1:dlq"


def test_recognised_by_its_own_keys_not_by_keys_other_broker_sources_share() -> None:
    kafka = {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b1:9092"]}}
    rabbit = {"endpoints": {"RABBITMQ_BROKER_URLS": ["amqp://mq:5672"]}}
    basic = [{"type": "BASIC_AUTH", "uri": "env:MQ_SECRET"}]
    assert is_kafka_mapping({"self_managed_event_source": kafka})
    assert is_kafka_mapping({"topics": ["orders"]})
    assert not is_kafka_mapping({"self_managed_event_source": rabbit, "queues": ["q"]})
    assert not is_kafka_mapping({"source_access_configurations": basic, "queues": ["q"]})
    assert not is_kafka_mapping({"event_source_arn": "arn:aws:sqs:us-east-1:123456789012:q"})
