"""RabbitMQ over AMQP 0-9-1 (aiormq): the broker session of a RabbitMQ mapping.

Consumes the mapping's one queue with manual acknowledgement and a prefetch window;
acknowledges with `multiple` when a settled set is every outstanding delivery up to its
highest tag (the usual case: one call per batch). A failed batch is nacked with
`requeue = true`: RabbitMQ redelivers it with `redelivered = true`, and a quorum queue's
`x-delivery-limit` with a dead-letter exchange ends it in the DLQ (AWS: "the queue's
dead-letter policy"; Lambda supports only PLAIN authentication, which AMQP's login is).
Lambda does not declare queues; a missing queue makes the mapping not ready until it exists.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiormq
from aiormq.abc import DeliveredMessage

from esm.errors import SourceUnavailable
from esm.sources.mq.config import MqMappingConfig
from esm.sources.mq.events import rabbitmq_event, rabbitmq_message
from esm.sources.mq.resolve import Broker
from esm.sources.mq.runtime import Delivery, LocalRedelivery, QueueStats, record_size

DEFAULT_VIRTUAL_HOST = "/"


def connection_url(url: str, broker: Broker, virtual_host: str) -> str:
    """The broker URL with the BASIC_AUTH login and the virtual host (kept out of logs)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if broker.login is not None:
        user = quote(broker.login.username, safe="")
        password = quote(broker.login.password, safe="")
        netloc = f"{user}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, "/" + quote(virtual_host, safe=""), "", ""))


async def queue_stats(config: MqMappingConfig, broker: Broker) -> QueueStats:
    """Ready messages and consumers of the mapping's queue, on a connection of its own that
    consumes nothing (`esm status`)."""
    session = RabbitMqSession(config, broker, prefetch=1)
    connection = await session._connect()
    try:
        channel = await connection.channel()
        try:
            result = await channel.queue_declare(config.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise SourceUnavailable(
                f"queue {config.queue!r} does not exist in virtual host {session.virtual_host!r}"
            ) from None
        return QueueStats(int(result.message_count or 0), int(result.consumer_count or 0))
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


class RabbitMqSession:
    local_redelivery: LocalRedelivery | None = None

    def __init__(self, config: MqMappingConfig, broker: Broker, prefetch: int) -> None:
        self.config = config
        self.broker = broker
        self.prefetch = prefetch
        self.virtual_host = config.virtual_host or DEFAULT_VIRTUAL_HOST
        self._arn = config.event_source_arn
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._info: aiormq.abc.AbstractChannel | None = None
        self._outstanding: dict[int, None] = {}
        """Delivery tags received and not yet settled, in tag order."""

    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        self._connection = await self._connect()
        channel = self._channel = await self._connection.channel()
        try:
            await channel.queue_declare(self.config.queue, passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise SourceUnavailable(
                f"queue {self.config.queue!r} does not exist in virtual host {self.virtual_host!r}"
            ) from None
        await channel.basic_qos(prefetch_count=self.prefetch)
        outstanding = self._outstanding

        async def on_message(message: DeliveredMessage) -> None:
            delivery = message.delivery
            assert isinstance(delivery, aiormq.spec.Basic.Deliver)
            record = rabbitmq_message(
                message.header.properties, message.body, bool(delivery.redelivered)
            )
            tag = delivery.delivery_tag or 0
            outstanding[tag] = None
            deliver(Delivery(record, record_size(record), tag))

        await channel.basic_consume(self.config.queue, on_message, no_ack=False)

    async def _connect(self) -> aiormq.abc.AbstractConnection:
        """The first broker URL that answers (Amazon MQ lists one endpoint per instance)."""
        errors: list[str] = []
        for url in self.broker.urls:
            try:
                return await aiormq.connect(connection_url(url, self.broker, self.virtual_host))
            except aiormq.exceptions.ProbableAuthenticationError:
                raise SourceUnavailable(f"{url}: the broker refused the BASIC_AUTH login") from None
            except (OSError, aiormq.exceptions.AMQPError) as exc:
                errors.append(f"{url}: {type(exc).__name__} {exc}")
        raise SourceUnavailable("no RabbitMQ broker reachable: " + "; ".join(errors))

    async def wait_closed(self) -> None:
        assert self._connection is not None
        try:
            await self._connection.closing
        except BaseException as exc:
            if not isinstance(exc, Exception):
                raise

    def current(self, delivery: Delivery) -> bool:
        """Always: the session ends with its connection (esm opens a new one)."""
        return True

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        channel = self._require_channel()
        await self._settle(deliveries, lambda tag, many: channel.basic_ack(tag, multiple=many))

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        channel = self._require_channel()
        await self._settle(
            deliveries, lambda tag, many: channel.basic_nack(tag, multiple=many, requeue=True)
        )

    async def dead_letter(self, deliveries: Sequence[Delivery]) -> None:
        channel = self._require_channel()
        await self._settle(
            deliveries, lambda tag, many: channel.basic_nack(tag, multiple=many, requeue=False)
        )

    def _require_channel(self) -> aiormq.abc.AbstractChannel:
        if self._channel is None:
            raise SourceUnavailable("not connected")
        return self._channel

    async def _settle(
        self, deliveries: Sequence[Delivery], send: Callable[[int, bool], Awaitable[Any]]
    ) -> None:
        """One `multiple` frame when the set is every outstanding tag up to its highest,
        else one frame per delivery."""
        if not deliveries:
            return
        tags = {int(d.handle) for d in deliveries}
        highest = max(tags)
        outstanding = self._outstanding
        prefix = True
        for tag in outstanding:
            if tag > highest:
                break
            if tag not in tags:
                prefix = False
                break
        if prefix:
            await send(highest, True)
        else:
            for tag in sorted(tags):
                await send(tag, False)
        for tag in tags:
            outstanding.pop(tag, None)

    async def stats(self) -> QueueStats | None:
        """Ready messages and consumers (a passive Queue.Declare), on a channel of its own:
        a failed declare closes its channel."""
        if self._connection is None:
            return None
        if self._info is None or self._info.is_closed:
            self._info = await self._connection.channel()
        result = await self._info.queue_declare(self.config.queue, passive=True)
        if result is None:
            return None
        return QueueStats(int(result.message_count or 0), int(result.consumer_count or 0))

    def event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return rabbitmq_event(self._arn, self.config.queue, self.virtual_host, records)

    async def aclose(self) -> None:
        """Closing the connection returns every unacknowledged delivery to the queue."""
        if self._connection is not None and not self._connection.is_closed:
            with contextlib.suppress(Exception):
                await self._connection.close()
