"""The Kafka consumer of one mapping: a fetch loop feeding one lane per assigned partition.

Owns the consumer-group membership (aiokafka), the per-partition lanes and the offset
commits; must not decide retries, bisects, record age or give-ups (the shared ordered-source
policy `esm.sources.streams.policy` does, fed by `items.py`) or shape events (`event.py`).

AWS rules followed (Lambda developer guide, with-kafka, with-msk, kafka-retry-configurations):
- Batches are per partition and in offset order: `batch_size` records, or what arrived in
  `maximum_batching_window_in_seconds` after the first, or up to the 6 MB payload cap.
- One batch in flight per partition; the partitions of the topic run concurrently.
- Offsets are committed only after a batch succeeded, was filtered out or was given up, and
  only up to the first record not done: a failed batch is retried from its first record
  (from the lowest reported offset with ReportBatchItemFailures), blocking only its
  partition. The same records are retried (a retry is not a new, larger batch).
- Scale-out is Kafka's consumer-group protocol. On rebalance a revoked partition's lane
  starts no new batch; its in-flight batch finishes (bounded by the function timeout) and
  is committed if it is done, else abandoned uncommitted: the next owner reads it again
  from the committed offset. Nothing is committed past an unfinished record.
- `starting_position` applies only when the group has no committed offset.
- Given-up records (retries exhausted, older than `maximum_record_age_in_seconds`) are
  described to the on-failure destination before the commit past them; a delivery that
  fails blocks the partition and is retried (`onfailure.py`). A bisected batch's halves
  are handled first half first, each committed once done.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import orjson
from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    TopicPartition,
)
from aiokafka.consumer import fetcher as _aiokafka_fetcher  # type: ignore[import-untyped]
from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

from esm.aws import AwsClients
from esm.batch_response import judge
from esm.errors import SourceUnavailable
from esm.filtering import FilterSet
from esm.invokers import Function
from esm.invokers.result import MAX_RESPONSE_BYTES, InvocationResult
from esm.observability import MappingMetrics, Metrics, get_logger
from esm.sources.base import MappingRuntime, RuntimeResources
from esm.sources.kafka.auth import (
    KafkaLoginFailed,
    bootstrap_servers,
    check_login,
    client_options,
    credentials_changed,
    is_scram_refusal,
    login_refused,
    secretsmanager_fetcher,
)
from esm.sources.kafka.config import AUTH_TYPES, KafkaMappingConfig
from esm.sources.kafka.event import (
    PartitionShaper,
    build_event,
    envelope_size,
    kafka_filter_view,
    partition_key,
)
from esm.sources.kafka.fetch_pipeline import pipeline_fetches
from esm.sources.kafka.items import OffsetPositions, item_identifier, retry_rules
from esm.sources.kafka.metrics import kafka_metrics, offset_lag
from esm.sources.kafka.onfailure import (
    Condition,
    KafkaOnFailure,
    OptionsReader,
    build_on_failure,
    given_up_records,
)
from esm.sources.streams.policy import (
    Bisect,
    Decision,
    Done,
    GiveUp,
    RetryAfter,
    RetryFrom,
    Segment,
    decide,
    expired,
    next_segments,
    without_expired,
)

log = get_logger("esm.sources.kafka")

MAX_PAYLOAD_BYTES = MAX_RESPONSE_BYTES
"""Lambda's 6 MB synchronous invocation payload: a batch's event stays under it."""
FETCH_TIMEOUT_MS = 200
FETCH_MAX_RECORDS = 10_000
PARTITION_FETCH_BYTES = 1_048_576
FETCH_MAX_BYTES = 16 * 1_048_576
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0
"""Backoff between consumers when the brokers cannot be reached (doubling, capped)."""
POSITION_TIMEOUT_S = 10.0
BROKER_CHECK_INTERVAL_S = 2.0
BROKER_CHECK_TIMEOUT_S = 5.0
"""How often a running consumer asks the cluster for its metadata, and how long it waits for
the answer, to know that its brokers are reachable (see `_watch_brokers`)."""
PAUSE_TICK_S = 0.1
"""How often the consumer notes that its process runs (see `_watch_pauses`)."""

REVOKE_GRACE_S = 1.0
"""Added to the function timeout while a revoked partition's in-flight batch finishes."""

_AUTO_OFFSET_RESET = {"TRIM_HORIZON": "earliest", "LATEST": "latest", "AT_TIMESTAMP": "earliest"}


def _raw_record(tp: Any, record: Any) -> Any:
    """What aiokafka's `PartitionRecords` yields for a record on the raw path: the record of
    its batch (`DefaultRecord`, the C extension's), with the attributes `FetchedRecord` names."""
    return record


class _RawRecords(collections.OrderedDict[Any, Any]):
    """aiokafka's buffer of fetched partitions (`Fetcher._records`), handing out the batch's own
    records instead of a `ConsumerRecord` each.

    getmany builds a Python `ConsumerRecord` per record (11 fields, a tuple of headers, two
    deserializer checks: 0.7 us of 1.1 us per 1 KB record, bench/kafka.py) which the shaper
    only reads 6 attributes of, the same the batch's record has. Every rule of aiokafka's stays
    its own: control batches and aborted transactions skipped, CRC checks, positions,
    `max_records`, a revoked or sought partition's records dropped; only the object yielded
    per record changes. A result whose records are not of the expected class stays as it is.
    """

    def __setitem__(self, tp: Any, result: Any) -> None:
        records = getattr(result, "_partition_records", None)
        if isinstance(records, _aiokafka_fetcher.PartitionRecords):
            records._consumer_record = _raw_record
        super().__setitem__(tp, result)


def raw_records_supported() -> bool:
    """aiokafka's private parts the raw path relies on are there (checked at start: a newer
    aiokafka may rename them; pyproject.toml pins the range they were read in)."""
    partition_records = getattr(_aiokafka_fetcher, "PartitionRecords", None)
    fetch_result = getattr(_aiokafka_fetcher, "FetchResult", None)
    return (
        partition_records is not None
        and fetch_result is not None
        and callable(getattr(partition_records, "_consumer_record", None))
        and "_consumer_record" in partition_records._unpack_records.__code__.co_names
        and "_partition_records" in fetch_result.__init__.__code__.co_names
    )


def serve_raw_records(consumer: Any) -> bool:
    """Make a started consumer's getmany return the batches' records (`_RawRecords`); False
    when this aiokafka does not have the parts it relies on (getmany's `ConsumerRecord`s then,
    shaped the same: both have the attributes `FetchedRecord` names)."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    buffered = getattr(fetcher, "_records", None)
    if not raw_records_supported() or type(buffered) is not collections.OrderedDict:
        return False
    fetcher._records = _RawRecords(buffered)
    return True


KEEP_FREED_BYTES = 64 * 1_048_576
"""Freed heap glibc keeps for the next fetch instead of returning it to the system."""
MMAP_THRESHOLD_BYTES = 32 * 1_048_576
"""Allocations below this come from the heap (glibc's largest dynamic threshold)."""
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_malloc_tuned: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc keep up to KEEP_FREED_BYTES of freed heap (once per process; False where
    there is no glibc `mallopt`).

    Each fetch of a partition allocates and frees megabytes: the response, a 1.4 KB base64
    string per 1 KB value. glibc returns a free heap top above 128 KB to the system at once,
    so the next fetch's strings page-fault their memory in again: 0.35 of the 0.55 us it takes
    to base64 and keep a 1 KB value (bench/kafka.py). The cost is memory: the process keeps
    up to 64 MB it freed, as a daemon at its high-water mark does anyway.
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        try:
            mallopt = ctypes.CDLL(None).mallopt
        except (OSError, AttributeError):
            _malloc_tuned = False
        else:
            trimmed = mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)
            mapped = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
            _malloc_tuned = bool(trimmed and mapped)
    return _malloc_tuned


class ConsumerPaused(Exception):
    """The process ran nothing for longer than the group waits for a silent member."""


Doc = dict[str, Any]
"""A fetched record, shaped once into its Lambda JSON; the lane keeps its size alongside."""


def _arrival(doc: Doc) -> float:
    """A record's arrival for the record-age rule: its Kafka timestamp, in seconds."""
    return float(doc["timestamp"]) / 1000.0


class _Lane:
    """One assigned partition: its buffered records, its one batch in flight, its commits."""

    def __init__(self, runtime: KafkaRuntime, tp: Any) -> None:
        self._runtime = runtime
        self.tp = tp
        self.key = partition_key(tp.topic, tp.partition)
        self.shaper = PartitionShaper(tp.topic, tp.partition)
        self._buffer: deque[Doc] = deque()
        self._sizes: deque[int] = deque()
        """JSON size of each buffered record, in the same order as `_buffer`."""
        self._bytes = 0
        self._fetched: deque[Sequence[Any]] = deque()
        """Fetched client records not shaped yet, in offset order after `_buffer`'s."""
        self._unshaped = 0
        self._arrived = anyio.Event()
        self._first_at: float | None = None
        self._stopping = False
        self._wait_scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._identify = item_identifier(self.key)
        self.committed: int | None = None
        self._log = log.bind(mapping=runtime.config.name, partition=self.key)

    @property
    def full(self) -> bool:
        """Enough buffered for two batches: stop taking this partition's fetched records."""
        cap = self._runtime.config.batch_size * 2
        buffered = len(self._buffer) + self._unshaped
        return buffered >= cap or self._bytes >= 2 * MAX_PAYLOAD_BYTES

    def add(self, records: Sequence[Any]) -> None:
        """Take fetched client records; the lane shapes them when it runs (`_shape_fetched`),
        so the fetch loop asks for the next records at once instead of after shaping these."""
        if not records or self._stopping:
            return
        if not self._buffer and not self._fetched:
            self._first_at = anyio.current_time()
        self._fetched.append(records)
        self._unshaped += len(records)
        self._arrived.set()

    def _shape_fetched(self) -> None:
        """Shape fetched records once into their Lambda JSON and buffer them: only as many as
        the next batch can take (batch_size records, 6 MB), the rest when a later batch
        needs them. A fetch brings thousands of records; shaping them all at once held the
        event loop ~5 ms, during which aiokafka's fetcher could not send the next fetch
        (median 70% -> 75% of the bare loop, bench/kafka.py, 6 interleaved pairs each)."""
        fetched, buffer, sizes = self._fetched, self._buffer, self._sizes
        want = self._runtime.config.batch_size
        while fetched and len(buffer) < want and self._bytes < MAX_PAYLOAD_BYTES:
            chunk = fetched[0]
            take = want - len(buffer)
            if len(chunk) <= take:
                fetched.popleft()
            else:
                fetched[0] = chunk[take:]
                chunk = chunk[:take]
            self._unshaped -= len(chunk)
            self._bytes += self.shaper.shape_into(chunk, buffer.append, sizes.append)

    def stop(self) -> None:
        """Start no new batch; a batch in flight finishes (see `wait_stopped`)."""
        self._stopping = True
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(self) -> None:
        try:
            while not self._stopping:
                batch = await self._next_batch()
                if not batch:
                    break
                await self._process(batch)
        finally:
            self._stopped.set()

    async def _wait_for_records(self, deadline: float) -> None:
        self._arrived = anyio.Event()
        with anyio.CancelScope(deadline=deadline) as scope:
            self._wait_scope = scope
            await self._arrived.wait()
        self._wait_scope = None

    async def _next_batch(self) -> list[Doc]:
        """Wait for the batch_size / window / 6 MB cut, in offset order from the head."""
        config = self._runtime.config
        self._shape_fetched()
        while not self._buffer:
            if self._stopping:
                return []
            await self._wait_for_records(math.inf)
            self._shape_fetched()
        first_at = self._first_at if self._first_at is not None else anyio.current_time()
        deadline = first_at + config.maximum_batching_window_in_seconds
        budget = MAX_PAYLOAD_BYTES - self._runtime.envelope_bytes
        limit = config.batch_size
        while (
            not self._stopping
            and len(self._buffer) < limit
            and self._bytes < budget
            and anyio.current_time() < deadline
        ):
            await self._wait_for_records(deadline)
            self._shape_fetched()
        if self._stopping:
            return []
        if self._bytes <= budget:  # any prefix fits: no need to add sizes up
            return list(itertools.islice(self._buffer, limit))
        count, size = 0, 0
        for entry_size in self._sizes:
            if count >= limit or (count and size + entry_size > budget):
                break
            count += 1
            size += entry_size
        return list(itertools.islice(self._buffer, count))

    async def _process(self, batch: list[Doc]) -> None:
        """Invoke the batch's passing records until each is done or given up, asking the
        shared policy after each invocation (bisect halves wait on a stack, first half on
        top), committing what is done as it goes. Stopping abandons the rest uncommitted."""
        runtime = self._runtime
        after_last = batch[-1]["offset"] + 1
        passing = batch
        if runtime.filtering:
            passing = [d for d in batch if runtime.passes(d)]
            runtime.m.filtered_out.inc(len(batch) - len(passing))
        work: list[Segment[Doc]] = [Segment(passing)] if passing else []
        while work:
            if runtime.paused():  # the group may have moved on: invoke nothing fetched before
                self.stop()
            if self._stopping:
                return
            segment: Segment[Doc] | None = work.pop()
            assert segment is not None
            too_old = expired(segment.records, time.time(), runtime.rules, arrival=_arrival)
            if too_old is not None:
                old = segment.records[: too_old.count]
                await self._give_up(list(old), too_old.condition, segment.invocations, None, "")
                segment = without_expired(segment, too_old)
                if segment is None:
                    await self._commit_through(_next_pending(work, after_last))
                    continue
                await self._commit_through(segment.records[0]["offset"])
            decision = await self._invoke(segment)
            work.extend(reversed(next_segments(segment, decision)))
            await self._commit_through(_next_pending(work, after_last))
            if isinstance(decision, (RetryFrom, RetryAfter)):
                await self._pause(decision.delay)
        await self._commit_through(after_last)

    async def _invoke(self, segment: Segment[Doc]) -> Decision:
        """One invocation of a segment and the policy's decision (given-up records are
        described to the destination here, before anything is committed past them)."""
        runtime, records = self._runtime, segment.records
        result = await runtime.invoke(self.key, records)
        rules = runtime.rules
        positions = OffsetPositions(records)
        verdict = judge(result, positions, rules.report_batch_item_failures, self._identify)
        decision = decide(
            verdict,
            records,
            segment.attempts,
            rules,
            throttled=result.throttled,
            positions=positions,
        )
        if isinstance(decision, Done):
            return decision
        if isinstance(decision, Bisect):
            self._log.info("kafka.batch.bisected", offset=records[0]["offset"], at=decision.at)
            return decision
        self._log.warning(
            "kafka.batch.failed",
            offset=records[0]["offset"],
            size=len(records),
            reason=verdict.reason or "batchItemFailures",
            attempts=decision.attempts,
            action=type(decision).__name__,
        )
        if isinstance(decision, GiveUp):
            given_up = records[decision.succeeded : decision.succeeded + decision.count]
            await self._give_up(
                list(given_up),
                decision.condition,
                segment.invocations + 1,
                "Unhandled" if result.failure is not None else None,
                result.request_id,
                reason=verdict.reason,
            )
        return decision

    async def _pause(self, delay: float) -> None:
        """Wait before a retry; a stop ends the wait at once."""
        if self._stopping:
            return
        with anyio.CancelScope(deadline=anyio.current_time() + delay) as scope:
            self._wait_scope = scope
            await anyio.sleep_forever()
        self._wait_scope = None

    async def _give_up(
        self,
        entries: list[Doc],
        condition: Condition,
        invoke_count: int,
        function_error: str | None,
        request_id: str,
        reason: str = "",
    ) -> None:
        """Count and log the records, and deliver their on-failure record (blocking until it
        is delivered, as Lambda does) before the caller commits past them."""
        runtime = self._runtime
        runtime.m.dropped.inc(len(entries))
        self._log.warning(
            "kafka.batch.given_up",
            first_offset=entries[0]["offset"],
            last_offset=entries[-1]["offset"],
            condition=condition,
            reason=reason,
        )
        if runtime.on_failure is None:
            return
        event = runtime.event_of(self.key, entries)
        given_up = given_up_records(
            self.key,
            [(d["offset"], d["timestamp"]) for d in entries],
            payload_size=len(orjson.dumps(event)),
            condition=condition,
            invoke_count=invoke_count,
            function_error=function_error,
            request_id=request_id or str(uuid.uuid4()),
        )
        await runtime.on_failure.deliver(given_up, event)

    async def _commit_through(self, next_offset: int) -> None:
        """Drop buffered records before `next_offset` and commit it (Kafka's next-to-read)."""
        dropped = 0
        buffer, sizes = self._buffer, self._sizes
        if buffer and buffer[-1]["offset"] < next_offset:  # all of it: the common case
            dropped = len(buffer)
            buffer.clear()
            sizes.clear()
            self._bytes = 0
        while buffer and buffer[0]["offset"] < next_offset:
            buffer.popleft()
            self._bytes -= sizes.popleft()
            dropped += 1
        if dropped == 0:
            return
        self._first_at = anyio.current_time() if self._buffer or self._fetched else None
        if not self.full:
            self._runtime.has_room(self)
        if await self._runtime.commit(self.tp, next_offset):
            self.committed = next_offset
        self._runtime.update_lag(self)

    @property
    def next_offset(self) -> int | None:
        """The next offset to process: the first buffered record, else what was committed."""
        if self._buffer:
            offset: int = self._buffer[0]["offset"]
            return offset
        if self._fetched:
            fetched: int = self._fetched[0][0].offset
            return fetched
        return self.committed


def _next_pending(work: Sequence[Segment[Doc]], after_last: int) -> int:
    """The offset to commit: the first record still to handle, else past the batch (its
    filtered-out records included). Segments are handled in order, so all before it is done."""
    return int(work[-1].records[0]["offset"]) if work else after_last


class _Round:
    """The offsets of one OffsetCommit request, and which of them the broker did not take."""

    __slots__ = ("offsets", "failed", "error", "done")

    def __init__(self) -> None:
        self.offsets: dict[Any, int] = {}
        self.failed: set[Any] = set()
        self.error: BaseException | None = None
        """Anything but a KafkaError: raised to every waiter."""
        self.done = anyio.Event()


class _GroupCommit:
    """Sends the offsets of several partitions in one OffsetCommit request.

    Kafka's OffsetCommit carries any number of partitions, and aiokafka sends one commit at a
    time (a lock around each request), so lanes committing one by one waited behind each
    other, a round trip each. Here a lane's `commit` joins the request being gathered and
    waits until the broker answered it, as before: a lane starts its next batch only after
    its commit is acknowledged; only the request is shared. A partition's later offset
    replaces its earlier one in a round being gathered (a lane commits in offset order).
    """

    def __init__(self, runtime: KafkaRuntime) -> None:
        self._runtime = runtime
        self._round = _Round()
        self._wake = anyio.Event()

    async def commit(self, tp: Any, next_offset: int) -> bool:
        """Commit `next_offset` for `tp`; False (logged) when the group moved on meanwhile."""
        round_ = self._round
        round_.offsets[tp] = next_offset
        self._wake.set()
        await round_.done.wait()
        if round_.error is not None:
            raise round_.error
        return tp not in round_.failed

    async def run(self) -> None:
        """Send each gathered round as one request, the next one once this one is answered."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            round_, self._round = self._round, _Round()
            try:
                round_.failed = await self._send(round_.offsets)
            except BaseException as exc:
                round_.error = exc
                raise
            finally:
                round_.done.set()

    async def _send(self, offsets: dict[Any, int]) -> set[Any]:
        """The partitions whose commit failed: no longer assigned (a rebalance), or all of
        them when the broker refused the request (the group moved on)."""
        runtime = self._runtime
        assigned = runtime.consumer.assignment()
        sent = {tp: offset for tp, offset in offsets.items() if tp in assigned}
        failed = offsets.keys() - sent.keys()
        for tp in failed:  # what aiokafka raises committing a partition no longer assigned
            runtime.log_commit_failed(tp, offsets[tp], "IllegalStateError")
        if sent:
            try:
                await runtime.consumer.commit(sent)
            except KafkaError as exc:
                for tp, offset in sent.items():
                    runtime.log_commit_failed(tp, offset, type(exc).__name__)
                failed.update(sent)
        return failed


async def connection(
    config: KafkaMappingConfig, aws: AwsClients
) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The brokers (configured, else MSK's GetBootstrapBrokers) and aiokafka's security
    options (secrets read now: from Secrets Manager through `aws`, a file or a variable)."""
    kafka_client = None if config.bootstrap_servers else await aws.client("kafka")
    servers = await bootstrap_servers(config, kafka_client)
    return servers, await options_reader(config, aws)()


def options_reader(config: KafkaMappingConfig, aws: AwsClients) -> OptionsReader:
    """`client_options` with the mapping's secrets read afresh at each call (rotation)."""

    async def read() -> dict[str, Any]:
        fetch = None
        if any(access.uri.kind == "secretsmanager" for access in config.access):
            fetch = secretsmanager_fetcher(await aws.client("secretsmanager"))
        return await client_options(config, fetch)

    return read


async def build_runtime(
    config: KafkaMappingConfig,
    function: Function,
    filters: FilterSet | None,
    resources: RuntimeResources,
) -> KafkaRuntime:
    """The registry's runtime for a Kafka mapping (esm/sources/registry.py). A secret or
    GetBootstrapBrokers that fails stops the start with a SourceUnavailable naming it."""
    servers, options = await connection(config, resources.aws)
    read_options = options_reader(config, resources.aws)
    on_failure = build_on_failure(
        config, resources.aws, function.arn, servers, options, read_options
    )
    return KafkaRuntime(
        config,
        function,
        resources.metrics,
        bootstrap_servers=servers,
        client_options=options,
        on_failure=on_failure,
        filters=filters,
        read_options=read_options,
    )


class KafkaRuntime(MappingRuntime):
    """Reads the mapping's topic as a member of its consumer group and invokes the function.

    `run()` until `stop()`; `started` is set once the consumer joined the cluster, `ready`
    once it holds its assignment with every partition positioned. `client_options` are passed
    to aiokafka (security settings from `auth.py`). A broker that cannot be reached never
    ends `run()`: the consumer is rebuilt after a capped backoff, not ready meanwhile.
    """

    def __init__(
        self,
        config: KafkaMappingConfig,
        function: Function,
        metrics: Metrics,
        bootstrap_servers: Sequence[str] | None = None,
        client_options: Mapping[str, Any] | None = None,
        on_failure: KafkaOnFailure | None = None,
        filters: FilterSet | None = None,
        read_options: OptionsReader | None = None,
        raw_records: bool = True,
        pipelined: bool = True,
    ) -> None:
        self.config = config
        self._read_options = read_options
        """Reads the secrets again after a refused login (None: options as given, for good)."""
        self._login_refused = False
        self.raw_records = raw_records
        """Read the fetched batches' records rather than getmany's `ConsumerRecord`s
        (`serve_raw_records`); False keeps aiokafka's public path (tests compare the two)."""
        self.pipelined = pipelined
        """Send the next fetch while fetched records wait for a lane (`fetch_pipeline.py`);
        False keeps aiokafka's one fetch at a time (the benchmark compares the two)."""
        self._records_path_logged = False
        keep_freed_memory()
        self.name = config.name
        self.on_failure = on_failure
        """Where given-up records are described; the caller builds it from
        `config.on_failure_destination` (`onfailure.build_on_failure`)."""
        self.rules = retry_rules(config)
        """What the shared policy reads (AWS's cap of 10 retries with a destination applied)."""
        self.function = function
        self.metrics = metrics
        self.m = MappingMetrics(metrics, config.name)
        self.bootstrap_servers = tuple(bootstrap_servers or config.bootstrap_servers)
        self._client_options = dict(client_options or {})
        self._bootstrap_text = ",".join(self.bootstrap_servers)
        self.envelope_bytes = envelope_size(
            config.event_source, self._bootstrap_text, config.cluster_arn
        )
        if filters is None:
            filters = FilterSet.compile(config.filter_patterns)
        self.passes: Callable[[dict[str, Any]], bool] = filters.predicate(kafka_filter_view)
        self.filtering = bool(config.filter_patterns)
        self.lanes: dict[Any, _Lane] = {}
        self.started = anyio.Event()
        self._stop = anyio.Event()
        self._consumer: Any = None
        self._commits = _GroupCommit(self)
        self._task_group: anyio.abc.TaskGroup | None = None
        self._fetch_scope: anyio.CancelScope | None = None
        self._fetching_for: set[Any] = set()
        self._connected = False
        self._joined = False
        self._broker_error: str | None = None
        """Why the brokers cannot be reached now (the consumer's error, or a failed check)."""
        options = self._client_options
        self._pause_limit_s = (
            int(options.get("session_timeout_ms", 10_000))
            - int(options.get("heartbeat_interval_ms", 3_000))
        ) / 1000
        """A pause this long may have let the group expire this member (aiokafka defaults)."""
        self._tick = time.monotonic()
        self._unpositioned: set[Any] = set()
        """Assigned partitions whose next offset the client has not resolved yet."""
        self._kafka = kafka_metrics(metrics)
        self._assigned = self._kafka.assigned_partitions.labels(config.name)
        self._log = log.bind(mapping=config.name, topic=config.topic)
        self._m = config.name

    @property
    def ready(self) -> bool:
        """In the group with every assigned partition positioned: a record produced from
        now on is read (with LATEST too), as the daemon's /readyz promises."""
        return (
            self._connected
            and self._joined
            and not self._unpositioned
            and self._broker_error is None
        )

    @property
    def not_ready_reason(self) -> str | None:
        """Why the mapping is not ready, for /readyz (None when it is)."""
        if self.ready:
            return None
        if self._broker_error is not None:
            return self._broker_error
        if not self._connected:
            return f"connecting to Kafka brokers {self._bootstrap_text}"
        if not self._joined:
            return f"joining consumer group {self.config.consumer_group_id}"
        return f"positioning {len(self._unpositioned)} assigned partitions"

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Consume until `stop()`; on a broker error, rebuild the consumer after a backoff
        (doubling from RECONNECT_MIN_S to RECONNECT_MAX_S, reset once a consumer started,
        unless it ended on a refused login). After a refused login the secrets are read
        again first (`_reread_secrets`). What was not committed is read again by the next
        consumer: at-least-once."""
        delay = RECONNECT_MIN_S
        try:
            while not self._stop.is_set():
                try:
                    if self._login_refused:
                        await self._reread_secrets()
                    await self._consume()
                except* (KafkaError, OSError, ConsumerPaused, SourceUnavailable, KeyError) as group:
                    exc = self._failure_of(group)  # raised in the task group
                    if self._connected and not isinstance(exc, KafkaLoginFailed):
                        # A consumer refused by one broker after another let it in keeps
                        # backing off: each attempt reads the secrets again.
                        delay = RECONNECT_MIN_S
                    self._broker_error = (
                        f"rejoining the group: {exc}"
                        if isinstance(exc, ConsumerPaused)
                        else str(exc)
                        if isinstance(exc, SourceUnavailable)  # a secret that cannot be read
                        else self._unreachable(type(exc).__name__)
                    )
                    self._log.warning(
                        "kafka.consumer.unavailable",
                        error=type(exc).__name__,
                        detail=str(exc)[:200],
                        retry_in_s=delay,
                    )
                else:
                    return
                finally:
                    self._connected = self._joined = False
                    self._unpositioned.clear()
                with anyio.move_on_after(delay):
                    await self._stop.wait()
                delay = min(delay * 2, RECONNECT_MAX_S)
        finally:
            if self.on_failure is not None:
                with anyio.CancelScope(shield=True):
                    await self.on_failure.aclose()

    def _failure_of(self, group: BaseExceptionGroup[Any]) -> BaseException:
        """The error that ended a consumer. A refused login (`check_login`, or aiokafka's
        SCRAM client failing on the broker's refusal) has the secrets read again before the
        next consumer; a KeyError of any other origin is a bug, raised as it is."""
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup):  # nested task groups
            exc = exc.exceptions[0]
        if isinstance(exc, KeyError):
            if not is_scram_refusal(exc):
                raise exc
            mechanism = self._client_options.get("sasl_mechanism")
            exc = login_refused(self.config, self._bootstrap_text, f"{mechanism} refused")
        if isinstance(exc, KafkaLoginFailed):
            self._login_refused = self._read_options is not None
        return exc

    async def _reread_secrets(self) -> None:
        """Read the secrets again after a refused login, so a password rotated in Secrets
        Manager is used by the next login without a restart. Once per reconnect attempt
        (the backoff bounds the reads); a secret that cannot be read is retried likewise.
        Logs the secret's location and whether the login changed, never a value."""
        assert self._read_options is not None
        options = await self._read_options()
        auth = self.config.access_of(AUTH_TYPES)
        self._log.info(
            "kafka.secret.reread",
            secret=str(auth.uri) if auth is not None else None,
            changed=credentials_changed(self._client_options, options),
        )
        self._client_options = options
        self._login_refused = False

    async def _consume(self) -> None:
        """One consumer's life: join, fetch into lanes until stopped or a broker error."""
        await check_login(self.config, self.bootstrap_servers, self._client_options)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.bootstrap_servers),
            group_id=self.config.consumer_group_id,
            enable_auto_commit=False,
            auto_offset_reset=_AUTO_OFFSET_RESET[self.config.starting_position],
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            fetch_max_bytes=FETCH_MAX_BYTES,
            **self._client_options,
        )
        self._consumer = consumer
        consumer.subscribe([self.config.topic], listener=_Listener(self))
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg  # before start(): assignments may come at once
                self._tick = time.monotonic()
                tg.start_soon(self._watch_pauses)
                self._commits = _GroupCommit(self)
                tg.start_soon(self._commits.run)
                await consumer.start()
                self._tune_fetcher(consumer)
                self._connected = True
                self._broker_error = None
                self.started.set()
                self._log.info("kafka.consumer.started", group=self.config.consumer_group_id)
                tg.start_soon(self._fetch_loop)
                tg.start_soon(self._watch_brokers)
                await self._stop.wait()
                lanes = list(self.lanes.values())
                self.lanes.clear()
                await self._stop_lanes(lanes)
                for lane in lanes:
                    self._forget_lag(lane)
                tg.cancel_scope.cancel()
        finally:
            self._task_group = None
            self.m.ready.set(0)
            for lane in self.lanes.values():  # a broker error: abandoned uncommitted
                self._forget_lag(lane)
            self.lanes.clear()
            self._assigned.set(0)
            self.m.pollers.set(0)
            with anyio.CancelScope(shield=True):
                await consumer.stop()
            self._log.info("kafka.consumer.stopped")

    def _tune_fetcher(self, consumer: Any) -> None:
        """The raw path and the fetch pipeline unless turned off (`raw_records=False`,
        `pipelined=False`) or this aiokafka lacks their parts; logged once per runtime."""
        raw = self.raw_records and serve_raw_records(consumer)
        pipelined = self.pipelined and pipeline_fetches(consumer)
        if not self._records_path_logged:
            self._records_path_logged = True
            self._log.info(
                "kafka.records.path", path="raw" if raw else "public", pipelined=pipelined
            )

    def _unreachable(self, error: str) -> str:
        return f"Kafka brokers {self._bootstrap_text} unreachable: {error}"

    def paused(self) -> bool:
        """The process ran nothing for longer than the group waits for a member's heartbeat
        (session timeout minus heartbeat interval): SIGSTOP, a frozen VM. The group may have
        given this worker's partitions to another, which reads them from the committed
        offset, so nothing fetched before may be invoked (a stale, out-of-order duplicate)."""
        return time.monotonic() - self._tick > self._pause_limit_s

    async def _watch_pauses(self) -> None:
        """Rebuild the consumer after such a pause: leave the group, join again, and read
        from the committed offsets (lanes check `paused()` first, so none invokes meanwhile).
        """
        while True:
            self._tick = time.monotonic()
            await anyio.sleep(PAUSE_TICK_S)
            gap = time.monotonic() - self._tick
            if gap > self._pause_limit_s:
                raise ConsumerPaused(f"the process was paused for {gap:.1f} s")

    async def _watch_brokers(self) -> None:
        """Not ready while the brokers cannot be reached. aiokafka rides out a broker that
        drops while the consumer runs (it reconnects; fetches return nothing meanwhile), so
        without this a mapping would stay ready through an outage: ask the cluster for its
        metadata every BROKER_CHECK_INTERVAL_S, not ready until it answers again."""
        while True:
            error = None
            with anyio.move_on_after(BROKER_CHECK_TIMEOUT_S) as scope:
                try:
                    await self._consumer.topics()
                except KafkaError as exc:
                    error = type(exc).__name__
            if scope.cancelled_caught:
                error = f"no answer within {BROKER_CHECK_TIMEOUT_S:g} s"
            reason = None if error is None else self._unreachable(error)
            if reason != self._broker_error:
                if reason is None:
                    self._log.info("kafka.brokers.reachable")
                else:
                    self._log.warning("kafka.brokers.unreachable", error=error)
                self._broker_error = reason
                self.m.ready.set(1 if self.ready else 0)
            await anyio.sleep(BROKER_CHECK_INTERVAL_S)

    async def _position(self) -> None:
        """Resolve the next offset of newly assigned partitions (committed, else
        starting_position), so `ready` means a record produced from now on is read."""
        for tp in list(self._unpositioned):
            with anyio.move_on_after(POSITION_TIMEOUT_S):
                with contextlib.suppress(KafkaError, AssertionError):  # revoked meanwhile
                    await self._consumer.position(tp)
                self._unpositioned.discard(tp)

    async def _fetch_loop(self) -> None:
        """Hand fetched records to the lanes, asking only for partitions whose lane has room.

        Backpressure without `pause()`: aiokafka drops a paused partition's prefetched
        records and fetches them again on resume; records of a partition not asked for stay
        in the client's buffer, and the client fetches that partition again only once they
        are taken. A lane that gets room while a fetch waits cancels the wait (`has_room`).
        """
        while True:
            if self._unpositioned:
                await self._position()
            self.m.ready.set(1 if self.ready else 0)
            wanted = [tp for tp, lane in self.lanes.items() if not lane.full]
            self._fetching_for = set(wanted)
            fetched: dict[Any, list[Any]] = {}
            with anyio.CancelScope() as scope:
                self._fetch_scope = scope
                if wanted:
                    fetched = await self._consumer.getmany(
                        *wanted, timeout_ms=FETCH_TIMEOUT_MS, max_records=FETCH_MAX_RECORDS
                    )
                else:  # every lane is full, or none assigned yet
                    await anyio.sleep(FETCH_TIMEOUT_MS / 1000)
            self._fetch_scope = None
            for tp, records in fetched.items():
                lane = self.lanes.get(tp)
                if lane is None:  # revoked meanwhile: the next owner reads these again
                    continue
                lane.add(records)
                self.m.polled.inc(len(records))
                self.update_lag(lane)

    def update_lag(self, lane: _Lane) -> None:
        """OffsetLag of one partition: its high watermark minus the next offset to process."""
        try:
            high = self._consumer.highwater(lane.tp)
        except (KafkaError, AssertionError):  # no longer assigned
            return
        lag = offset_lag(high, lane.next_offset)
        if lag is not None:
            self._kafka.offset_lag.labels(self._m, str(lane.tp.partition)).set(lag)

    def has_room(self, lane: _Lane) -> None:
        """A lane drained below `full`: wake the fetch loop if it is not asking for it."""
        if self._fetch_scope is not None and lane.tp not in self._fetching_for:
            self._fetch_scope.cancel()

    def event_of(self, key: str, docs: Sequence[Doc]) -> dict[str, Any]:
        return build_event(
            self.config.event_source,
            self._bootstrap_text,
            self.config.cluster_arn,
            {key: docs},
        )

    async def invoke(self, key: str, entries: Sequence[Doc]) -> InvocationResult:
        """Invoke the function with one partition's records."""
        event = self.event_of(key, entries)
        m = self.m
        m.invoked.inc(len(entries))
        m.batch_size.observe(len(entries))
        m.in_flight.inc()
        try:
            result = await self.function.invoke(event)
        finally:
            m.in_flight.dec()
        if not result.ok:
            m.failed_invoke.inc(len(entries))
        return result

    async def commit(self, tp: Any, next_offset: int) -> bool:
        """Commit `next_offset` for `tp` (sent with other partitions' commits, `_GroupCommit`);
        False (logged) when the group moved on meanwhile."""
        return await self._commits.commit(tp, next_offset)

    @property
    def consumer(self) -> Any:
        return self._consumer

    def log_commit_failed(self, tp: Any, next_offset: int, error: str) -> None:
        self._log.warning(
            "kafka.commit.failed",
            partition=partition_key(tp.topic, tp.partition),
            offset=next_offset,
            error=error,
        )

    async def on_assigned(self, assigned: Sequence[Any]) -> None:
        if self.config.starting_position == "AT_TIMESTAMP":
            await self._seek_to_timestamp(assigned)
        for tp in assigned:
            if tp in self.lanes:
                continue
            lane = _Lane(self, tp)
            self.lanes[tp] = lane
            self._unpositioned.add(tp)
            if self._task_group is not None:
                self._task_group.start_soon(lane.run)
        self._joined = True
        self.m.pollers.set(len(self.lanes))
        self._assigned.set(len(self.lanes))
        if self._fetch_scope is not None:  # ask for the new partitions at once
            self._fetch_scope.cancel()
        partitions = sorted(tp.partition for tp in assigned)
        self._log.info("kafka.partitions.assigned", partitions=partitions)

    async def on_revoked(self, revoked: Sequence[Any]) -> None:
        lanes = [self.lanes.pop(tp) for tp in revoked if tp in self.lanes]
        self._unpositioned.difference_update(revoked)
        await self._stop_lanes(lanes)
        self.m.pollers.set(len(self.lanes))
        self._assigned.set(len(self.lanes))
        for lane in lanes:  # another worker reports these now
            self._forget_lag(lane)
        partitions = sorted(tp.partition for tp in revoked)
        self._log.info("kafka.partitions.revoked", partitions=partitions)

    async def _stop_lanes(self, lanes: Sequence[_Lane]) -> None:
        """Let each lane's in-flight batch finish (bounded), then leave the rest uncommitted."""
        for lane in lanes:
            lane.stop()
        with anyio.move_on_after(self.function.timeout + REVOKE_GRACE_S):
            for lane in lanes:
                await lane.wait_stopped()

    async def _seek_to_timestamp(self, assigned: Sequence[Any]) -> None:
        """AT_TIMESTAMP: partitions without a committed offset start at the first record at
        or after starting_position_timestamp (the end when there is none)."""
        stamp = self.config.starting_position_timestamp
        assert stamp is not None  # config requires it with AT_TIMESTAMP
        fresh = [tp for tp in assigned if await self._consumer.committed(tp) is None]
        if not fresh:
            return
        found = await self._consumer.offsets_for_times(
            {tp: int(stamp.timestamp() * 1000) for tp in fresh}
        )
        ends = await self._consumer.end_offsets(fresh)
        for tp in fresh:
            hit = found.get(tp)
            self._consumer.seek(tp, hit.offset if hit is not None else ends[tp])

    def _forget_lag(self, lane: _Lane) -> None:
        with contextlib.suppress(KeyError):  # never set: no fetch answered for it yet
            self._kafka.offset_lag.remove(self._m, str(lane.tp.partition))

    def committed_offsets(self) -> dict[str, int | None]:
        """What this worker committed per assigned partition (for status and tests)."""
        return {lane.key: lane.committed for lane in self.lanes.values()}


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runtime: KafkaRuntime) -> None:
        self._runtime = runtime

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._runtime.on_revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self._runtime.on_assigned(list(assigned))


__all__ = ["KafkaRuntime", "TopicPartition", "build_runtime", "connection"]
