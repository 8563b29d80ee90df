"""`esm status` for Kafka: which group member (esm worker) holds each partition, next to the
committed offset and lag; from the broker's DescribeGroups, joined to no group."""

from __future__ import annotations

import anyio
import kafka_handlers
import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from kafka_fixtures import KafkaTopic
from test_kafka_runtime import FAST_GROUP, function, mapping, poll_commits, produce

from esm.aws import AwsClients
from esm.config import DaemonConfig
from esm.observability import Metrics
from esm.sources.kafka.auth import client_options, worker_client_id
from esm.sources.kafka.runtime import KafkaRuntime
from esm.sources.kafka.status import partition_owners, partition_rows

pytest_plugins = ["kafka_fixtures"]  # the session broker (see kafka_fixtures.py)


def assignment(topic: str, partitions: list[int], other: str = "other-topic") -> bytes:
    """A member's assignment as a Kafka broker returns it in DescribeGroups."""
    return bytes(
        ConsumerProtocolMemberAssignment(0, [(topic, partitions), (other, [0])], b"").encode()
    )


def test_owners_come_from_each_members_assignment_of_the_topic() -> None:
    members = [("esm-a-1-x", assignment("t", [0, 2])), ("esm-b-2-y", assignment("t", [1]))]
    assert partition_owners(members, "t") == {0: "esm-a-1-x", 2: "esm-a-1-x", 1: "esm-b-2-y"}


def test_a_broker_without_assignments_names_a_lone_member_or_counts_them() -> None:
    assert partition_owners([("esm-a-1-x", b"")], "t") == "esm-a-1-x"
    assert partition_owners([("esm-a-1-x", b""), ("esm-b-2-y", b"")], "t") == "(2 members)"
    assert partition_owners([], "t") == {}


async def _no_owners(mapping: str) -> dict[str, str]:
    return {}


async def _no_checkpoints(mapping: str) -> dict[str, object]:
    return {}


@pytest.mark.anyio
async def test_status_names_the_running_worker_as_owner_of_every_partition(
    kafka_topic: KafkaTopic,
) -> None:
    config = mapping(kafka_topic, "g-owner")
    await produce(kafka_topic, [(0, b"a"), (1, b"b"), (2, b"c")])
    metrics = Metrics()
    options = {**await client_options(config), **FAST_GROUP}
    runtime = KafkaRuntime(
        config, function("kafka_handlers.record", metrics), metrics, client_options=options
    )
    async with AwsClients(DaemonConfig()) as aws, anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        await poll_commits(kafka_topic, "g-owner", [1, 1, 1])
        rows = await partition_rows(config, aws, _no_owners, _no_checkpoints)  # type: ignore[arg-type]
        runtime.stop()
    assert len(kafka_handlers.values_for(kafka_topic.name)) == 3
    assert [row.shard_id for row in rows] == [f"{kafka_topic.name}-{p}" for p in range(3)]
    for row in rows:
        assert row.owner.startswith(worker_client_id() + "-"), row  # Kafka's member id
        assert row.checkpoint == "1" and row.iterator_age == "lag 0"
