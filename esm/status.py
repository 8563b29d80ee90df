"""`esm status -c CONFIG`: the shards of every stream mapping, who reads them, how far each
got and how far behind it is, as a table.

Reads the configured checkpoint store (the SQLite file, or the DynamoDB lease table of a
fleet) and the streams themselves; it writes nothing and takes no lease. Iterator age is
measured the way Lambda reports IteratorAge: the age of the first record after the
checkpoint (Kinesis: MillisBehindLatest), 0 when the shard is read to its tip.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from esm.aws import AwsClients
from esm.config import Config, MappingConfig
from esm.errors import EsmError
from esm.sources.streams import Position, ShardInfo, StreamSource, open_source
from esm.state.base import Checkpoint


@dataclass(frozen=True)
class ShardStatus:
    mapping: str
    shard_id: str
    state: str
    """`open`, `closed` (resharded, still to be read to its end) or `ended` (done)."""
    owner: str
    checkpoint: str
    iterator_age: str


HEADERS = ("MAPPING", "SHARD", "STATE", "OWNER", "CHECKPOINT", "ITERATOR AGE")


def render(rows: Sequence[ShardStatus]) -> str:
    """A plain text table, columns padded to their widest cell."""
    cells = [HEADERS] + [
        (r.mapping, r.shard_id, r.state, r.owner, r.checkpoint, r.iterator_age) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADERS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


OwnersReader = Callable[[str], Awaitable[dict[str, str]]]
CheckpointsReader = Callable[[str], Awaitable[dict[str, Checkpoint]]]


async def collect(config: Config) -> list[ShardStatus]:
    rows: list[ShardStatus] = []
    async with AwsClients(config.daemon) as aws:
        owners_of, checkpoints_of, close = await _reader(config, aws)
        try:
            for mapping in config.mappings:
                if mapping.source.kind == "sqs":
                    continue
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
        finally:
            await close()
    return rows


async def _reader(
    config: Config, aws: AwsClients
) -> tuple[OwnersReader, CheckpointsReader, Callable[[], Awaitable[None]]]:
    """(owners by shard, checkpoints by shard, close) for the configured backend."""
    state = config.state
    if state.backend == "dynamodb":
        from esm.state.dynamodb import LeaseTable

        assert state.table is not None
        table = LeaseTable(aws, state.table)
        await table.ensure(create=False)

        async def lease_owners(mapping: str) -> dict[str, str]:
            return {x.shard_id: x.owner or "(none)" for x in await table.scan(mapping)}

        async def lease_checkpoints(mapping: str) -> dict[str, Checkpoint]:
            return {x.shard_id: x.as_checkpoint() for x in await table.scan(mapping)}

        return lease_owners, lease_checkpoints, _nothing

    async def no_owners(mapping: str) -> dict[str, str]:
        return {}

    if not state.path.exists():

        async def none(mapping: str) -> dict[str, Checkpoint]:
            return {}

        return no_owners, none, _nothing
    from esm.state.sqlite import SqliteCheckpointStore

    store = await SqliteCheckpointStore.open(state.path)

    async def stored(mapping: str) -> dict[str, Checkpoint]:
        return await store.all(mapping)

    return no_owners, stored, store.close


async def _nothing() -> None:
    return None


async def _shard_status(
    mapping: MappingConfig,
    source: StreamSource,
    shard: ShardInfo,
    checkpoint: Checkpoint | None,
    owners: dict[str, str],
) -> ShardStatus:
    ended = checkpoint is not None and checkpoint.shard_ended
    state = "ended" if ended else "closed" if shard.closed else "open"
    seq = checkpoint.sequence_number if checkpoint else None
    shown = "SHARD_END" if ended else seq or "(none)"
    age = "-"
    if not ended:
        age = await _iterator_age(mapping, source, shard, seq)
    owner = owners.get(shard.shard_id, "-" if not owners else "(no lease)")
    return ShardStatus(mapping.name, shard.shard_id, state, owner, shown, age)


async def _iterator_age(
    mapping: MappingConfig, source: StreamSource, shard: ShardInfo, seq: str | None
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
        seconds = max(0.0, time.time() - result.records[0].arrival)
    elif result.millis_behind is not None:
        seconds = result.millis_behind / 1000
    else:
        seconds = 0.0
    return f"{seconds:.0f}s"


def print_status(config: Config) -> int:
    """Print the table; 1 with a one-line reason when the store or a stream cannot be read."""
    try:
        rows = anyio.run(collect, config)
    except EsmError as exc:
        print(f"esm: {exc}")
        return 1
    if not rows:
        print("no stream mappings")
        return 0
    print(render(rows))
    return 0
