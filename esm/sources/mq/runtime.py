"""A broker-queue mapping at run time: consume, batch, filter, invoke, then acknowledge.

Shared by both engines; what differs (the client, the event envelope, what "give the
messages back" means) sits behind `BrokerSession` in rabbitmq.py and activemq.py.

Lambda's rules (guide "Using Lambda with Amazon MQ", "services-mq-errors"):

- A batch is invoked at `batch_size` messages, when `maximum_batching_window_in_seconds`
  has passed since its first message, or before the payload would pass 6 MB. A single
  message over 6 MB is dropped (acknowledged, counted, logged), as Lambda drops it.
- Messages are acknowledged only after the function succeeded for the batch, or when they
  were filtered out. On a function error (or a throttle that outlasted its budget) they go
  back to the broker, which redelivers them with `redelivered = true` and applies its own
  dead-letter handling. A crash acknowledges nothing: the broker redelivers every unacked
  message when the connection drops (at-least-once).
- At most `concurrency` batches in flight: 1 for RabbitMQ (so a queue's order holds), 5 for
  ActiveMQ; `maximum_concurrency` raises it (esm-only, beyond AWS).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import orjson
from anyio.abc import TaskGroup

from esm.aws import AwsClients
from esm.batching import MAX_PAYLOAD_BYTES, BatchBudget
from esm.errors import EsmError
from esm.filtering import FilterSet
from esm.invokers import Function
from esm.observability import MappingMetrics, get_logger
from esm.sources.base import MappingRuntime, RuntimeResources
from esm.sources.mq.config import MqMappingConfig, mq_filter_view
from esm.sources.mq.metrics import mq_metrics
from esm.sources.mq.resolve import Broker, resolve_broker

log = get_logger("esm.mq")

RECONNECT_BACKOFF = (1.0, 30.0)
ENVELOPE_ALLOWANCE = 2048
"""Bytes kept free for the event's envelope (source, ARN, queue key), which is larger than
the `{"Records": []}` BatchBudget counts."""
DEPTH_INTERVAL = 5.0
STATS_TIMEOUT = 5.0
"""A queue-statistics request (RabbitMQ's passive Queue.Declare) unanswered this long means
the broker cannot be reached: the session ends and the mapping turns not ready. AMQP's own
heartbeat would notice only after ~3 minutes (aiormq allows three missed 60 s beats)."""
CLOSE_TIMEOUT = 5.0
"""Longest wait for a session to close (a connection into a black hole never answers)."""


class SessionLost(EsmError):
    """The broker connection dropped; unacknowledged messages return to the queue."""


@dataclass(slots=True)
class Delivery:
    """A message received and not yet settled: its Lambda record, the record's JSON size,
    the client's handle to acknowledge it, how often it failed in the function so far (esm
    redelivers it itself, `LocalRedelivery`), and the broker's ID of the message (the key
    that carries that count across a reconnect; None where the engine needs none)."""

    record: dict[str, Any]
    size: int
    handle: Any
    local_redeliveries: int = 0
    message_id: str | None = None


@dataclass(frozen=True)
class QueueStats:
    messages_ready: int
    consumers: int


@dataclass(frozen=True)
class MappingStatus:
    """What `esm status` shows for a broker-queue mapping."""

    name: str
    engine: str | None
    queue: str
    ready: bool
    unacknowledged: int
    """Messages this worker holds: received, not yet acknowledged or given back."""
    messages_ready: int | None
    consumers: int | None
    last_error: str | None


@dataclass(frozen=True)
class LocalRedelivery:
    """A JMS client's RedeliveryPolicy, applied by esm: ActiveMQ over STOMP has no
    broker-side redelivery for a consumer that stays connected, so esm redelivers a failed
    batch itself after `delay` seconds, at most `maximum_redeliveries` times, then sends
    the message to the broker's DLQ. AWS uses ActiveMQ's defaults with maximumRedeliveries
    6 (services-mq-errors); the default redeliveryDelay is 1 s, without back-off."""

    maximum_redeliveries: int = 6
    delay: float = 1.0


class FailureLedger:
    """How often each message failed in the function, by the broker's message ID, from
    its first failure until it is acknowledged.

    A JMS client's redelivery count survives a dropped connection (ActiveMQ keeps the
    message's redeliveryCounter), so AWS's maximumRedeliveries 6 bounds the invocations of a
    message whatever the network does. Over STOMP the broker only says `redelivered`, so
    esm remembers the count: the copy the broker redelivers after a reconnect goes on from
    it instead of from zero. An ID is forgotten when its message is acknowledged; a
    dead-lettered one stays (its NACK may have been lost). Bounded: past `capacity` IDs the
    least recently failed is forgotten (that message's count starts again)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._failures: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def failures(self, message_id: str | None) -> int:
        if message_id is None:
            return 0
        return self._failures.get(message_id, 0)

    def failed(self, message_id: str | None, failures: int) -> None:
        if message_id is None:
            return
        self._failures[message_id] = failures
        self._failures.move_to_end(message_id)
        while len(self._failures) > self.capacity:
            self._failures.popitem(last=False)

    def forget(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if delivery.message_id is not None:
                self._failures.pop(delivery.message_id, None)


class BrokerSession(Protocol):
    """One connection to the broker consuming the mapping's queue."""

    local_redelivery: LocalRedelivery | None
    """None: the broker redelivers what `requeue` hands back (RabbitMQ)."""

    async def start(self, deliver: Callable[[Delivery], None]) -> None: ...

    async def wait_closed(self) -> None:
        """Return when the connection is lost."""

    def current(self, delivery: Delivery) -> bool:
        """False once the connection the delivery came on has dropped (a client that
        reconnects by itself): its handle can no longer settle it, and the broker
        redelivers the message on the new connection."""

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def requeue(self, deliveries: Sequence[Delivery]) -> None: ...

    async def dead_letter(self, deliveries: Sequence[Delivery]) -> None: ...

    async def stats(self) -> QueueStats | None:
        """What the broker reports about the queue, where it can (None: it cannot)."""

    def event(self, records: list[dict[str, Any]]) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


SessionFactory = Callable[[MqMappingConfig, Broker, int], BrokerSession]
"""(config, broker, prefetch) -> an unstarted session."""


@dataclass
class _Buffer:
    """Deliveries received and not yet in a batch, oldest first."""

    items: deque[Delivery] = field(default_factory=deque)
    _event: anyio.Event = field(default_factory=anyio.Event)

    def push(self, delivery: Delivery) -> None:
        self.items.append(delivery)
        self._event.set()

    def push_front(self, deliveries: Sequence[Delivery]) -> None:
        self.items.extendleft(reversed(deliveries))
        self._event.set()

    async def wait(self) -> None:
        while not self.items:
            self._event = anyio.Event()
            await self._event.wait()

    def take_all(self) -> list[Delivery]:
        items = list(self.items)
        self.items.clear()
        return items


def open_session(config: MqMappingConfig, broker: Broker, prefetch: int) -> BrokerSession:
    """The engine's session (the clients are imported only for the engine in use)."""
    if broker.engine == "rabbitmq":
        from esm.sources.mq.rabbitmq import RabbitMqSession

        session: BrokerSession = RabbitMqSession(config, broker, prefetch)
        return session
    from esm.sources.mq.activemq import ActiveMqSession

    session = ActiveMqSession(config, broker, prefetch)
    return session


async def build_runtime(
    config: MqMappingConfig,
    function: Function,
    filters: FilterSet | None,
    resources: RuntimeResources,
) -> MappingRuntime:
    """The registry's runtime for a broker-queue mapping (esm/sources/registry.py)."""
    metrics = MappingMetrics(resources.metrics, config.name)
    return MqMapping(config, function, resources.aws, metrics, filters)


class MqMapping(MappingRuntime):
    """One [[mappings]] entry whose source is a RabbitMQ or ActiveMQ queue."""

    ready: bool = False

    def __init__(
        self,
        config: MqMappingConfig,
        function: Function,
        aws: AwsClients | None,
        metrics: MappingMetrics,
        filters: FilterSet | None,
        session_factory: SessionFactory = open_session,
    ) -> None:
        """`aws` may be None (tests, tools) when nothing calls AWS: a self-managed broker
        whose login is not a secret ARN. `filters` are the mapping's compiled FilterCriteria
        (None: every message passes)."""
        self.config = config
        self.name = config.name
        self.function = function
        self.aws = aws
        self.ready = False
        self.last_error: str | None = None
        """Why the last session ended (AWS's StateTransitionReason, for `esm status`)."""
        self.queue_stats: QueueStats | None = None
        self._engine: str | None = config.engine
        self._held = 0
        """Deliveries taken out of the buffer into batches and not yet settled."""
        self._passes = filters.predicate(mq_filter_view) if filters is not None else None
        self._session_factory = session_factory
        self._buffer = _Buffer()
        self._ledger = FailureLedger()
        self._poll_scope = anyio.CancelScope()
        self._consume_scope: anyio.CancelScope | None = None
        self._consumed = False
        self._concurrency = 1
        self._log = log.bind(mapping=self.name)
        m = self.name
        extra = mq_metrics(metrics.metrics.registry)
        self._m_polled = metrics.polled
        self._m_filtered = metrics.filtered_out
        self._m_invoked = metrics.invoked
        self._m_failed = metrics.failed_invoke
        self._m_batch = metrics.batch_size
        self._m_in_flight = metrics.in_flight
        self._m_pollers = metrics.pollers
        self._m_ready = metrics.ready
        self._m_acked = extra.acknowledged.labels(m)
        self._m_requeued = extra.requeued.labels(m)
        self._m_dead = extra.dead_lettered.labels(m)
        self._m_oversize = extra.oversize_dropped.labels(m)
        self._m_depth = extra.queue_depth.labels(m)
        self._m_ready.set(0)

    def stop(self) -> None:
        """Stop consuming; batches in flight run to their end (the caller waits for `run`)."""
        self._poll_scope.cancel()
        if self._consume_scope is not None:
            self._consume_scope.cancel()

    async def run(self) -> None:
        """Consume until stopped, reconnecting with back-off while the broker is away."""
        backoff = RECONNECT_BACKOFF[0]
        with self._poll_scope:
            while True:
                self._consumed = False
                try:
                    await self._session_lifetime()
                except Exception as exc:
                    if self._consumed:  # the broker was there: a new outage starts from 1 s
                        backoff = RECONNECT_BACKOFF[0]
                    self._set_ready(False)
                    self.last_error = describe_error(exc)
                    self._log.error("mq.session_failed", error=self.last_error, retry_in=backoff)
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_BACKOFF[1])
        self._set_ready(False)
        self._log.info("mapping.stopped")

    async def _session_lifetime(self) -> None:
        broker = await resolve_broker(self.config, self.aws)
        self._engine = broker.engine
        self._concurrency = self.config.concurrency(broker.engine)
        # Two batches' worth per slot: the next batch is at hand when one is acknowledged.
        prefetch = min(65_535, 2 * self.config.batch_size * self._concurrency)
        session = self._session_factory(self.config, broker, prefetch)
        self._consume_scope = consume_scope = anyio.CancelScope()
        if self._poll_scope.cancel_called:
            consume_scope.cancel()
        try:
            # Shielded from stop(): batches in flight finish and are acknowledged; stop()
            # cancels only consume_scope, which stops the intake.
            with anyio.CancelScope(shield=True):
                async with anyio.create_task_group() as in_flight:
                    with consume_scope:
                        await self._consume_session(session, broker, in_flight)
        finally:
            with anyio.CancelScope(shield=True):
                await self._give_back(session, self._buffer.take_all())
                with anyio.move_on_after(CLOSE_TIMEOUT):
                    await session.aclose()
        if not self._poll_scope.cancel_called:  # the session ended by itself, not by stop()
            raise _lost(broker)

    async def _consume_session(
        self, session: BrokerSession, broker: Broker, in_flight: TaskGroup
    ) -> None:
        await session.start(self._receive)
        self._consumed = True
        self.last_error = None
        self._set_ready(True)
        self._m_pollers.set(1)
        self._log.info(
            "mapping.started",
            engine=broker.engine,
            queue=self.config.queue,
            concurrency=self._concurrency,
        )
        try:
            async with anyio.create_task_group() as watch:
                watch.start_soon(self._watch, session, broker)
                watch.start_soon(self._report_depth, session, broker)
                await self._consume(session, in_flight)
        except Exception as exc:
            self.last_error = describe_error(exc)  # before turning not ready: /readyz says why
            raise
        finally:
            if self.last_error is None and not self._poll_scope.cancel_called:
                # cancelled by the client's own task group (stompman gave up reconnecting)
                self.last_error = describe_error(_lost(broker))
            self._m_pollers.set(0)
            self._set_ready(False)

    def _receive(self, delivery: Delivery) -> None:
        """A message from the broker: one that failed before (and came back after a
        reconnect) goes on from its count."""
        delivery.local_redeliveries = self._ledger.failures(delivery.message_id)
        self._buffer.push(delivery)

    async def _watch(self, session: BrokerSession, broker: Broker) -> None:
        await session.wait_closed()
        raise _lost(broker)

    async def _report_depth(self, session: BrokerSession, broker: Broker) -> None:
        """Queue depth every DEPTH_INTERVAL; an unanswered request ends the session."""
        while True:
            try:
                with anyio.fail_after(STATS_TIMEOUT):
                    stats = await session.stats()
            except TimeoutError:
                raise SessionLost(
                    f"{', '.join(broker.urls)}: no answer within {STATS_TIMEOUT:g} s"
                ) from None
            except Exception as exc:
                self._log.debug("mq.stats_failed", error=describe_error(exc))
                stats = None
            if stats is not None:
                self.queue_stats = stats
                self._m_depth.set(stats.messages_ready)
            await anyio.sleep(DEPTH_INTERVAL)

    @property
    def not_ready_reason(self) -> str | None:
        """Why the mapping is not ready, for /readyz (None when it is)."""
        if self.ready:
            return None
        return self.last_error or f"connecting to {self._engine or 'the'} broker"

    def status(self) -> MappingStatus:
        stats = self.queue_stats
        return MappingStatus(
            name=self.name,
            engine=self._engine,
            queue=self.config.queue,
            ready=self.ready,
            unacknowledged=self._held + len(self._buffer.items),
            messages_ready=stats.messages_ready if stats else None,
            consumers=stats.consumers if stats else None,
            last_error=self.last_error,
        )

    async def _consume(self, session: BrokerSession, in_flight: TaskGroup) -> None:
        slots = anyio.Semaphore(self._concurrency)
        while True:
            await slots.acquire()
            try:
                batch = await self._gather(session)
            except BaseException:
                slots.release()
                raise
            in_flight.start_soon(self._process, session, batch, slots)

    async def _gather(self, session: BrokerSession) -> list[Delivery]:
        """The next batch: from the first message, until full, the window passes, or the
        next message would push the payload past 6 MB (it then opens the next batch)."""
        config = self.config
        buffer = self._buffer
        budget = BatchBudget(config.batch_size, MAX_PAYLOAD_BYTES - ENVELOPE_ALLOWANCE)
        batch: list[Delivery] = []
        deadline: float | None = None
        while True:
            if deadline is None:
                await buffer.wait()
                deadline = time.monotonic() + config.maximum_batching_window_in_seconds
            else:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return batch
                with anyio.move_on_after(remaining):
                    await buffer.wait()
            while buffer.items:
                head = buffer.items[0]
                if not session.current(head):
                    buffer.items.popleft()  # the broker redelivers it on the new connection
                    self._log.debug("mq.stale_delivery_skipped")
                    continue
                if head.size + ENVELOPE_ALLOWANCE > MAX_PAYLOAD_BYTES:
                    buffer.items.popleft()
                    await self._drop_oversize(session, head)
                    continue
                if self._exhausted(session, head):
                    buffer.items.popleft()
                    await self._dead_letter(session, [head])
                    continue
                if not budget.fits(head.size):
                    return batch
                budget.add(head.size)
                batch.append(buffer.items.popleft())
            if budget.full or (batch and config.maximum_batching_window_in_seconds == 0):
                return batch
            if not batch:
                deadline = None

    async def _drop_oversize(self, session: BrokerSession, delivery: Delivery) -> None:
        """services-mq-errors: records over 6 MB go unprocessed, Lambda drops them."""
        self._m_polled.inc()
        self._m_oversize.inc()
        self._log.warning("mq.message_dropped", reason="larger than 6 MB", size=delivery.size)
        await self._settle(session.ack, [delivery], self._m_acked)

    async def _process(
        self, session: BrokerSession, batch: list[Delivery], slots: anyio.Semaphore
    ) -> None:
        self._m_in_flight.inc()
        self._held += len(batch)
        try:
            self._m_polled.inc(len(batch))
            passed, filtered = self._filter(batch)
            self._m_filtered.inc(len(filtered))
            if filtered:
                await self._settle(session.ack, filtered, self._m_acked)
            if passed:
                if await self._invoke(session, passed):
                    await self._settle(session.ack, passed, self._m_acked)
                    self._ledger.forget(passed)
                else:
                    await self._failed(session, passed)
        except Exception:
            self._log.exception("mq.batch_crashed", size=len(batch))
        finally:
            self._m_in_flight.dec()
            self._held -= len(batch)
            slots.release()

    def _filter(self, batch: list[Delivery]) -> tuple[list[Delivery], list[Delivery]]:
        passes = self._passes
        if passes is None:
            return batch, []
        passed: list[Delivery] = []
        filtered: list[Delivery] = []
        for delivery in batch:
            (passed if passes(delivery.record) else filtered).append(delivery)
        return passed, filtered

    async def _invoke(self, session: BrokerSession, batch: list[Delivery]) -> bool:
        """Invoke once; True when the whole batch succeeded (Amazon MQ mappings have no
        partial batch response: FunctionResponseTypes does not apply to them)."""
        self._m_batch.observe(len(batch))
        self._m_invoked.inc(len(batch))
        result = await self.function.invoke(session.event([d.record for d in batch]))
        if result.ok:
            self._log.info(
                "batch.succeeded",
                size=len(batch),
                duration_s=round(result.duration_s, 4),
                request_id=result.request_id,
            )
            return True
        self._m_failed.inc(len(batch))
        self._log.warning(
            "batch.failed",
            size=len(batch),
            reason="throttled" if result.throttled else "function error",
            error_type=result.failure.error_type if result.failure else None,
            request_id=result.request_id,
        )
        if result.failure is not None:
            self._log.debug("batch.error", error_message=result.failure.error_message)
        return False

    async def _failed(self, session: BrokerSession, batch: list[Delivery]) -> None:
        policy = session.local_redelivery
        if policy is None:
            # With one batch in flight the prefetched messages go back too, so the broker
            # redelivers the queue in its order rather than the failed batch last.
            back = batch + (self._buffer.take_all() if self._concurrency == 1 else [])
            await self._settle(session.requeue, back, self._m_requeued)
            return
        for delivery in batch:
            delivery.local_redeliveries += 1
            self._ledger.failed(delivery.message_id, delivery.local_redeliveries)
        retry = [d for d in batch if not self._exhausted(session, d)]
        exhausted = [d for d in batch if self._exhausted(session, d)]
        if exhausted:
            await self._dead_letter(session, exhausted)
        if retry:
            self._m_requeued.inc(len(retry))
            await anyio.sleep(policy.delay)
            # A copy from a connection that dropped meanwhile is not retried: the broker
            # redelivers the message on the new one, where its count goes on (FailureLedger).
            retry = [d for d in retry if session.current(d)]
            for delivery in retry:
                # A new record: the function may still hold the one it was given.
                delivery.record = {**delivery.record, "redelivered": True}
            self._buffer.push_front(retry)

    @staticmethod
    def _exhausted(session: BrokerSession, delivery: Delivery) -> bool:
        """AWS's maximumRedeliveries: a message that failed 1 + 6 times goes to the DLQ."""
        policy = session.local_redelivery
        return policy is not None and delivery.local_redeliveries > policy.maximum_redeliveries

    async def _dead_letter(self, session: BrokerSession, deliveries: list[Delivery]) -> None:
        """NACK into the broker's DLQ. The ledger keeps their counts: a NACK lost with its
        connection brings the message back, and it goes to the DLQ again uninvoked."""
        self._log.warning("mq.dead_lettered", count=len(deliveries))
        await self._settle(session.dead_letter, deliveries, self._m_dead)

    async def _settle(
        self,
        action: Callable[[Sequence[Delivery]], Any],
        deliveries: Sequence[Delivery],
        counter: Any,
    ) -> None:
        """Ack, requeue or dead-letter; a failure leaves the messages unacknowledged, so the
        broker redelivers them when the connection drops (never lost)."""
        try:
            await action(deliveries)
        except Exception as exc:
            self._log.warning("mq.settle_failed", count=len(deliveries), error=str(exc))
            return
        counter.inc(len(deliveries))

    async def _give_back(self, session: BrokerSession, deliveries: list[Delivery]) -> None:
        """Shutdown: received-but-never-invoked messages return to the broker at once."""
        if deliveries:
            with anyio.move_on_after(5):
                await self._settle(session.requeue, deliveries, self._m_requeued)

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._m_ready.set(1 if ready else 0)


def _lost(broker: Broker) -> SessionLost:
    return SessionLost(f"connection to {', '.join(broker.urls)} lost")


def describe_error(exc: BaseException) -> str:
    """An error in one line; exception groups (a client's task group) by their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe_error(e) for e in exc.exceptions)
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def record_size(record: dict[str, Any]) -> int:
    """A record's bytes in the invocation payload (what the 6 MB cap counts)."""
    return len(orjson.dumps(record))
