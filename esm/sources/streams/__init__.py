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

Nothing here is imported by the modules it builds on (config, functions, state, events).
"""

from esm.sources.streams.mapping import StreamMapping, open_source
from esm.sources.streams.records import (
    ExpiredIterator,
    Position,
    ReadResult,
    ShardInfo,
    StreamRecord,
    StreamSource,
)

__all__ = [
    "ExpiredIterator",
    "Position",
    "ReadResult",
    "ShardInfo",
    "StreamMapping",
    "StreamRecord",
    "StreamSource",
    "open_source",
]
