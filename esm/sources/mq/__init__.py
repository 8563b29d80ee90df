"""Broker queues as event sources: RabbitMQ and ActiveMQ, as Lambda's Amazon MQ mappings
read them (Lambda guide "Using Lambda with Amazon MQ").

The family's stages are files: `config` (the typed mapping, parsed once; imported by the
registry), `resolve` (the broker's engine, endpoints and login; the only AWS calls),
`events` (the exact event JSON, pure), `runtime` (batch, filter, invoke, acknowledge;
imported only when a mapping runs), `status` (`esm status` rows) and one session per engine
(`rabbitmq` over AMQP 0-9-1, `activemq` over STOMP). The daemon reaches the family through
its entry in esm/sources/registry.py (README, "Amazon MQ").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from esm.sources.mq.config import MqMappingConfig, is_mq_mapping, parse_mq_mapping

if TYPE_CHECKING:
    from esm.sources.mq.runtime import MqMapping

__all__ = ["MqMapping", "MqMappingConfig", "is_mq_mapping", "parse_mq_mapping"]


def __getattr__(name: str) -> Any:
    """The runtime on first use only: esm.sources.mq.runtime imports esm.invokers, which
    imports esm.config, which imports this package's config through the registry."""
    if name == "MqMapping":
        from esm.sources.mq.runtime import MqMapping

        return MqMapping
    raise AttributeError(name)
