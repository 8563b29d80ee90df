"""Checkpoint arithmetic for one shard, as pure logic.

With a parallelization factor, batches of one shard finish out of order. The shard's
checkpoint is the highest sequence number below which every record is done (processed,
filtered out, or given up as configured), so a restart from it never skips a record.
"""

from __future__ import annotations

from collections.abc import Iterable

COMPACT_AFTER = 4096
"""Done sequence numbers are dropped from the front of the list in chunks of at least this."""


class ShardProgress:
    """Records are registered in read order and completed in any order."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        """Sequence numbers of the records from index `_base` on, in read order."""
        self._base = 0
        self._first = 0
        """The first record not done yet."""
        self._done: set[int] = set()
        """Records done out of order, all after `_first`."""
        self._checkpoint: str | None = None

    def register(self, sequence_numbers: Iterable[str]) -> int:
        """Add records in read order; returns the index given to the first of them."""
        start = self._base + len(self._pending)
        self._pending.extend(sequence_numbers)
        return start

    def complete(self, indices: Iterable[int]) -> None:
        """Mark records done (idempotent), then advance over the done prefix.

        A `range` that covers the first record not done (one lane, batches in order: the
        common case) moves the checkpoint in one step."""
        first = self._first
        done = self._done
        if type(indices) is range and indices.step == 1 and indices.start <= first < indices.stop:
            first = indices.stop
            if done:
                done.difference_update(range(self._first, first))
        else:
            for index in indices:
                if index >= first:
                    done.add(index)
        while first in done:
            done.discard(first)
            first += 1
        if first == self._first:
            return
        self._first = first
        self._checkpoint = self._pending[first - 1 - self._base]
        behind = first - self._base
        if behind >= COMPACT_AFTER and 2 * behind >= len(self._pending):
            del self._pending[:behind]
            self._base = first

    @property
    def checkpoint(self) -> str | None:
        """Sequence number of the last record of the done prefix (None if none yet)."""
        return self._checkpoint

    @property
    def outstanding(self) -> int:
        """Records registered but not yet behind the checkpoint."""
        return self._base + len(self._pending) - self._first
