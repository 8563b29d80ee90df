"""What `esm status` shows of a Kafka mapping: per partition of its topic the consumer
group's committed offset and the lag behind the partition's end (AWS's OffsetLag: records
written that the group has not finished), read from the brokers themselves.

Joins no group and commits nothing: a plain client asks for the topic's partitions, their
end offsets and the group's committed offsets. Kafka assigns partitions to the group's
members, so the owner column comes from the broker too (DescribeGroups): the member id of
the member whose assignment holds the partition. esm's member ids start with
`esm-HOST-PID` (auth.worker_client_id), so the owner names the worker. A broker that
reports members without their assignments (Tansu does) still names the owner when the
group has one member; with several it says how many, since which holds what is unknown.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient  # type: ignore[import-untyped]
from aiokafka.coordinator.protocol import (  # type: ignore[import-untyped]
    ConsumerProtocolMemberAssignment,
)
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from esm.aws import AwsClients
from esm.errors import SourceUnavailable
from esm.sources.base import CheckpointsReader, OwnersReader, StatusRow
from esm.sources.kafka.auth import KafkaLoginFailed, check_login
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
        await check_login(mapping, servers, options)
        await consumer.start()
        rows = await _rows(mapping, consumer)
        try:
            owners = partition_owners(await _members(mapping, servers, options), mapping.topic)
        except KafkaError:  # a broker without DescribeGroups: the rest is still true
            owners = "-"
        return [_with_owner(row, owners) for row in rows]
    except KafkaLoginFailed as exc:
        raise SourceUnavailable(str(exc)) from None
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


Member = tuple[str, bytes]
"""(member id, member_assignment bytes as DescribeGroups returns them; empty if unknown)."""


async def _members(
    mapping: KafkaMappingConfig, servers: Sequence[str], options: dict[str, Any]
) -> list[Member]:
    """The consumer group's members (DescribeGroups, through the group's coordinator)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=list(servers), **options)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([mapping.consumer_group_id])
    finally:
        await admin.close()
    members: list[Member] = []
    for response in responses:
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members, ...); a member
            # starts with its id and ends with its assignment in every DescribeGroups version.
            if group[0] == 0 and group[1] == mapping.consumer_group_id:
                members.extend((str(m[0]), bytes(m[-1] or b"")) for m in group[5])
    return members


def partition_owners(members: Sequence[Member], topic: str) -> dict[int, str] | str:
    """Partition -> member id from the members' assignments of `topic`; when the broker
    reports no assignment at all, one text for every partition: the only member's id, or
    `(N members)`. Partitions no member holds (a rebalance, no member) are left out."""
    owners: dict[int, str] = {}
    reported = [(member, data) for member, data in members if data]
    if not reported:
        if len(members) == 1:
            return members[0][0]
        return f"({len(members)} members)" if members else {}
    for member, data in reported:
        assignment = ConsumerProtocolMemberAssignment.decode(data)
        for assigned_topic, partitions in assignment.assignment:
            if assigned_topic == topic:
                owners.update((partition, member) for partition in partitions)
    return owners


def _with_owner(row: StatusRow, owners: dict[int, str] | str) -> StatusRow:
    if row.state == "missing":
        return row
    if isinstance(owners, str):
        owner = owners
    else:
        owner = owners.get(int(row.shard_id.rsplit("-", 1)[1]), "(none)")
    return dataclasses.replace(row, owner=owner)
