"""Checkpoint arithmetic for one shard, as pure logic.

With a parallelization factor, batches of one shard finish out of order. The shard's
checkpoint is the highest sequence number below which every record is done (processed,
filtered out, or given up as configured), so a restart from it never skips a record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable


class ShardProgress:
    """Records are registered in read order and completed in any order."""

    def __init__(self) -> None:
        self._pending: deque[str] = deque()
        self._first = 0
        self._next = 0
        self._done: set[int] = set()
        self._checkpoint: str | None = None

    def register(self, sequence_numbers: Iterable[str]) -> int:
        """Add records in read order; returns the index given to the first of them."""
        start = self._next
        before = len(self._pending)
        self._pending.extend(sequence_numbers)
        self._next += len(self._pending) - before
        return start

    def complete(self, indices: Iterable[int]) -> None:
        """Mark records done (idempotent), then advance over the done prefix."""
        first = self._first
        done = self._done
        pending = self._pending
        indices = list(indices)
        count = len(indices)
        if count and indices[0] == first and indices == list(range(first, first + count)):
            # The common case (one lane, batches in order): the very next records, done.
            for _ in range(count - 1):
                pending.popleft()
            self._checkpoint = pending.popleft()
            first += count
            indices = []
        for index in indices:
            if index >= first:
                done.add(index)
        while first in done:
            done.discard(first)
            self._checkpoint = pending.popleft()
            first += 1
        self._first = first

    @property
    def checkpoint(self) -> str | None:
        """Sequence number of the last record of the done prefix (None if none yet)."""
        return self._checkpoint

    @property
    def outstanding(self) -> int:
        """Records registered but not yet behind the checkpoint."""
        return len(self._pending)
