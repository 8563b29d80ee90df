"""`esm status -c CONFIG`: the shards of every stream mapping, who reads them, how far each
got and how far behind it is, as a table. What a mapping shows is its family's
(`SourceFamily.status` in esm/sources/registry.py); this module reads the checkpoint store
and renders the rows.

Reads the configured checkpoint store (the SQLite file, or the DynamoDB lease table of a
fleet) and the streams themselves; it writes nothing and takes no lease. Iterator age is
measured the way Lambda reports IteratorAge: the age of the first record after the
checkpoint (Kinesis: MillisBehindLatest), 0 when the shard is read to its tip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from esm.aws import AwsClients
from esm.config import Config
from esm.errors import EsmError
from esm.sources import registry
from esm.sources.base import CheckpointsReader, OwnersReader, StatusCollector, StatusRow
from esm.state.base import Checkpoint

ShardStatus = StatusRow


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


async def collect(config: Config) -> list[ShardStatus]:
    rows: list[ShardStatus] = []
    async with AwsClients(config.daemon) as aws:
        owners_of, checkpoints_of, close = await _reader(config, aws)
        try:
            for mapping in config.mappings:
                shown = registry.family_of(mapping).status
                if shown is None:
                    continue  # the family has nothing to show (SQS: the queue keeps no position)
                collector: StatusCollector = registry.load(shown)
                rows.extend(await collector(mapping, aws, owners_of, checkpoints_of))
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
