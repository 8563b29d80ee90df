"""The stream family (Kinesis, DynamoDB Streams): a mapping reads every shard in order and
invokes its function with Lambda's batching, retry and checkpoint rules.

The package reads top to bottom as the stages of a stream mapping:

- `records`: records, shards, positions and the `StreamSource` protocol;
- `kinesis`, `dynamodb`: the two source adapters;
- `mapping`: shard discovery, resharding lineage, leases (`leases`), resume from checkpoints;
- `poller`: one shard read in order, fanned out to lanes, checkpointed (`progress`);
- `lane`: buffer, batch cut and tumbling windows (`tumbling`), invoking a batch;
- `policy`: what follows an invocation (done, retry, bisect, give up), pure;
- `give_up`: the on-failure record and its delivery, or the drop.

- `config`: the mapping's keys, parsed once (the only module the registry imports);
- `status`: what `esm status` shows of a stream mapping.

Nothing here is imported by the modules it builds on (config, functions, state, events).
The runtime (`StreamMapping`, `open_source`) is imported on first use, so reading a config
never imports a poller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esm.sources.streams.config import StreamMappingConfig
from esm.sources.streams.records import (
    ExpiredIterator,
    Position,
    ReadResult,
    ShardInfo,
    StreamRecord,
    StreamSource,
)

if TYPE_CHECKING:
    from esm.sources.streams.mapping import StreamMapping, open_source

__all__ = [
    "ExpiredIterator",
    "Position",
    "ReadResult",
    "ShardInfo",
    "StreamMapping",
    "StreamMappingConfig",
    "StreamRecord",
    "StreamSource",
    "open_source",
]


def __getattr__(name: str) -> Any:
    if name in ("StreamMapping", "open_source"):
        from esm.sources.streams import mapping

        return getattr(mapping, name)
    raise AttributeError(name)
