"""ActiveMQ over STOMP 1.2 (stompman): the broker session of an ActiveMQ mapping.

Why STOMP: Debian's ActiveMQ serves OpenWire, STOMP and MQTT (no AMQP 1.0). OpenWire has no
maintained Python client; MQTT drops the JMS fields Lambda's event carries; STOMP carries
them as frame headers (message-id, persistent, correlation-id, reply-to, type, expires,
priority, timestamp, redelivered, and every JMS property), and stompman is a maintained,
typed asyncio client with per-message ACK/NACK.

Redelivery (services-mq-errors): Lambda reads ActiveMQ with a JMS client whose
RedeliveryPolicy has ActiveMQ's defaults and maximumRedeliveries 6; the client redelivers a
failed batch itself and then hands the message to the broker's DLQ. esm does the same
(`LocalRedelivery`): a failed batch is invoked again after the redelivery delay with
`redelivered = true`, and after the sixth redelivery it is NACKed, which ActiveMQ treats as
a poison acknowledgement: the message moves to the dead-letter queue (ActiveMQ.DLQ unless
the broker's policy names another; ActiveMQ sends only persistent messages there by
default). Messages never acknowledged return to the queue when the connection closes.

A dropped connection (the broker's EOF, a reset): stompman reconnects and resubscribes by
itself, and the broker redelivers every unacknowledged message on the new connection
(`redelivered:true`, no count: ActiveMQ's STOMP frames carry no redelivery counter). The
frames of the old connection can no longer be acknowledged (stompman skips those), so they
are `current()` no more; the runtime drops them and takes up the broker's copy, whose
failures so far it remembers by message ID (`FailureLedger`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import anyio
import stompman

from esm.errors import SourceUnavailable
from esm.sources.mq.config import MqMappingConfig
from esm.sources.mq.events import activemq_event, activemq_message
from esm.sources.mq.resolve import Broker
from esm.sources.mq.runtime import (
    Delivery,
    LocalRedelivery,
    QueueStats,
    SessionLost,
    record_size,
)

CONNECTION_LOST_AFTER = 10.0
"""Seconds without a live connection (stompman reconnects by itself) before the session
counts as lost and the mapping turns not ready."""


class ActiveMqSession:
    local_redelivery: LocalRedelivery | None = LocalRedelivery()

    def __init__(self, config: MqMappingConfig, broker: Broker, prefetch: int) -> None:
        self.config = config
        self.broker = broker
        self.prefetch = prefetch
        self._arn = config.event_source_arn
        self._client: stompman.Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._entered = asyncio.Event()
        self._release = asyncio.Event()
        self._subscription: stompman.ManualAckSubscription | None = None

    def _servers(self) -> list[stompman.ConnectionParameters]:
        login = self.broker.login
        servers = []
        for url in self.broker.urls:
            parts = urlsplit(url)
            servers.append(
                stompman.ConnectionParameters(
                    host=parts.hostname or "localhost",
                    port=parts.port or (61614 if parts.scheme == "stomp+ssl" else 61613),
                    login=login.username if login else "",
                    passcode=login.password if login else "",
                )
            )
        return servers

    async def start(self, deliver: Callable[[Delivery], None]) -> None:
        secure = any(urlsplit(u).scheme == "stomp+ssl" for u in self.broker.urls)
        client = stompman.Client(
            self._servers(),
            ssl=True if secure else None,
            max_concurrent_handlers=None,
            connect_retry_attempts=2,
            no_message_restart_interval=None,
            on_error_frame=lambda frame: None,
        )
        holder = self._holder = asyncio.create_task(self._hold(client))
        entered = asyncio.create_task(self._entered.wait())
        await asyncio.wait({holder, entered}, return_when=asyncio.FIRST_COMPLETED)
        entered.cancel()
        if not self._entered.is_set():
            exc = None if holder.cancelled() else holder.exception()
            if isinstance(exc, stompman.FailedAllConnectAttemptsError):
                raise SourceUnavailable(
                    f"no ActiveMQ broker reachable, or the login was refused: {exc}"
                ) from None
            raise SourceUnavailable(f"ActiveMQ client failed: {exc!r}") from None
        self._client = client

        async def on_message(frame: stompman.AckableMessageFrame) -> None:
            headers: dict[str, str] = dict(frame.headers)  # type: ignore[arg-type]
            record = activemq_message(headers, frame.body, int(time.time() * 1000))
            message_id = headers.get("message-id")
            deliver(Delivery(record, record_size(record), frame, message_id=message_id))

        self._subscription = await client.subscribe_with_manual_ack(
            f"/queue/{self.config.queue}",
            on_message,
            ack="client-individual",
            headers={"activemq.prefetchSize": str(self.prefetch)},
        )

    async def _hold(self, client: stompman.Client) -> None:
        """Keep the client open in a task of its own until `aclose`. stompman's TaskGroup
        cancels the task that entered it when its reconnects fail; that must not be the
        mapping's task (it would end the mapping for good instead of one session)."""
        async with client:
            self._entered.set()
            await self._release.wait()

    async def wait_closed(self) -> None:
        client, holder = self._client, self._holder
        assert client is not None and holder is not None
        down_since: float | None = None
        while True:
            await anyio.sleep(1)
            if holder.done():  # the client gave up reconnecting
                return
            if client.is_alive():
                down_since = None
            elif down_since is None:
                down_since = time.monotonic()
            elif time.monotonic() - down_since > CONNECTION_LOST_AFTER:
                return

    def current(self, delivery: Delivery) -> bool:
        """False for a frame of a connection stompman has replaced since (stompman numbers
        its connections; it would skip that frame's ACK or NACK, logging why)."""
        client = self._client
        if client is None:
            return True
        received = getattr(delivery.handle, "_received_at_reconnection_count", None)
        now = getattr(getattr(client, "_connection_manager", None), "_reconnection_count", None)
        return received is None or now is None or bool(received == now)

    def _sendable(self, deliveries: Sequence[Delivery], what: str) -> None:
        """Raise for frames of a dropped connection: stompman would skip them silently and
        the runtime would count them settled. The broker redelivers them."""
        stale = sum(1 for d in deliveries if not self.current(d))
        if stale:
            raise SessionLost(
                f"{stale} of {len(deliveries)} {what} not sent: the connection the messages"
                " came on dropped, the broker redelivers them"
            )

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._sendable(deliveries, "ACKs")
        for delivery in deliveries:
            await delivery.handle.ack()

    async def requeue(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to send: STOMP's NACK would dead-letter them; unacknowledged messages
        return to the queue when the subscription closes (at shutdown, which is the only
        caller: failed batches go through LocalRedelivery)."""

    async def dead_letter(self, deliveries: Sequence[Delivery]) -> None:
        self._sendable(deliveries, "NACKs")
        for delivery in deliveries:
            await delivery.handle.nack()

    async def stats(self) -> QueueStats | None:
        """STOMP has no queue statistics query; ActiveMQ reports them over JMX only."""
        return None

    def event(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return activemq_event(self._arn, records)

    async def aclose(self) -> None:
        """Unsubscribe (stompman's client waits for it), so the broker returns every
        unacknowledged message to the queue, then disconnect."""
        with contextlib.suppress(Exception):
            if self._subscription is not None:
                with anyio.move_on_after(5):
                    await self._subscription.unsubscribe()
                self._subscription = None
        self._release.set()
        holder = self._holder
        if holder is not None:
            with anyio.move_on_after(5):
                await asyncio.wait({holder})
            if not holder.done():
                holder.cancel()
            elif not holder.cancelled():
                holder.exception()  # retrieved: the session's end was logged by the runtime
