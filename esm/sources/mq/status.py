"""What `esm status` shows of a broker-queue mapping: one row for its queue, with the
messages ready and the consumers the broker reports (RabbitMQ: a passive Queue.Declare on a
short connection of its own). A broker queue keeps no position for esm, so there is no
checkpoint, owner or iterator age; ActiveMQ over STOMP reports no queue statistics (only
JMX does), so its row says so. Reads only: consumes nothing, acknowledges nothing."""

from __future__ import annotations

import anyio

from esm.aws import AwsClients
from esm.errors import EsmError
from esm.sources.base import CheckpointsReader, OwnersReader, StatusRow
from esm.sources.mq.config import MqMappingConfig
from esm.sources.mq.resolve import resolve_broker

STATUS_TIMEOUT = 10.0
"""Seconds `esm status` waits for one broker before it reports the queue unreachable."""


async def queue_rows(
    mapping: MqMappingConfig,
    aws: AwsClients,
    owners_of: OwnersReader,
    checkpoints_of: CheckpointsReader,
) -> list[StatusRow]:
    """The mapping's one row: `queue <name>`, then what the broker says of it."""
    shard = f"queue {mapping.queue}"
    try:
        with anyio.fail_after(STATUS_TIMEOUT):
            state, ready, consumers = await _queue_state(mapping, aws)
    except (EsmError, OSError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        return [StatusRow(mapping.name, shard, f"unreachable ({reason})", "-", "-", "-")]
    return [StatusRow(mapping.name, shard, state, consumers, ready, "-")]


async def _queue_state(mapping: MqMappingConfig, aws: AwsClients) -> tuple[str, str, str]:
    """(state, ready messages, consumers) as the OWNER and CHECKPOINT columns show them."""
    broker = await resolve_broker(mapping, aws)
    if broker.engine != "rabbitmq":
        return "open", "- (STOMP reports no queue depth)", "-"
    from esm.sources.mq.rabbitmq import queue_stats

    stats = await queue_stats(mapping, broker)
    return "open", f"{stats.messages_ready} ready", f"{stats.consumers} consumers"
