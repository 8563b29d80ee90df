"""The Kafka family's own metrics, on the registry of esm's `Metrics` (one per daemon).

Owns the gauges that only Kafka has; the per-mapping counters stay in esm.observability.
Labelled by mapping and partition number: a topic's partitions are few and stable, unlike
records (AWS publishes `OffsetLag` per mapping; the per-partition series sum or max to it).

- `esm_kafka_offset_lag{mapping, partition}`: AWS's OffsetLag for one partition, the
  records written to it that the consumer group has not finished: the partition's high
  watermark (the offset after its last record, from the latest fetch) minus the next offset
  to process.
- `esm_kafka_assigned_partitions{mapping}`: partitions this worker owns in the group now.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Gauge

from esm.observability import Metrics


class KafkaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.offset_lag = Gauge(
            "esm_kafka_offset_lag",
            "Records in the partition not yet processed by the consumer group (AWS OffsetLag).",
            ["mapping", "partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "esm_kafka_assigned_partitions",
            "Partitions of the mapping's topic assigned to this worker.",
            ["mapping"],
            registry=registry,
        )


_BY_REGISTRY: WeakKeyDictionary[CollectorRegistry, KafkaMetrics] = WeakKeyDictionary()


def kafka_metrics(metrics: Metrics) -> KafkaMetrics:
    """The Kafka gauges of `metrics`' registry, created once per registry (a registry
    refuses a second metric of the same name, and mappings share the daemon's)."""
    found = _BY_REGISTRY.get(metrics.registry)
    if found is None:
        found = _BY_REGISTRY[metrics.registry] = KafkaMetrics(metrics.registry)
    return found


def offset_lag(high_watermark: int | None, next_offset: int | None) -> int | None:
    """Records not yet processed, or None when either end is unknown yet."""
    if high_watermark is None or next_offset is None:
        return None
    return max(0, high_watermark - next_offset)
