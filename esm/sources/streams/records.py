"""What a stream source hands a stream mapping: records, shards, positions, and the protocol
the Kinesis and DynamoDB Streams adapters implement.

Nothing here does I/O or knows a service: `kinesis.py` and `dynamodb.py` turn their API's
answers into these types, and every later stage (poller, lane, policy) reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

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


@dataclass
class ReadResult:
    records: list[StreamRecord]
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
