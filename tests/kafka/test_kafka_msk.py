"""The MSK path end to end against moto's kafka: a cluster made in moto, its ARN as the
mapping's event_source_arn, the brokers named by the documented `msk_bootstrap_servers`
override (moto 5.2.5 creates clusters but answers GetBootstrapBrokers with a 500), and the
records read from the Tansu broker in the `aws:kafka` event shape."""

from __future__ import annotations

import time
from typing import Any

import anyio
import boto3
import kafka_handlers
import pytest
from aws_lambda_powertools.utilities.parser.models import KafkaMskEventModel
from kafka_fixtures import KafkaTopic
from test_kafka_runtime import FAST_GROUP, committed, function, poll_until, produce

from esm.aws import AwsClients
from esm.config import DaemonConfig, _Table
from esm.errors import SourceUnavailable
from esm.observability import Metrics
from esm.sources.kafka.config import KafkaMappingConfig, parse_kafka_mapping
from esm.sources.kafka.runtime import KafkaRuntime, connection

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)

pytestmark = pytest.mark.anyio


def moto_cluster(endpoint: str) -> str:
    kafka = boto3.client("kafka", endpoint_url=endpoint, region_name="us-east-1")
    return str(
        kafka.create_cluster(
            ClusterName=f"c-{time.monotonic_ns()}",
            KafkaVersion="3.6.0",
            NumberOfBrokerNodes=1,
            BrokerNodeGroupInfo={"InstanceType": "kafka.m5.large", "ClientSubnets": ["s-1"]},
        )["ClusterArn"]
    )


def msk_mapping(arn: str, topic: str, group: str, **raw: Any) -> KafkaMappingConfig:
    problems: list[str] = []
    table = {
        "name": f"msk-{topic}",
        "function": "f",
        "event_source_arn": arn,
        "topics": [topic],
        "starting_position": "TRIM_HORIZON",
        "amazon_managed_kafka_event_source_config": {"consumer_group_id": group},
        "maximum_batching_window_in_seconds": 0.05,
        **raw,
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    return config


async def test_a_moto_cluster_arn_reads_the_topic_through_the_override(
    endpoint: str, kafka_topic: KafkaTopic
) -> None:
    arn = moto_cluster(endpoint)
    config = msk_mapping(
        arn, kafka_topic.name, "g-msk", msk_bootstrap_servers=[kafka_topic.bootstrap]
    )
    assert config.is_msk and config.cluster_arn == arn
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
        servers, options = await connection(config, aws)
    assert servers == (kafka_topic.bootstrap,)
    await produce(kafka_topic, [(0, b"a"), (2, b"b"), (2, b"c")])
    metrics = Metrics()
    runtime = KafkaRuntime(
        config,
        function("kafka_handlers.record", metrics),
        metrics,
        bootstrap_servers=servers,
        client_options={**options, **FAST_GROUP},
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        await poll_until(lambda: len(kafka_handlers.values_for(kafka_topic.name)) == 3)
        runtime.stop()
    events = kafka_handlers.events_for(kafka_topic.name)
    for event in events:
        model = KafkaMskEventModel.model_validate(event)
        assert model.eventSource == "aws:kafka" and model.eventSourceArn == arn
        assert event["bootstrapServers"] == kafka_topic.bootstrap
    assert await committed(kafka_topic, "g-msk") == [1, None, 2]


async def test_without_the_override_moto_cannot_name_the_brokers_and_esm_says_what_to_set(
    endpoint: str,
) -> None:
    config = msk_mapping(moto_cluster(endpoint), "orders", "g-none")
    async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
        with pytest.raises(SourceUnavailable) as info:
            await connection(config, aws)
    text = str(info.value)
    assert config.cluster_arn is not None and config.cluster_arn in text
    assert "GetBootstrapBrokers failed" in text and "set msk_bootstrap_servers" in text
