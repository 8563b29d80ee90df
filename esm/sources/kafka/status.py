"""What `esm status` shows of a Kafka mapping: per partition of its topic the consumer
group's committed offset and the lag behind the partition's end (AWS's OffsetLag: records
written that the group has not finished), read from the brokers themselves.

Joins no group and commits nothing: a plain client asks for the topic's partitions, their
end offsets and the group's committed offsets. Kafka assigns partitions to the group's
members, so the owner column is `-` (the broker knows the members, not esm's state store).
"""

from __future__ import annotations

from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from esm.aws import AwsClients
from esm.errors import SourceUnavailable
from esm.sources.base import CheckpointsReader, OwnersReader, StatusRow
from esm.sources.kafka.config import KafkaMappingConfig
from esm.sources.kafka.event import partition_key
from esm.sources.kafka.runtime import connection

STATUS_TIMEOUT = 10.0
"""Seconds `esm status` waits for the brokers before it shows the topic as unreachable."""


async def partition_rows(
    mapping: KafkaMappingConfig,
    aws: AwsClients,
    owners_of: OwnersReader,
    checkpoints_of: CheckpointsReader,
) -> list[StatusRow]:
    """One row per partition of the mapping's topic (the checkpoint store holds nothing of
    Kafka: offsets live in the consumer group, so `owners_of` / `checkpoints_of` go unused).
    Brokers that cannot be read within STATUS_TIMEOUT give one `unreachable (...)` row, and
    the other mappings are still listed (as for the broker queues)."""
    servers, options = await connection(mapping, aws)
    try:
        with anyio.fail_after(STATUS_TIMEOUT):
            return await _read_rows(mapping, servers, options)
    except (SourceUnavailable, TimeoutError) as exc:
        reason = (
            str(exc)
            if isinstance(exc, SourceUnavailable)
            else (f"Kafka brokers {','.join(servers)}: no answer within {STATUS_TIMEOUT:g} s")
        )
        return [StatusRow(mapping.name, mapping.topic, f"unreachable ({reason})", "-", "-", "-")]


async def _read_rows(
    mapping: KafkaMappingConfig, servers: tuple[str, ...], options: dict[str, Any]
) -> list[StatusRow]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=list(servers),
        group_id=mapping.consumer_group_id,
        enable_auto_commit=False,
        **options,
    )
    try:
        await consumer.start()
        return await _rows(mapping, consumer)
    except KafkaError as exc:
        raise SourceUnavailable(
            f"Kafka brokers {','.join(servers)} cannot be read ({type(exc).__name__})"
        ) from None
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(5):
            await consumer.stop()


async def _rows(mapping: KafkaMappingConfig, consumer: Any) -> list[StatusRow]:
    await consumer.topics()  # metadata of the cluster, so the topic's partitions are known
    numbers = consumer.partitions_for_topic(mapping.topic)
    if not numbers:
        return [StatusRow(mapping.name, mapping.topic, "missing", "-", "-", "-")]
    tps = [TopicPartition(mapping.topic, n) for n in sorted(numbers)]
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    rows = []
    for tp in tps:
        committed = await consumer.committed(tp)
        rows.append(
            StatusRow(
                mapping=mapping.name,
                shard_id=partition_key(tp.topic, tp.partition),
                state="open",
                owner="-",
                checkpoint=str(committed) if committed is not None else "(none)",
                iterator_age=_lag(mapping, committed, starts[tp], ends[tp]),
            )
        )
    return rows


def _lag(mapping: KafkaMappingConfig, committed: int | None, start: int, end: int) -> str:
    """`lag N` records; without a committed offset the group starts at starting_position
    (TRIM_HORIZON: the first record kept; LATEST: the end, so nothing is behind)."""
    if committed is None:
        if mapping.starting_position == "LATEST":
            return "lag 0"
        if mapping.starting_position == "AT_TIMESTAMP":
            return "-"
        committed = start
    return f"lag {max(0, end - committed)}"
