"""The SQS family: standard and FIFO queues, read by competing receivers.

`config` (the mapping's keys, parsed once; imported by the registry) and `runtime`
(receivers, scaling, delete rules, FIFO groups; imported only when a mapping runs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esm.sources.sqs.config import SqsMappingConfig, parse_sqs_mapping

if TYPE_CHECKING:
    from esm.sources.sqs.runtime import SqsMapping

__all__ = ["SqsMapping", "SqsMappingConfig", "parse_sqs_mapping"]


def __getattr__(name: str) -> Any:
    """The runtime on first use only, so reading a config never imports a poller."""
    if name == "SqsMapping":
        from esm.sources.sqs.runtime import SqsMapping

        return SqsMapping
    raise AttributeError(name)
