"""The DynamoDB checkpoint store: one lease table shared by a fleet of esm workers.

Owns the lease table's shape and every conditional write to it (create, renew, take,
release, checkpoint). It must not decide *which* leases to take: that is
`esm.sources.streams.leases`.

The table follows the Kinesis Client Library's lease table, so people moving from KCL
recognise it. One item per (mapping, shard):

| attribute | type | meaning |
|---|---|---|
| `leaseKey` (hash key) | S | `<mapping name>:<shard id>` |
| `leaseOwner` | S | worker id (`host:pid:suffix`); absent when nobody holds it |
| `leaseCounter` | N | +1 on every renew, take, release and checkpoint |
| `checkpoint` | S | last sequence number done; `TRIM_HORIZON`/`LATEST` (none yet); `SHARD_END` |
| `checkpointSubSequenceNumber` | N | always 0 (esm does not de-aggregate KPL records) |
| `ownerSwitchesSinceCheckpoint` | N | takes since the last checkpoint |
| `parentShardId` | SS | parent shard ids (absent for shards without parents) |
| `shardIncarnation` | S | the checkpoint's stream incarnation (absent on old leases: matches any) |
| `shardId`, `esmMapping` | S | the two halves of `leaseKey`, for reading and filtering |

Every write that matters is conditional on `leaseOwner` and `leaseCounter` still being what
this worker last wrote (optimistic concurrency, no home-made consensus): a checkpoint from
a worker that lost its lease fails, and the worker learns it lost the lease.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio

from esm.aws import AwsClients, error_code
from esm.errors import SourceUnavailable
from esm.observability import get_logger
from esm.state.base import Checkpoint, LeaseLost, StateStoreError

log = get_logger("esm.state.dynamodb")

T = TypeVar("T")

TRIM_HORIZON = "TRIM_HORIZON"
SHARD_END = "SHARD_END"
SENTINELS = frozenset({"TRIM_HORIZON", "LATEST", "AT_TIMESTAMP"})
_CONDITION_FAILED = "ConditionalCheckFailedException"

SCHEMA_HELP = (
    "create it with `create_table = true` in [state], or by hand: partition key `leaseKey`"
    " (String), no sort key, on-demand capacity (e.g. `aws dynamodb create-table --table-name"
    " {table} --attribute-definitions AttributeName=leaseKey,AttributeType=S --key-schema"
    " AttributeName=leaseKey,KeyType=HASH --billing-mode PAY_PER_REQUEST`)"
)


def new_worker_id() -> str:
    """Host, pid and a random suffix: unique even when a pid is reused after a restart."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def lease_key(mapping: str, shard_id: str) -> str:
    return f"{mapping}:{shard_id}"


@dataclass(frozen=True)
class Lease:
    """One item of the lease table, as last read or written by this worker."""

    mapping: str
    shard_id: str
    owner: str | None
    counter: int
    checkpoint: str = TRIM_HORIZON
    owner_switches: int = 0
    parent_ids: tuple[str, ...] = ()
    incarnation: str | None = None

    @property
    def key(self) -> str:
        return lease_key(self.mapping, self.shard_id)

    @property
    def ended(self) -> bool:
        return self.checkpoint == SHARD_END

    def as_checkpoint(self) -> Checkpoint:
        if self.checkpoint == SHARD_END:
            return Checkpoint(None, shard_ended=True, incarnation=self.incarnation)
        if self.checkpoint in SENTINELS:
            return Checkpoint(None, incarnation=self.incarnation)
        return Checkpoint(self.checkpoint, incarnation=self.incarnation)


@dataclass
class HeldLease:
    """A lease this worker holds: renewals and checkpoints of it take turns (both bump the
    counter the next conditional write expects). `lost` is set once, for good."""

    lease: Lease
    taken_from_live_owner: bool = False
    lost: anyio.Event = field(default_factory=anyio.Event)
    renewed_at: float = field(default_factory=time.monotonic)
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    on_lost: Callable[[], None] | None = None
    """Called when the store gives the lease up (stall check, checkpoint refused or not
    written in time), so its coordinator counts the loss and refreshes the mapping."""


class LeaseTable:
    """The conditional writes and reads of the lease table (aiobotocore, shared retry policy)."""

    def __init__(self, aws: AwsClients, table: str) -> None:
        self.aws = aws
        self.table = table

    async def _call(self, operation: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        client = await self.aws.client("dynamodb")
        return await self.aws.retry.call(f"dynamodb.{operation}", lambda: fn(client))

    async def ensure(self, create: bool) -> None:
        """Check the table exists (creating it when asked) and has the lease table's key."""
        try:
            described = await self._call(
                "DescribeTable", lambda c: c.describe_table(TableName=self.table)
            )
        except SourceUnavailable as exc:
            if not create:
                help_text = SCHEMA_HELP.format(table=self.table)
                raise StateStoreError(
                    f"lease table {self.table!r} does not exist or cannot be read ({exc});"
                    f" {help_text}"
                ) from exc
            await self._create()
            return
        keys = described["Table"]["KeySchema"]
        if [(k["AttributeName"], k["KeyType"]) for k in keys] != [("leaseKey", "HASH")]:
            raise StateStoreError(
                f"lease table {self.table!r} has key {keys}, not the lease table's;"
                f" {SCHEMA_HELP.format(table=self.table)}"
            )

    async def _create(self) -> None:
        try:
            await self._call(
                "CreateTable",
                lambda c: c.create_table(
                    TableName=self.table,
                    AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                    KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                    BillingMode="PAY_PER_REQUEST",
                ),
            )
            log.info("leases.table_created", table=self.table)
        except Exception as exc:
            if error_code(exc) != "ResourceInUseException":  # another worker created it first
                raise StateStoreError(f"cannot create lease table {self.table!r}: {exc}") from exc
        for _ in range(600):
            described = await self._call(
                "DescribeTable", lambda c: c.describe_table(TableName=self.table)
            )
            if described["Table"]["TableStatus"] == "ACTIVE":
                return
            await anyio.sleep(0.5)
        raise StateStoreError(f"lease table {self.table!r} did not become ACTIVE")

    async def scan(self, mapping: str | None = None) -> list[Lease]:
        """Every lease (of one mapping, when given); strongly consistent."""
        leases: list[Lease] = []
        kwargs: dict[str, Any] = {"TableName": self.table, "ConsistentRead": True}
        if mapping is not None:
            kwargs["FilterExpression"] = "esmMapping = :m"
            kwargs["ExpressionAttributeValues"] = {":m": {"S": mapping}}
        while True:
            page = await self._call("Scan", lambda c: c.scan(**kwargs))
            leases.extend(
                _from_item(item) for item in page.get("Items", []) if "esmMapping" in item
            )
            if "LastEvaluatedKey" not in page:
                return leases
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    async def get(self, mapping: str, shard_id: str) -> Lease | None:
        key = {"leaseKey": {"S": lease_key(mapping, shard_id)}}
        item = await self._call(
            "GetItem", lambda c: c.get_item(TableName=self.table, Key=key, ConsistentRead=True)
        )
        return _from_item(item["Item"]) if "Item" in item else None

    async def create(self, lease: Lease) -> bool:
        """Create an unowned lease; False when it already exists (another worker was first)."""
        item: dict[str, Any] = {
            "leaseKey": {"S": lease.key},
            "esmMapping": {"S": lease.mapping},
            "shardId": {"S": lease.shard_id},
            "leaseCounter": {"N": str(lease.counter)},
            "checkpoint": {"S": lease.checkpoint},
            "checkpointSubSequenceNumber": {"N": "0"},
            "ownerSwitchesSinceCheckpoint": {"N": "0"},
        }
        if lease.parent_ids:
            item["parentShardId"] = {"SS": list(lease.parent_ids)}
        if lease.incarnation is not None:
            item["shardIncarnation"] = {"S": lease.incarnation}
        return await self._conditional(
            "PutItem",
            lambda c: c.put_item(
                TableName=self.table,
                Item=item,
                ConditionExpression="attribute_not_exists(leaseKey)",
            ),
        )

    async def delete(self, lease: Lease) -> bool:
        """Delete a finished lease, unless someone changed it since it was read."""
        return await self._conditional(
            "DeleteItem",
            lambda c: c.delete_item(
                TableName=self.table,
                Key={"leaseKey": {"S": lease.key}},
                ConditionExpression="leaseCounter = :c",
                ExpressionAttributeValues={":c": {"N": str(lease.counter)}},
            ),
        )

    async def restart(self, lease: Lease, checkpoint: str, incarnation: str) -> bool:
        """Point a lease of an earlier stream incarnation at the new one, from `checkpoint`
        (the mapping's starting position), unless someone changed it since it was read. Its
        owner, if any, loses it at its next renewal and the shard is taken afresh."""
        return await self._conditional(
            "UpdateItem",
            lambda c: c.update_item(
                TableName=self.table,
                Key={"leaseKey": {"S": lease.key}},
                UpdateExpression="SET leaseCounter = :next, #cp = :cp, shardIncarnation = :inc,"
                " checkpointSubSequenceNumber = :zero REMOVE leaseOwner",
                ConditionExpression="leaseCounter = :c",
                ExpressionAttributeNames={"#cp": "checkpoint"},
                ExpressionAttributeValues={
                    ":c": {"N": str(lease.counter)},
                    ":next": {"N": str(lease.counter + 1)},
                    ":cp": {"S": checkpoint},
                    ":inc": {"S": incarnation},
                    ":zero": {"N": "0"},
                },
            ),
        )

    async def restart_held(self, lease: Lease, checkpoint: str, incarnation: str) -> Lease | None:
        """`restart` for a lease this worker holds: it keeps it (the write is conditional on
        its owner and counter, as a checkpoint is); None when it was lost."""
        return await self.checkpoint(lease, checkpoint, incarnation)

    async def renew(self, lease: Lease) -> Lease | None:
        """Bump the counter if this worker still holds it; None when it was lost."""
        return await self._update_held(lease, "SET leaseCounter = :next", {}, replace(lease))

    async def checkpoint(
        self, lease: Lease, checkpoint: str, incarnation: str | None = None
    ) -> Lease | None:
        update = (
            "SET leaseCounter = :next, #cp = :cp, checkpointSubSequenceNumber = :zero,"
            " ownerSwitchesSinceCheckpoint = :zero"
        )
        values: dict[str, Any] = {":cp": {"S": checkpoint}, ":zero": {"N": "0"}}
        if incarnation is not None:
            update += ", shardIncarnation = :inc"
            values[":inc"] = {"S": incarnation}
        return await self._update_held(
            lease,
            update,
            values,
            replace(
                lease,
                checkpoint=checkpoint,
                owner_switches=0,
                incarnation=incarnation or lease.incarnation,
            ),
            names={"#cp": "checkpoint"},
        )

    async def release(self, lease: Lease) -> bool:
        """Give the lease up (leaseOwner removed) so another worker takes it at once."""
        released = await self._update_held(
            lease, "SET leaseCounter = :next REMOVE leaseOwner", {}, replace(lease, owner=None)
        )
        return released is not None

    async def take(self, lease: Lease, worker: str) -> Lease | None:
        """Take a lease as last seen (expired, unowned, or stolen); None if it changed since."""
        values: dict[str, Any] = {
            ":c": {"N": str(lease.counter)},
            ":next": {"N": str(lease.counter + 1)},
            ":me": {"S": worker},
            ":one": {"N": "1"},
            ":zero": {"N": "0"},
        }
        if lease.owner is None:
            condition = "leaseCounter = :c AND attribute_not_exists(leaseOwner)"
        else:
            condition = "leaseCounter = :c AND leaseOwner = :old"
            values[":old"] = {"S": lease.owner}
        switches = lease.owner_switches + (1 if lease.owner != worker else 0)
        ok = await self._conditional(
            "UpdateItem",
            lambda c: c.update_item(
                TableName=self.table,
                Key={"leaseKey": {"S": lease.key}},
                UpdateExpression="SET leaseOwner = :me, leaseCounter = :next,"
                " ownerSwitchesSinceCheckpoint ="
                " if_not_exists(ownerSwitchesSinceCheckpoint, :zero) + :one",
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
            ),
        )
        return (
            replace(lease, owner=worker, counter=lease.counter + 1, owner_switches=switches)
            if ok
            else None
        )

    async def _update_held(
        self,
        lease: Lease,
        update: str,
        values: dict[str, Any],
        updated: Lease,
        names: dict[str, str] | None = None,
    ) -> Lease | None:
        assert lease.owner is not None
        all_values = {
            ":me": {"S": lease.owner},
            ":c": {"N": str(lease.counter)},
            ":next": {"N": str(lease.counter + 1)},
            **values,
        }
        extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        ok = await self._conditional(
            "UpdateItem",
            lambda c: c.update_item(
                TableName=self.table,
                Key={"leaseKey": {"S": lease.key}},
                UpdateExpression=update,
                ConditionExpression="leaseOwner = :me AND leaseCounter = :c",
                ExpressionAttributeValues=all_values,
                **extra,
            ),
        )
        return replace(updated, counter=lease.counter + 1) if ok else None

    async def _conditional(self, operation: str, fn: Callable[[Any], Awaitable[Any]]) -> bool:
        """Run a conditional write; False when its condition did not hold."""
        try:
            await self._call(operation, fn)
        except Exception as exc:
            if error_code(exc) == _CONDITION_FAILED:
                return False
            raise
        return True


def _from_item(item: dict[str, Any]) -> Lease:
    return Lease(
        mapping=item["esmMapping"]["S"],
        shard_id=item["shardId"]["S"],
        owner=item["leaseOwner"]["S"] if "leaseOwner" in item else None,
        counter=int(item["leaseCounter"]["N"]),
        checkpoint=item.get("checkpoint", {}).get("S", TRIM_HORIZON),
        owner_switches=int(item.get("ownerSwitchesSinceCheckpoint", {}).get("N", "0")),
        parent_ids=tuple(sorted(item.get("parentShardId", {}).get("SS", []))),
        incarnation=item.get("shardIncarnation", {}).get("S"),
    )


@dataclass(frozen=True)
class LeaseTimings:
    """From [state]: how often leases are renewed, when an unrenewed one is expired, and
    how many leases one balancing cycle may take."""

    renewal_interval: float = 2.0
    failover_time: float = 10.0
    max_taken_per_cycle: int = 2

    @property
    def balance_interval(self) -> float:
        """A third of failover_time (never below the renewal interval): a dead worker's
        shards are taken within failover_time plus one such cycle."""
        return max(self.renewal_interval, self.failover_time / 3)


class DynamoDBCheckpointStore:
    """A `CheckpointStore` on the lease table; `put` only succeeds for leases held here.

    `held` is this worker's view of its leases, kept by
    `esm.sources.streams.leases.LeaseCoordinator`."""

    def __init__(
        self, table: LeaseTable, worker_id: str, timings: LeaseTimings | None = None
    ) -> None:
        self.table = table
        self.worker_id = worker_id
        self.timings = timings or LeaseTimings()
        self.held: dict[str, HeldLease] = {}

    @classmethod
    async def open(
        cls,
        aws: AwsClients,
        table: str,
        *,
        create: bool,
        timings: LeaseTimings | None = None,
        worker_id: str | None = None,
    ) -> DynamoDBCheckpointStore:
        lease_table = LeaseTable(aws, table)
        await lease_table.ensure(create)
        store = cls(lease_table, worker_id or new_worker_id(), timings)
        log.info("leases.worker", worker=store.worker_id, table=table)
        return store

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        lease = await self.table.get(mapping, shard_id)
        return None if lease is None else lease.as_checkpoint()

    async def all(self, mapping: str) -> dict[str, Checkpoint]:
        return {lease.shard_id: lease.as_checkpoint() for lease in await self.table.scan(mapping)}

    def still_held(self, mapping: str, shard_id: str) -> bool:
        """Is the lease held here *and* renewed within `failover_time`, on this worker's
        monotonic clock? Past that, other workers may have taken it (a worker stalled by
        SIGSTOP, swap or a long GC pause does not know it yet), so it is given up at once:
        marked lost, which stops its shard before another invocation or checkpoint."""
        held = self.held.get(lease_key(mapping, shard_id))
        if held is None or held.lost.is_set():
            return False
        stale_for = time.monotonic() - held.renewed_at
        if stale_for < self.timings.failover_time:
            return True
        self._give_up(
            held,
            mapping,
            shard_id,
            "not renewed within failover_time (this worker was stalled)",
            since_renewal_s=round(stale_for, 3),
        )
        return False

    def _give_up(
        self, held: HeldLease, mapping: str, shard_id: str, reason: str, **fields: Any
    ) -> None:
        """Mark a lease lost here (not by its coordinator), and tell the coordinator."""
        held.lost.set()
        self.held.pop(held.lease.key, None)
        log.warning(
            "lease.lost",
            worker=self.worker_id,
            mapping=mapping,
            shard=shard_id,
            reason=reason,
            **fields,
        )
        if held.on_lost is not None:
            held.on_lost()

    async def put(
        self,
        mapping: str,
        shard_id: str,
        checkpoint: Checkpoint,
        lease: HeldLease | None = None,
    ) -> None:
        """Write the checkpoint conditioned on this worker's lease (owner and counter), as
        KCL's checkpointer does. With `lease` (the one the writing poller started on), only
        while that very lease is held: after a loss and a retake the table names this worker
        again, but under another `HeldLease` whose poller restarted from the stored
        checkpoint, and the old poller's last write would move the checkpoint back."""
        key = lease_key(mapping, shard_id)
        if lease is not None and self.held.get(key) is not lease:
            raise LeaseLost(f"{mapping}:{shard_id}: the lease this poller started on was lost")
        if not self.still_held(mapping, shard_id):
            raise LeaseLost(f"{mapping}:{shard_id} is not leased by {self.worker_id}")
        held = self.held[key]
        if checkpoint.shard_ended:
            value = SHARD_END
        elif checkpoint.sequence_number is not None:
            value = checkpoint.sequence_number
        else:
            return  # nothing done yet: the lease already says so
        async with held.lock:
            if held.lost.is_set():
                raise LeaseLost(f"{mapping}:{shard_id} was lost by {self.worker_id}")
            if not Checkpoint(None, incarnation=held.lease.incarnation).matches(
                checkpoint.incarnation
            ):
                # A poller of the deleted stream, stopping, after the lease was restarted on
                # the new one: its position means nothing there and must not be resumed.
                log.info(
                    "checkpoint.other_incarnation",
                    worker=self.worker_id,
                    mapping=mapping,
                    shard=shard_id,
                    lease=held.lease.incarnation,
                    checkpoint=checkpoint.incarnation,
                )
                return
            # Bounded like a renewal: past failover_time the lease may be another worker's,
            # and a write hanging on an unanswering table must not hold a stop for minutes.
            left = self.timings.failover_time - (time.monotonic() - held.renewed_at)
            with anyio.move_on_after(max(left, 0.1)) as bound:
                updated = await self.table.checkpoint(held.lease, value, checkpoint.incarnation)
            if bound.cancelled_caught:
                self._give_up(
                    held, mapping, shard_id, "checkpoint not written within failover_time"
                )
                raise LeaseLost(f"{mapping}:{shard_id} could not be checkpointed in time")
            if updated is None:
                self._give_up(
                    held, mapping, shard_id, "checkpoint refused: taken by another worker"
                )
                raise LeaseLost(f"{mapping}:{shard_id} was taken from {self.worker_id}")
            held.lease = updated
            held.renewed_at = time.monotonic()

    async def close(self) -> None:
        """Leases are released by each mapping as it stops; nothing is left to do here."""
