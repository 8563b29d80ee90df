"""What `esm status` shows of a stream mapping: per shard its state, the lease owner, the
checkpoint and the iterator age, measured the way Lambda reports IteratorAge: the age of the
first record after the checkpoint (Kinesis: MillisBehindLatest), 0 when read to its tip."""

from __future__ import annotations

import time

from esm.aws import AwsClients
from esm.sources.base import CheckpointsReader, OwnersReader, StatusRow
from esm.sources.streams.config import StreamMappingConfig
from esm.sources.streams.mapping import open_source
from esm.sources.streams.records import Position, ShardInfo, StreamSource
from esm.state.base import Checkpoint


async def shard_rows(
    mapping: StreamMappingConfig,
    aws: AwsClients,
    owners_of: OwnersReader,
    checkpoints_of: CheckpointsReader,
) -> list[StatusRow]:
    """One row per shard the stream lists; writes nothing and takes no lease."""
    rows: list[StatusRow] = []
    source = open_source(mapping, aws)
    try:
        shards = await source.list_shards()
        checkpoints = await checkpoints_of(mapping.name)
        owners = await owners_of(mapping.name)
        for shard in shards:
            checkpoint = checkpoints.get(shard.shard_id)
            rows.append(await _shard_status(mapping, source, shard, checkpoint, owners))
    finally:
        await source.aclose()
    return rows


async def _shard_status(
    mapping: StreamMappingConfig,
    source: StreamSource,
    shard: ShardInfo,
    checkpoint: Checkpoint | None,
    owners: dict[str, str],
) -> StatusRow:
    ended = checkpoint is not None and checkpoint.shard_ended
    state = "ended" if ended else "closed" if shard.closed else "open"
    seq = checkpoint.sequence_number if checkpoint else None
    shown = "SHARD_END" if ended else seq or "(none)"
    age = "-"
    if not ended:
        age = await _iterator_age(mapping, source, shard, seq)
    owner = owners.get(shard.shard_id, "-" if not owners else "(no lease)")
    return StatusRow(mapping.name, shard.shard_id, state, owner, shown, age)


async def _iterator_age(
    mapping: StreamMappingConfig, source: StreamSource, shard: ShardInfo, seq: str | None
) -> str:
    if seq is not None:
        position = Position("AFTER_SEQUENCE_NUMBER", seq)
    elif shard.parent_ids or mapping.starting_position != "LATEST":
        position = Position("TRIM_HORIZON")
    else:
        return "0s"
    try:
        iterator = await source.iterator_at(shard.shard_id, position)
        result = await source.read(shard.shard_id, iterator)
    except Exception as exc:
        return f"? ({type(exc).__name__})"
    if result.records:
        records = result.records
        seconds = max(0.0, time.time() - records.fields.arrival(records.events[0]))
    elif result.millis_behind is not None:
        seconds = result.millis_behind / 1000
    else:
        seconds = 0.0
    return f"{seconds:.0f}s"
