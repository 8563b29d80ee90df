"""Logging setup and every Prometheus metric esm exports, defined in one place.

Metric names mirror AWS's event source mapping metrics (PolledEventCount ->
esm_polled_events_total, ...) in Prometheus conventions. Labels are the mapping name, the
function name or the shard, never anything per record. Logs are structlog events, JSON by
default, one line each; message bodies never appear at INFO.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
import structlog.stdlib
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


ISOLATED_LOGGERS = (
    "asyncio",
    "aiohttp",
    "aiobotocore",
    "botocore",
    "boto3",
    "s3transfer",
    "urllib3",
    "esm",
)
"""The stdlib loggers of esm and its libraries. They write through esm's own handler and do
not propagate to the root logger, which belongs to in-process handlers as it does on Lambda:
a handler that calls `logging.basicConfig(force=True)`, replaces the root's handlers or lowers
its level (Powertools recipes do) must not turn esm's log lines into its format, nor raise
botocore to DEBUG (which dumps signed requests)."""


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route structlog and the stdlib logging of esm's libraries to stderr, one event per
    line, in `log_format` (JSON by default) whatever handlers do to the root logger."""
    numeric_level = getattr(logging, level.upper())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    # Libraries stay at WARNING even at log_level = "debug": botocore's DEBUG output holds
    # signed requests (README, "Secrets").
    library_level = max(numeric_level, logging.WARNING)
    for name in ISOLATED_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(library_level)
        logger.propagate = False
    # Anything else (other libraries) goes through the root logger, in esm's format until a
    # handler reconfigures it.
    logging.basicConfig(level=library_level, handlers=[handler], force=True)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


class Metrics:
    """The daemon's metrics, registered on one registry (one per daemon, so tests can run
    several daemons in one process without colliding)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        m = ["mapping"]
        self.polled = Counter(
            "esm_polled_events", "Records read from the event source.", m, registry=r
        )
        self.filtered_out = Counter(
            "esm_filtered_out_events", "Records that matched no filter pattern.", m, registry=r
        )
        self.invoked = Counter(
            "esm_invoked_events", "Records sent to the function (each attempt).", m, registry=r
        )
        self.failed_invoke = Counter(
            "esm_failed_invoke_events", "Records in invocations that failed.", m, registry=r
        )
        self.deleted = Counter(
            "esm_deleted_events", "SQS messages deleted after success or filtering.", m, registry=r
        )
        self.dropped = Counter(
            "esm_dropped_events",
            "Stream records given up with no on-failure destination.",
            m,
            registry=r,
        )
        self.on_failure_delivered = Counter(
            "esm_on_failure_destination_delivered_events",
            "Records whose given-up batch reached the on-failure destination.",
            m,
            registry=r,
        )
        self.destination_delivery_failures = Counter(
            "esm_destination_delivery_failures",
            "Attempts to deliver an on-failure record that failed (retried).",
            m,
            registry=r,
        )
        self.batch_size = Histogram(
            "esm_batch_size_records",
            "Records per invocation.",
            m,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "esm_in_flight_batches", "Batches being processed now.", m, registry=r
        )
        self.pollers = Gauge("esm_pollers", "Receivers or shard pollers running.", m, registry=r)
        self.ready = Gauge(
            "esm_mapping_ready", "1 when the mapping is polling its source, else 0.", m, registry=r
        )
        self.iterator_age = Gauge(
            "esm_iterator_age_seconds",
            "Age of the last record read from a shard (AWS IteratorAge).",
            ["mapping", "shard"],
            registry=r,
        )
        self.caught_up_shards = Gauge(
            "esm_caught_up_shards",
            "Shards of every mapping whose last read was empty (they share the opt-in idle read"
            " budget when one is set).",
            registry=r,
        )
        self.idle_read_interval = Gauge(
            "esm_idle_shard_read_interval_seconds",
            "Longest pause between two reads of a caught-up shard: 1 s at Lambda's pace (the"
            " default); under the opt-in idle_shard_reads_per_second budget, the shared interval"
            " with its jitter and tick alignment.",
            registry=r,
        )
        f = ["function"]
        self.invocations = Counter(
            "esm_function_invocations", "Function invocations.", f, registry=r
        )
        self.errors = Counter("esm_function_errors", "Invocations that failed.", f, registry=r)
        self.throttles = Counter(
            "esm_function_throttles", "Invocations that could not run.", f, registry=r
        )
        self.duration = Histogram(
            "esm_function_duration_seconds",
            "Time the function ran.",
            f,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.concurrent = Gauge(
            "esm_function_concurrent_executions", "Invocations running now.", f, registry=r
        )
        self.hung_threads = Gauge(
            "esm_function_hung_threads",
            "In-process handler threads still running invocations that timed out; at the"
            " limit the function is unhealthy and its invocations are throttled.",
            f,
            registry=r,
        )
        self.aws_retries = Counter(
            "esm_aws_call_retries",
            "AWS calls retried after a throttle or transient error.",
            ["operation"],
            registry=r,
        )
        self.leases_held = Gauge(
            "esm_leases_held", "Shard leases this worker holds (fleet mode).", m, registry=r
        )
        self.leases_taken = Counter(
            "esm_leases_taken",
            "Shard leases this worker took (unowned, expired or stolen).",
            m,
            registry=r,
        )
        self.leases_lost = Counter(
            "esm_leases_lost",
            "Shard leases this worker lost to another or to expiry.",
            m,
            registry=r,
        )
        self.worker_info = Gauge(
            "esm_worker_info",
            "1, labelled with this worker's lease owner id (fleet mode).",
            ["worker"],
            registry=r,
        )


class MappingMetrics:
    """One mapping's series of every per-mapping metric, bound once when the mapping is
    built and handed to its runtime, so no poller, lane or give-up path repeats
    `metrics.x.labels(name)`. Labelled by mapping (and shard), never by record."""

    def __init__(self, metrics: Metrics, mapping: str) -> None:
        self.metrics = metrics
        self.mapping = mapping
        self.polled = metrics.polled.labels(mapping)
        self.filtered_out = metrics.filtered_out.labels(mapping)
        self.invoked = metrics.invoked.labels(mapping)
        self.failed_invoke = metrics.failed_invoke.labels(mapping)
        self.deleted = metrics.deleted.labels(mapping)
        self.dropped = metrics.dropped.labels(mapping)
        self.on_failure_delivered = metrics.on_failure_delivered.labels(mapping)
        self.destination_delivery_failures = metrics.destination_delivery_failures.labels(mapping)
        self.batch_size = metrics.batch_size.labels(mapping)
        self.in_flight = metrics.in_flight.labels(mapping)
        self.pollers = metrics.pollers.labels(mapping)
        self.ready = metrics.ready.labels(mapping)
        self.leases_held = metrics.leases_held.labels(mapping)
        self.leases_taken = metrics.leases_taken.labels(mapping)
        self.leases_lost = metrics.leases_lost.labels(mapping)

    def iterator_age(self, shard_id: str) -> Gauge:
        """The shard's IteratorAge series (one per shard the mapping reads)."""
        return self.metrics.iterator_age.labels(self.mapping, shard_id)
