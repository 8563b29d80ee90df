"""`MappingRuntime`: what the daemon asks of every family's runtime, with its defaults."""

from __future__ import annotations

import pytest

from esm.sources.base import MappingRuntime
from esm.sources.kafka.runtime import KafkaRuntime
from esm.sources.mq.runtime import MqMapping
from esm.sources.sqs.runtime import SqsMapping
from esm.sources.streams.mapping import StreamMapping


class _Minimal(MappingRuntime):
    """A family that says nothing beyond `ready`."""

    name = "m"
    ready = False

    async def run(self) -> None:
        return None

    def stop(self) -> None:
        return None


def test_a_runtime_that_says_no_more_than_ready_has_no_reason() -> None:
    assert _Minimal().not_ready_reason is None


@pytest.mark.parametrize("runtime", [SqsMapping, StreamMapping, MqMapping, KafkaRuntime])
def test_every_family_runtime_is_a_mapping_runtime(runtime: type[MappingRuntime]) -> None:
    """The daemon reads `not_ready_reason` off any runtime (no getattr): each family's
    runtime has it, its own (Kafka, broker queues) or the protocol's default."""
    assert MappingRuntime in runtime.__mro__  # explicit: issubclass refuses data protocols
    assert isinstance(runtime.not_ready_reason, property)
