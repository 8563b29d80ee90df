"""What every shard poller of one stream mapping shares with it (config, source, function,
store, destination, the mapping's bound metrics, its envelope) and its own stop event."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio

from esm.destinations import OnFailureDestination
from esm.events.envelope import records_envelope
from esm.filtering import FilterSet
from esm.idle_pacing import DEFAULT_IDLE_SHARD_READS_PER_SECOND, IdleReadPacer
from esm.invokers import Function
from esm.observability import MappingMetrics
from esm.sources.streams.config import StreamMappingConfig
from esm.sources.streams.records import StreamSource
from esm.state.base import CheckpointStore

if TYPE_CHECKING:
    from esm.state.dynamodb import HeldLease


@dataclass
class ShardContext:
    """What a shard poller shares with its mapping."""

    config: StreamMappingConfig
    source: StreamSource
    function: Function
    store: CheckpointStore
    metrics: MappingMetrics
    filters: FilterSet | None
    filter_view: Any
    destination: OnFailureDestination | None
    mapping_uuid: str
    stopping: anyio.Event = field(default_factory=anyio.Event)
    idle_pacer: IdleReadPacer = field(
        default_factory=lambda: IdleReadPacer(DEFAULT_IDLE_SHARD_READS_PER_SECOND)
    )
    """Shared by every mapping of the daemon: one budget of reads for caught-up shards."""
    envelope: Callable[[list[Any]], dict[str, Any]] = records_envelope
    """The family's invocation event of a batch (esm/sources/registry.py)."""
    lease: HeldLease | None = None
    """Fleet mode: the lease this shard's poller started on; its checkpoints are written
    only while that very lease is held (`CheckpointStore.put`)."""
