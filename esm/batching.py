"""Batch limits Lambda applies before an invocation: record count, payload bytes, window.

A batch is invoked when the first limit is reached: `batch_size` records, the batching
window elapsed, or the next record would push the invocation payload past 6 MB (the
synchronous invoke limit). Pure logic; sources call it while they read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
ENVELOPE_BYTES = len(b'{"Records":[]}')


@dataclass
class BatchBudget:
    """Tracks what a batch being gathered may still take."""

    batch_size: int
    max_bytes: int = MAX_PAYLOAD_BYTES
    count: int = 0
    size: int = ENVELOPE_BYTES
    sizes: list[int] = field(default_factory=list)

    def fits(self, record_bytes: int) -> bool:
        """A record fits if the batch is not full and its bytes (plus a comma) stay under
        the cap; a lone record larger than the cap still forms a batch of one, which the
        function then rejects as Lambda would (it is never silently skipped)."""
        if self.count >= self.batch_size:
            return False
        return self.count == 0 or self.size + record_bytes + 1 <= self.max_bytes

    def add(self, record_bytes: int) -> None:
        self.count += 1
        self.size += record_bytes + (1 if self.count > 1 else 0)

    def add_all(self, count: int, joined_bytes: int) -> bool:
        """Add `count` records whose JSON joined by commas is `joined_bytes` long, if they
        all fit (as `add_fitting` would take them all); else add nothing, return False."""
        if not count or self.count + count > self.batch_size:
            return False
        total = joined_bytes + (1 if self.count else 0)  # the comma after the batch's last
        if self.size + total > self.max_bytes and not (self.count == 0 and count == 1):
            return False
        self.count += count
        self.size += total
        return True

    def add_fitting(self, sizes: Sequence[int]) -> int:
        """Add the leading records of these sizes that fit (`fits`, then `add`, in order,
        up to the first that does not); returns how many. Records that all fit, the
        usual case, are added at once."""
        count = len(sizes)
        if self.add_all(count, sum(sizes) + count - 1):
            return count
        taken = 0
        for record_bytes in sizes:
            if not self.fits(record_bytes):
                break
            self.add(record_bytes)
            taken += 1
        return taken

    @property
    def full(self) -> bool:
        return self.count >= self.batch_size


def fitting_prefix(
    sizes: Iterable[int], batch_size: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> int:
    """How many leading records of these sizes form the next batch: BatchBudget's rule in
    one pass with local counters, for the stream hot path."""
    count = 0
    total = ENVELOPE_BYTES
    for size in sizes:
        if count >= batch_size:
            break
        if count:
            total += size + 1
            if total > max_bytes:
                break
        else:
            total += size
        count += 1
    return count


def split_by_budget(
    sizes: list[int], batch_size: int, max_bytes: int = MAX_PAYLOAD_BYTES
) -> list[int]:
    """Cut points for consecutive batches of records with these sizes (ends, exclusive)."""
    cuts: list[int] = []
    budget = BatchBudget(batch_size, max_bytes)
    for index, record_bytes in enumerate(sizes):
        if not budget.fits(record_bytes):
            cuts.append(index)
            budget = BatchBudget(batch_size, max_bytes)
        budget.add(record_bytes)
    if budget.count:
        cuts.append(len(sizes))
    return cuts
