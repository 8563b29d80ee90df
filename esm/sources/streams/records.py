"""What a stream source hands a stream mapping: records, shards, positions, and the protocol
the Kinesis and DynamoDB Streams adapters implement.

Nothing here does I/O or knows a service: `kinesis.py` and `dynamodb.py` turn their API's
answers into these types, and every later stage (poller, lane, policy) reads only these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, compress, pairwise
from typing import Any, Literal, Protocol

import orjson

MAX_RECORDS_PER_READ = 10_000
"""Kinesis GetRecords returns at most 10,000 records per call."""


@dataclass(slots=True)
class StreamRecord:
    event: dict[str, Any]
    """The record exactly as the function receives it."""
    sequence_number: str
    key: str
    """Partition key (Kinesis) or item key hash (DynamoDB): records of one key keep order."""
    arrival: float
    """Epoch seconds the record reached the stream (maximum_record_age, tumbling windows)."""
    size: int
    """Bytes of the record in the event: batches stay under Lambda's 6 MB payload."""
    index: int = 0
    """Position in the shard's read order (`ShardProgress`), set when the poller accepts it."""

    @property
    def item_id(self) -> str:
        """The identifier a partial batch response names (`itemIdentifier`)."""
        return self.sequence_number


@dataclass(frozen=True, slots=True)
class RecordFields:
    """How a family reads a record's partition key and arrival time from its event (the
    event holds both), so a run of records needs no per-record object to carry them."""

    key: Callable[[dict[str, Any]], str]
    arrival: Callable[[dict[str, Any]], float]


Indices = range | list[int]
"""Positions of a run's records in the shard's read order (`ShardProgress`): a range while
the run is contiguous (no filtered-out record, one lane), the usual case."""


@dataclass(slots=True)
class RecordRun:
    """Records of one shard in read order as parallel lists, one entry per record and no
    object per record: the hot path (read, filter, buffer, batch cut, invoke, checkpoint)
    moves whole lists. A failed batch becomes `StreamRecord`s (`records`) for the policy.

    Sizes feed Lambda's 6 MB invocation cap. A run may leave them unmeasured (`sizes`
    None) with `size_bound`, which no slice of the run exceeds: a batch whose bounds fit
    under the cap is cut without measuring a record."""

    events: list[dict[str, Any]]
    """The records exactly as the function receives them."""
    sequence_numbers: list[str]
    sizes: list[int] | None
    """Bytes of each record in the event, when measured."""
    size_bound: int
    """No slice of this run serialises to more bytes than this (its records' JSON, without
    the commas between them)."""
    fields: RecordFields
    measure: Callable[[list[dict[str, Any]]], list[int]] | None = None
    """Measures these events' sizes (None for a batch joined from several reads)."""
    indices: Indices = range(0)
    """Set by the poller when it registers the run (`ShardProgress.register`)."""

    def __len__(self) -> int:
        return len(self.events)

    def measured_sizes(self) -> list[int]:
        """Each record's size, measured once on first need (a batch near 6 MB)."""
        sizes = self.sizes
        if sizes is None:
            assert self.measure is not None
            sizes = self.sizes = self.measure(self.events)
            self.size_bound = sum(sizes)
        return sizes

    def bound(self, start: int, stop: int) -> int:
        """Bytes the records [start, stop) take at most."""
        sizes = self.sizes
        return self.size_bound if sizes is None else sum(sizes[start:stop])

    def slice(self, start: int, stop: int) -> RecordRun:
        if start == 0 and stop >= len(self.events):
            return self
        sizes = self.sizes
        return RecordRun(
            self.events[start:stop],
            self.sequence_numbers[start:stop],
            None if sizes is None else sizes[start:stop],
            self.size_bound if sizes is None else sum(sizes[start:stop]),
            self.fields,
            self.measure,
            self.indices[start:stop],
        )

    def keep(self, verdicts: Sequence[bool]) -> RecordRun:
        """The records whose verdict is true (a filter), in order."""
        sizes = self.sizes
        return RecordRun(
            list(compress(self.events, verdicts)),
            list(compress(self.sequence_numbers, verdicts)),
            None if sizes is None else list(compress(sizes, verdicts)),
            self.size_bound,
            self.fields,
            self.measure,
            list(compress(self.indices, verdicts)),
        )

    def records(self) -> list[StreamRecord]:
        """The run as `StreamRecord`s (a failed batch, a tumbling window's lane)."""
        sizes = self.sizes
        if sizes is None:
            if self.measure is not None:
                sizes = self.measured_sizes()
            else:  # a batch joined from several reads: measure each record exactly
                sizes = [len(orjson.dumps(event)) for event in self.events]
        key, arrival = self.fields.key, self.fields.arrival
        return [
            StreamRecord(event, sequence_number, key(event), arrival(event), size, index)
            for event, sequence_number, size, index in zip(
                self.events, self.sequence_numbers, sizes, self.indices, strict=True
            )
        ]


def joined(runs: Sequence[RecordRun]) -> RecordRun:
    """One run of these runs' records, in order (a batch cut across reads)."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    indices: Indices
    ranges = all(type(r.indices) is range for r in runs)
    if ranges and all(a.indices[-1] + 1 == b.indices[0] for a, b in pairwise(runs)):
        indices = range(first.indices[0], runs[-1].indices[-1] + 1)
    else:
        indices = list(chain.from_iterable(r.indices for r in runs))
    known = all(r.sizes is not None for r in runs)
    return RecordRun(
        list(chain.from_iterable(r.events for r in runs)),
        list(chain.from_iterable(r.sequence_numbers for r in runs)),
        list(chain.from_iterable(r.sizes or () for r in runs)) if known else None,
        sum(r.size_bound for r in runs),
        first.fields,
        None,
        indices,
    )


@dataclass
class ReadResult:
    records: RecordRun
    next_iterator: str | None
    millis_behind: int | None


@dataclass(frozen=True)
class Position:
    kind: Literal["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "AFTER_SEQUENCE_NUMBER"]
    sequence_number: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True)
class ShardInfo:
    shard_id: str
    parent_ids: tuple[str, ...]
    closed: bool
    """The shard has an ending sequence number: after its last record it is at SHARD_END."""
    incarnation: str | None = None
    """Which stream this shard belongs to: a stream deleted and created again under the same
    name has shards with the same ids whose sequence numbers start over (Kinesis: the
    stream's creation time; DynamoDB: the stream ARN, whose label is new for a new stream).
    A checkpoint of another incarnation is not resumed from."""


class ExpiredIterator(Exception):
    """The shard iterator expired (Kinesis: 5 minutes); renew it from the last record read."""


class StreamSource(Protocol):
    """What differs between Kinesis and DynamoDB Streams."""

    @property
    def family(self) -> Literal["kinesis", "dynamodb"]: ...

    async def list_shards(self) -> list[ShardInfo]: ...

    async def iterator_at(self, shard_id: str, position: Position) -> str: ...

    async def read(self, shard_id: str, iterator: str) -> ReadResult: ...

    async def aclose(self) -> None: ...
