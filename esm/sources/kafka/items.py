"""What the shared ordered-source policy (`esm.sources.streams.policy`) needs from a Kafka
batch: the mapping's rules, the identifier a partial batch response names, and where each
identified record sits in the batch. Pure; no decision is made here.

AWS facts (Lambda developer guide, with-kafka "partial batch responses" and
kafka-retry-configurations):
- An itemIdentifier is `{"partition": "<topic>-<partition>", "offset": N}`; one that is not
  such an object of the batch's partition, or names an offset not in the batch, fails the
  whole batch (the shared `esm.batch_response` rule for an identifier not in the batch).
- maximum_retry_attempts -1 with an on-failure destination means at most 10 retries
  (`policy.capped_for_destination`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from esm.sources.kafka.config import KafkaMappingConfig
from esm.sources.streams.policy import RetryRules, capped_for_destination


def retry_rules(config: KafkaMappingConfig) -> RetryRules:
    """The policy's rules for a Kafka mapping, AWS's destination cap applied."""
    rules = RetryRules(
        maximum_retry_attempts=config.maximum_retry_attempts,
        maximum_record_age_in_seconds=config.maximum_record_age_in_seconds,
        bisect_batch_on_function_error=config.bisect_batch_on_function_error,
        report_batch_item_failures="ReportBatchItemFailures" in config.function_response_types,
    )
    return capped_for_destination(rules) if config.on_failure_destination else rules


def item_identifier(partition_key: str) -> Callable[[Any], str]:
    """The `identify` of one partition's batches: an itemIdentifier object -> its offset as
    a string (the batch ids are `OffsetPositions`' keys); ValueError names what is wrong."""

    def identify(identifier: Any) -> str:
        if not isinstance(identifier, dict):
            raise ValueError("an itemIdentifier is not a {partition, offset} object")
        offset = identifier.get("offset")
        if identifier.get("partition") != partition_key:
            raise ValueError("an itemIdentifier names another partition")
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise ValueError("an itemIdentifier has no integer offset")
        return str(offset)

    return identify


class OffsetPositions(Mapping[str, int]):
    """str(offset) -> index of each record of a batch, built on first use: only a response
    that lists failures reads it, so a successful batch never pays for it."""

    def __init__(self, docs: Sequence[Mapping[str, Any]]) -> None:
        self._docs = docs
        self._index: dict[str, int] | None = None

    def _built(self) -> dict[str, int]:
        if self._index is None:
            self._index = {str(doc["offset"]): i for i, doc in enumerate(self._docs)}
        return self._index

    def __getitem__(self, key: str) -> int:
        return self._built()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._built()

    def __iter__(self) -> Iterator[str]:
        return iter(self._built())

    def __len__(self) -> int:
        return len(self._docs)
