"""The broker-queue family's own metrics, beside the shared ones in esm/observability.py.

Registered once per registry (several mappings share them, labelled by mapping). They stay
in the family's package, as the registry allows: only broker-queue mappings count
acknowledgements, requeues and broker dead-lettering.
"""

from __future__ import annotations

from weakref import WeakKeyDictionary

from prometheus_client import CollectorRegistry, Counter, Gauge

_BY_REGISTRY: WeakKeyDictionary[CollectorRegistry, MqMetrics] = WeakKeyDictionary()


class MqMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        m = ["mapping"]
        r = registry
        self.acknowledged = Counter(
            "esm_acknowledged_events",
            "Broker messages acknowledged after success, filtering or a size drop.",
            m,
            registry=r,
        )
        self.requeued = Counter(
            "esm_requeued_events",
            "Broker messages handed back for redelivery after a failed invocation.",
            m,
            registry=r,
        )
        self.dead_lettered = Counter(
            "esm_dead_lettered_events",
            "ActiveMQ messages sent to the broker's DLQ after maximumRedeliveries.",
            m,
            registry=r,
        )
        self.oversize_dropped = Counter(
            "esm_oversize_dropped_events",
            "Broker messages dropped because they exceed the 6 MB invocation payload.",
            m,
            registry=r,
        )
        self.queue_depth = Gauge(
            "esm_queue_depth_messages",
            "Messages ready in the mapping's queue, as the broker last reported.",
            m,
            registry=r,
        )


def mq_metrics(registry: CollectorRegistry) -> MqMetrics:
    """The family's metrics on this registry, created on first use."""
    found = _BY_REGISTRY.get(registry)
    if found is None:
        found = _BY_REGISTRY[registry] = MqMetrics(registry)
    return found
