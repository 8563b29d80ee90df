"""SQS mappings: receivers that long-poll a queue, batch, invoke, and delete what succeeded.

Lambda's rules (spec section 2): a message is deleted only after the function succeeded
for it or it was filtered out; on a function error nothing is deleted and the queue's
visibility timeout and redrive policy decide what happens next. With
ReportBatchItemFailures only the listed messages stay; on a FIFO queue a failed message
also keeps every later message of its group in the batch, so the group's order holds.

Concurrency: each receiver has at most one batch in flight. As Lambda does (see
esm.sources.sqs.scaling), a mapping starts with five receivers, adds up to 300 a minute
while receives come back full, and retires receivers whose receive comes back empty down to
five again, never above 1,250, `maximum_concurrency` or the function's reserved concurrency;
`provisioned_poller_config` keeps `minimum_pollers` and scales three times as fast up to
`maximum_pollers`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Collection, Sequence
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from anyio.abc import TaskGroup

from esm.aws import AwsClients
from esm.aws_json import JsonApi, RawJsonApi
from esm.batch_response import judge
from esm.batching import BatchBudget
from esm.errors import SourceUnavailable
from esm.events.envelope import records_envelope
from esm.events.sqs import sqs_records
from esm.filtering import FilterSet, sqs_filter_view
from esm.invokers import Function
from esm.observability import MappingMetrics, get_logger
from esm.sources.base import MappingRuntime, RuntimeResources
from esm.sources.sqs.config import SqsMappingConfig
from esm.sources.sqs.scaling import ProvisionedPollers, ScalingPlan, scaling_plan

log = get_logger("esm.sqs")

LONG_POLL_SECONDS = 20
RESOLVE_RETRY_SECONDS = 10.0
RECEIVE_ERROR_BACKOFF = (1.0, 30.0)
DELETE_ATTEMPTS = 3
_ENTRY_IDS = tuple(str(i) for i in range(10))
"""Batch entry ids, one per message of a DeleteMessageBatch call."""

Record = dict[str, Any]
"""A received message is carried as its Lambda record and nothing else (one container
less per message on the hot path): the ids judging and deleting need are its keys."""


def record_size(record: Record) -> int:
    """A record's bytes in the invocation payload (Lambda's 6 MB cap)."""
    return len(orjson.dumps(record))


def group_id(record: Record) -> str | None:
    return record["attributes"].get("MessageGroupId")  # type: ignore[no-any-return]


async def build_runtime(
    config: SqsMappingConfig,
    function: Function,
    filters: FilterSet | None,
    resources: RuntimeResources,
) -> MappingRuntime:
    """The registry's runtime for an SQS mapping (esm/sources/registry.py)."""
    metrics = MappingMetrics(resources.metrics, config.name)
    return SqsMapping(config, function, resources.aws, metrics, filters)


class SqsMapping(MappingRuntime):
    """One [[mappings]] entry whose source is an SQS queue."""

    ready: bool = False

    def __init__(
        self,
        config: SqsMappingConfig,
        function: Function,
        aws: AwsClients,
        metrics: MappingMetrics,
        filters: FilterSet | None,
        api: RawJsonApi | None = None,
        provisioned: ProvisionedPollers | None = None,
    ) -> None:
        """`api` serves the per-batch calls (receive, delete, release); by default the
        queue's endpoint through esm.aws_json. `provisioned` is the mapping's
        provisioned_poller_config (by default the config's)."""
        self.config = config
        self.name = config.name
        self.function = function
        self.aws = aws
        self.filters = filters
        self._passes = filters.predicate(sqs_filter_view) if filters is not None else None
        self.fifo = config.source.name.endswith(".fifo")
        self._queue_arn = config.event_source_arn
        self._region = config.source.region
        if provisioned is None:
            provisioned = config.provisioned_poller_config
        self.scaling: ScalingPlan = scaling_plan(
            config.maximum_concurrency, function.concurrency, provisioned
        )
        self.ready = False
        self.queue_url = ""
        self._poll_scope = anyio.CancelScope()
        self._receiving: set[anyio.CancelScope] = set()
        """The ReceiveMessage calls in flight (shielded from a stop: see `_receive`)."""
        self._api: RawJsonApi = api or JsonApi(
            aws,
            client_service="sqs",
            signing_name="sqs",
            target_prefix="AmazonSQS",
            json_version="1.0",
        )
        self._receivers = 0
        self._backlog = False
        """A receive came back full since the scaler last looked: messages are waiting."""
        self._log = log.bind(mapping=self.name)
        self._m_polled = metrics.polled
        self._m_filtered = metrics.filtered_out
        self._m_invoked = metrics.invoked
        self._m_failed = metrics.failed_invoke
        self._m_deleted = metrics.deleted
        self._m_batch = metrics.batch_size
        self._m_in_flight = metrics.in_flight
        self._m_pollers = metrics.pollers
        self._m_ready = metrics.ready
        self._m_ready.set(0)

    def stop(self) -> None:
        """Stop receiving; batches in flight run to their end (the caller waits for `run`).
        A ReceiveMessage in flight is let finish for `stop_receive_wait_seconds`, and what
        it brings is made visible again at once (`_receive`)."""
        deadline = anyio.current_time() + self.config.stop_receive_wait_seconds
        for scope in self._receiving:
            scope.deadline = min(scope.deadline, deadline)
        self._poll_scope.cancel()

    async def run(self) -> None:
        """Receive until stopped, then return once every in-flight batch is finished."""
        try:
            async with anyio.create_task_group() as in_flight:
                with self._poll_scope:
                    await self._resolve_queue()
                    async with anyio.create_task_group() as receivers:
                        self._log.info("sqs.scaling", **self.scaling.to_dict())
                        for _ in range(self.scaling.initial):
                            self._start_receiver(receivers, in_flight)
                        receivers.start_soon(self._scaler, receivers, in_flight)
        finally:
            with anyio.CancelScope(shield=True):
                await self._api.aclose()
        self._set_ready(False)
        self._log.info("mapping.stopped")

    async def _call(self, operation: str, payload: dict[str, Any]) -> Any:
        """Receive and delete, the per-batch calls, on the lean JSON path (esm.aws_json):
        aiobotocore's request and response handling cost about 1 ms of CPU per call, the
        largest cost of draining a queue (bench/). The JSON protocol's bodies have the
        shapes botocore would return, except binary attributes, which stay base64."""
        raw = await self.aws.retry.call(operation, lambda: self._api.call(operation, payload))
        return orjson.loads(raw)

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._m_ready.set(1 if ready else 0)

    async def _resolve_queue(self) -> None:
        """Find the queue URL and check Lambda's precondition on its visibility timeout;
        keep trying (not ready) while the queue is missing, without stopping other mappings."""
        source = self.config.source
        while True:
            try:
                client = await self.aws.client("sqs")
                response = await self.aws.retry.call(
                    "GetQueueUrl",
                    functools.partial(
                        client.get_queue_url,
                        QueueName=source.name,
                        QueueOwnerAWSAccountId=source.account,
                    ),
                )
                url = response["QueueUrl"]
                attributes = await self.aws.retry.call(
                    "GetQueueAttributes",
                    functools.partial(
                        client.get_queue_attributes,
                        QueueUrl=url,
                        AttributeNames=["VisibilityTimeout"],
                    ),
                )
                visibility = int(attributes["Attributes"]["VisibilityTimeout"])
                if visibility < self.function.timeout:
                    raise SourceUnavailable(
                        f"queue visibility timeout {visibility} s is less than function "
                        f"{self.function.name}'s timeout {self.function.timeout:g} s; raise the "
                        "visibility timeout (AWS recommends 6 x the function timeout)"
                    )
                self.queue_url = url
                self._set_ready(True)
                self._log.info("mapping.started", queue_url=url, fifo=self.fifo)
                return
            except Exception as exc:
                self._set_ready(False)
                self._log.error("mapping.source_unavailable", error=str(exc))
                await anyio.sleep(RESOLVE_RETRY_SECONDS)

    def _start_receiver(self, receivers: TaskGroup, in_flight: TaskGroup) -> None:
        self._receivers += 1
        self._m_pollers.set(self._receivers)
        receivers.start_soon(self._receiver, receivers, in_flight)

    async def _scaler(self, receivers: TaskGroup, in_flight: TaskGroup) -> None:
        """One more receiver per interval (300 a minute in standard mode) while messages
        are waiting: a clock of its own, so the pace does not depend on how often
        receives complete (they all wait for their batch's invocation)."""
        interval = self.scaling.scale_up_interval
        while True:
            await anyio.sleep(interval)
            if self._backlog and self._receivers < self.scaling.ceiling:
                self._start_receiver(receivers, in_flight)
            self._backlog = False

    async def _receiver(self, receivers: TaskGroup, in_flight: TaskGroup) -> None:
        carry: list[Record] = []
        deleted: anyio.Event | None = None
        backoff = RECEIVE_ERROR_BACKOFF[0]
        try:
            while True:
                try:
                    batch, full = await self._gather(carry)
                except Exception as exc:
                    self._set_ready(False)
                    self._log.error("sqs.receive_failed", error=str(exc), retry_in=backoff)
                    await anyio.sleep(backoff)
                    backoff = min(backoff * 2, RECEIVE_ERROR_BACKOFF[1])
                    continue
                backoff = RECEIVE_ERROR_BACKOFF[0]
                self._set_ready(True)
                if not batch:
                    if self._receivers > self.scaling.initial:
                        return  # scale back down towards the plan's floor
                    continue
                if full:
                    self._backlog = True
                # The next receive overlaps the last batch's delete; its invocation waits
                # for that delete, so a receiver never has more than one pending.
                if deleted is not None and not deleted.is_set():
                    try:
                        await deleted.wait()
                    except BaseException:
                        carry[:0] = batch  # never invoked: released below when stopping
                        raise
                invoked, deleted = anyio.Event(), anyio.Event()
                in_flight.start_soon(self._process, batch, invoked, deleted)
                await invoked.wait()
        finally:
            self._receivers -= 1
            self._m_pollers.set(self._receivers)
            if carry:
                with anyio.CancelScope(shield=True):
                    await self._release(carry)

    async def _gather(self, carry: list[Record]) -> tuple[list[Record], bool]:
        """Receive until the batch is full, the window has passed, or 6 MB is reached.

        Returns the batch and whether it was cut by a limit (a sign to scale up). With a
        window of 0 one receive is one batch, as in Lambda. A message that would push the
        batch past 6 MB is carried over to this receiver's next batch.
        """
        config = self.config
        budget = BatchBudget(config.batch_size)
        batch: list[Record] = []
        while carry and budget.fits(size := record_size(carry[0])):
            batch.append(carry.pop(0))
            budget.add(size)
        try:
            return await self._receive_into(batch, budget, carry)
        except BaseException:
            carry[:0] = batch  # released by the receiver if it is stopping
            raise

    async def _receive_into(
        self, batch: list[Record], budget: BatchBudget, carry: list[Record]
    ) -> tuple[list[Record], bool]:
        config = self.config
        deadline = time.monotonic() + config.maximum_batching_window_in_seconds
        while not budget.full and not carry:
            remaining = deadline - time.monotonic()
            if batch and remaining <= 0:
                break
            # Whole seconds, rounded up: rounding down made the window's last second a loop
            # of short polls (each one a billed request on AWS).
            wait = LONG_POLL_SECONDS if not batch else math.ceil(min(LONG_POLL_SECONDS, remaining))
            want = min(10, config.batch_size - budget.count)
            response = await self._receive(
                {
                    "QueueUrl": self.queue_url,
                    "MaxNumberOfMessages": want,
                    "WaitTimeSeconds": wait,
                    "MessageSystemAttributeNames": ["All"],
                    "MessageAttributeNames": ["All"],
                },
            )
            messages = response.get("Messages") or []
            if not batch and messages:
                deadline = time.monotonic() + config.maximum_batching_window_in_seconds
            records = self._records(messages)
            # What does not fit, and everything after it, waits for the next batch.
            taken = 0 if carry else add_fitting(budget, records)
            batch.extend(records[:taken])
            carry.extend(records[taken:])
            if messages and self._poll_scope.cancel_called:
                await anyio.lowlevel.checkpoint()  # stopped meanwhile: the receiver releases them
            if config.maximum_batching_window_in_seconds == 0 or (not messages and not batch):
                break
        return batch, budget.full or bool(carry)

    async def _receive(self, payload: dict[str, Any]) -> Any:
        """ReceiveMessage, shielded from a stop. A long poll the client gives up goes on at
        SQS, which hands the messages that arrive meanwhile to the abandoned request: they
        stay invisible for their visibility timeout (aws-sdk-java-v2#1395, aws-sdk-go-v2#2068
        report it of SQS). So a stop lets the receive finish for `stop_receive_wait_seconds`
        and the receiver makes what it brought visible again; a receive still unanswered
        then is given up (nothing in hand). 0, the default, gives it up at once: waiting
        out an idle queue's long poll makes every stop and reload take up to 20 s."""
        if not self.config.stop_receive_wait_seconds:
            return await self._call("ReceiveMessage", payload)
        if self._poll_scope.cancel_called:  # stopping: no new receive
            await anyio.lowlevel.checkpoint()
        with anyio.CancelScope(shield=True) as scope:
            self._receiving.add(scope)
            try:
                return await self._call("ReceiveMessage", payload)
            finally:
                self._receiving.discard(scope)
        await anyio.lowlevel.checkpoint()  # cancelled by the stop that set the deadline
        return {}

    def _records(self, messages: list[dict[str, Any]]) -> list[Record]:
        """A receive's messages as the Lambda records the function gets."""
        return sqs_records(messages, queue_arn=self._queue_arn, region=self._region)

    async def _process(
        self, batch: list[Record], invoked: anyio.Event, deleted: anyio.Event
    ) -> None:
        """Filter, invoke, and delete exactly what Lambda would delete. `invoked` is set
        once the function returned (the receiver may receive again), `deleted` at the end."""
        self._m_in_flight.inc()
        try:
            self._m_polled.inc(len(batch))
            passed, to_delete = self._filter(batch)
            if to_delete:
                self._m_filtered.inc(len(to_delete))
            if passed:
                failed_ids = await self._invoke(passed)
                if failed_ids:
                    to_delete.extend(m for m in passed if m["messageId"] not in failed_ids)
                else:
                    to_delete.extend(passed)
            invoked.set()
            await self._delete(to_delete)
        except Exception:
            self._log.exception("sqs.batch_crashed", size=len(batch))
        finally:
            self._m_in_flight.dec()
            invoked.set()
            deleted.set()

    def _filter(self, batch: list[Record]) -> tuple[list[Record], list[Record]]:
        """Split into messages that pass FilterCriteria and filtered-out ones (to delete)."""
        passes = self._passes
        if passes is None:
            return batch, []
        passed: list[Record] = []
        filtered: list[Record] = []
        for record in batch:
            (passed if passes(record) else filtered).append(record)
        return passed, filtered

    async def _invoke(self, batch: list[Record]) -> set[str]:
        """Invoke once; return the ids of messages that must stay in the queue."""
        self._m_batch.observe(len(batch))
        self._m_invoked.inc(len(batch))
        result = await self.function.invoke(records_envelope(batch))
        report = self.config.report_batch_item_failures
        # The batch's ids are needed only to check a partial batch response, or to keep
        # every message after a failure: a successful batch without the setting skips them.
        ids: Collection[str] = {m["messageId"] for m in batch} if report else ()
        verdict = judge(result, ids, report)
        failed: set[str]
        if verdict.failed_ids is None:
            failed = {m["messageId"] for m in batch}
        else:
            failed = set(verdict.failed_ids)
        if self.fifo and failed:
            failed = _with_rest_of_groups(batch, failed)
        if failed:
            self._m_failed.inc(len(failed))
            self._log.warning(
                "batch.failed",
                size=len(batch),
                failed=len(failed),
                reason=verdict.reason or "batchItemFailures",
                error_type=result.failure.error_type if result.failure else None,
                request_id=result.request_id,
            )
            if result.failure is not None:
                self._log.debug("batch.error", error_message=result.failure.error_message)
        else:
            self._log.info(
                "batch.succeeded",
                size=len(batch),
                duration_s=round(result.duration_s, 4),
                request_id=result.request_id,
            )
        return failed

    async def _delete(self, messages: Sequence[Record]) -> None:
        """DeleteMessageBatch in tens; entries that fail are retried, then left to reappear
        (at-least-once: a message whose delete failed is delivered again, never lost)."""
        deleted = 0
        try:
            for start in range(0, len(messages), 10):
                deleted += await self._delete_ten(messages[start : start + 10])
        finally:
            if deleted:
                self._m_deleted.inc(deleted)  # once per batch, not per message or per call

    async def _delete_ten(self, messages: Sequence[Record]) -> int:
        """One DeleteMessageBatch (and its retries) for up to ten messages; returns how
        many SQS confirmed deleted, by entry id (an answer's count alone proves nothing)."""
        entries = [
            {"Id": i, "ReceiptHandle": m["receiptHandle"]}
            for i, m in zip(_ENTRY_IDS, messages, strict=False)
        ]
        deleted = 0
        for _ in range(DELETE_ATTEMPTS):
            try:
                response = await self._call(
                    "DeleteMessageBatch", {"QueueUrl": self.queue_url, "Entries": entries}
                )
            except Exception as exc:
                self._log.warning("sqs.delete_failed", count=len(entries), error=str(exc))
                continue
            done = {entry["Id"] for entry in response.get("Successful") or ()}
            left = [entry for entry in entries if entry["Id"] not in done]
            deleted += len(entries) - len(left)
            entries = left
            if not entries:
                return deleted
            codes = sorted({e.get("Code", "") for e in response.get("Failed") or ()})
            self._log.warning("sqs.delete_entries_failed", count=len(entries), codes=codes)
        self._log.warning("sqs.delete_gave_up", count=len(entries))
        return deleted

    async def _release(self, messages: list[Record]) -> None:
        """Make received-but-never-invoked messages visible again at once (shutdown)."""
        with anyio.move_on_after(5):
            for start in range(0, len(messages), 10):
                entries = [
                    {"Id": str(i), "ReceiptHandle": m["receiptHandle"], "VisibilityTimeout": 0}
                    for i, m in enumerate(messages[start : start + 10])
                ]
                try:
                    await self._api.call(
                        "ChangeMessageVisibilityBatch",
                        {"QueueUrl": self.queue_url, "Entries": entries},
                    )
                except Exception as exc:
                    self._log.warning("sqs.release_failed", count=len(entries), error=str(exc))


def add_fitting(budget: BatchBudget, records: list[Record]) -> int:
    """Add the leading records that fit the batch (`BatchBudget.add_fitting`); returns
    how many. One dumps of the whole receive measures them together, the usual case (they
    all fit: its length less the brackets is their sizes plus the commas between them);
    each is measured only when they do not all fit."""
    count = len(records)
    if count and budget.add_all(count, len(orjson.dumps(records)) - 2):
        return count
    return budget.add_fitting([record_size(record) for record in records])


def _with_rest_of_groups(batch: list[Record], failed: set[str]) -> set[str]:
    """FIFO: once a message of a group fails, every later message of that group stays too."""
    blocked: set[str | None] = set()
    result = set(failed)
    for message in batch:
        group = group_id(message)
        if group in blocked:
            result.add(message["messageId"])
        elif message["messageId"] in failed:
            blocked.add(group)
    return result
