"""Giving records up, as Lambda does once retries or record age are exhausted: the batch's
on-failure record goes to the destination (SQS, SNS, S3 with the batch), retried until it
is accepted and never skipped; without a destination the records are counted and logged as
dropped. Either way the records are then done (checkpointed)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from esm.errors import DeliveryFailed
from esm.events.on_failure import GivenUpBatch, failure_record, s3_failure_object
from esm.sources.streams.context import ShardContext
from esm.sources.streams.policy import RETRY_BACKOFF, Condition
from esm.sources.streams.records import StreamRecord

MAX_DELIVERY_BACKOFF = 30.0


class OnFailure:
    """The give-up path of one lane."""

    def __init__(
        self,
        ctx: ShardContext,
        shard_id: str,
        log: Any,
        pause: Callable[[float], Awaitable[bool]],
        owned: Callable[[], bool],
    ) -> None:
        self.ctx = ctx
        self.shard_id = shard_id
        self._log = log
        self._pause = pause
        self._owned = owned
        self._m_dropped = ctx.metrics.dropped
        self._m_delivered = ctx.metrics.on_failure_delivered
        self._m_delivery_failures = ctx.metrics.destination_delivery_failures

    async def give_up(
        self,
        batch: Sequence[StreamRecord],
        condition: Condition,
        invocations: int,
        function_error: str | None,
        request_id: str | None = None,
    ) -> bool:
        """Deliver the batch's on-failure record until it is accepted, or drop it. True once
        the records may be checkpointed; False if stopping (or a lost lease) came first."""
        ctx = self.ctx
        first, last = batch[0], batch[-1]
        fields = dict(
            condition=condition,
            size=len(batch),
            first_sequence_number=first.sequence_number,
            last_sequence_number=last.sequence_number,
        )
        if ctx.destination is None:
            self._m_dropped.inc(len(batch))
            self._log.warning("batch.dropped", **fields)
            return True
        given_up = GivenUpBatch(
            source=ctx.source.family,
            shard_id=self.shard_id,
            stream_arn=ctx.config.event_source_arn,
            function_arn=ctx.function.arn,
            start_sequence_number=first.sequence_number,
            end_sequence_number=last.sequence_number,
            first_arrival=first.arrival,
            last_arrival=last.arrival,
            batch_size=len(batch),
            condition=condition,
            approximate_invoke_count=invocations,
            function_error=function_error,
            request_id=request_id or str(uuid.uuid4()),
            mapping_uuid=ctx.mapping_uuid,
        )
        now = datetime.now(UTC)
        record = failure_record(given_up, now=now)
        s3_object = None
        if ctx.destination.arn.split(":")[2] == "s3":
            payload = ctx.envelope([r.event for r in batch])
            s3_object = s3_failure_object(given_up, payload, now=now, object_uuid=str(uuid.uuid4()))
        delay = RETRY_BACKOFF[0]
        while True:
            if not self._owned():
                return False
            try:
                await ctx.destination.deliver(record, s3_object)
            except DeliveryFailed as exc:
                self._m_delivery_failures.inc()
                self._log.error(
                    "destination.delivery_failed", error=str(exc), retry_in=delay, **fields
                )
                if not await self._pause(delay):
                    return False
                delay = min(delay * 2, MAX_DELIVERY_BACKOFF)
                continue
            self._m_delivered.inc(len(batch))
            self._log.info("destination.delivered", destination=ctx.destination.arn, **fields)
            return True
