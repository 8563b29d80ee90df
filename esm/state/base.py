"""The checkpoint store interface: where stream mappings remember how far each shard got.

Owns the shape of a checkpoint and the contract a backend keeps (a `put` that returned is
durable). It must not decide *which* checkpoint to write: that arithmetic lives in
`esm.sources.streams.progress`, and the store stores whatever it is given, even a lower one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from esm.errors import EsmError

if TYPE_CHECKING:
    from esm.state.dynamodb import HeldLease


class StateStoreError(EsmError):
    """The checkpoint store cannot be opened or used (bad path, foreign file, newer schema)."""


class LeaseLost(EsmError):
    """This worker no longer holds the shard's lease (another worker took it, or it was not
    renewed within `failover_time`): the shard must stop at once and is never checkpointed
    by this worker again. Only the DynamoDB store (fleet mode) raises it."""


@dataclass(frozen=True)
class Checkpoint:
    """Progress of one shard of one mapping.

    `sequence_number` is the last record fully processed (every record up to it is done), so
    a restart reads AFTER_SEQUENCE_NUMBER it; None means nothing is done yet. `shard_ended`
    records that a closed shard was read to its end and all of it is done, which is what lets
    its child shards start after a reshard (Lambda processes parents before children).

    `incarnation` names the stream the checkpoint was taken on (`ShardInfo.incarnation`): a
    stream deleted and created again under the same name has the same shard ids, and its
    sequence numbers start over, so an old checkpoint would skip its records. None (a
    checkpoint stored before esm recorded incarnations) matches any incarnation.
    """

    sequence_number: str | None
    shard_ended: bool = False
    incarnation: str | None = None

    def matches(self, incarnation: str | None) -> bool:
        """Was this checkpoint taken on the stream incarnation given (unknown matches)?"""
        return self.incarnation is None or incarnation is None or self.incarnation == incarnation


class CheckpointStore(Protocol):
    """Checkpoints keyed by (mapping name, shard id)."""

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        """The shard's checkpoint, or None when none was ever stored."""
        ...

    async def put(
        self,
        mapping: str,
        shard_id: str,
        checkpoint: Checkpoint,
        lease: HeldLease | None = None,
    ) -> None:
        """Store the checkpoint, replacing any earlier one; durable once this returns.

        A leasing store (DynamoDB) raises `LeaseLost` instead when this worker does not
        hold the shard's lease; nothing is written then. `lease` is the lease the writer's
        poller started on: the write is then conditioned on *that* lease (its owner and
        counter), so a poller of a lease lost and since taken back (another `HeldLease`,
        with its own poller) cannot move the checkpoint back. Other stores ignore it."""
        ...

    async def all(self, mapping: str) -> dict[str, Checkpoint]:
        """Every stored checkpoint of one mapping, by shard id."""
        ...

    async def close(self) -> None:
        """Release the store; calling it again is harmless."""
        ...
