"""Broker queues as event sources: RabbitMQ and ActiveMQ, as Lambda's Amazon MQ mappings
read them (Lambda guide "Using Lambda with Amazon MQ").

The family's stages are files: `config` (the typed mapping, parsed once), `resolve` (the
broker's engine, endpoints and login; the only AWS calls), `events` (the exact event JSON,
pure), `runtime` (batch, filter, invoke, acknowledge), and one session per engine
(`rabbitmq` over AMQP 0-9-1, `activemq` over STOMP). Nothing here reads esm/config.py's
`MappingConfig`; config.py and the daemon reach the family through `is_mq_mapping`,
`parse_mq_mapping` and `MqMapping` (see the README, "Amazon MQ").

Example::

    config = parse_mq_mapping(table, "mappings[0]", functions={"fn"})
    mapping = MqMapping(config, function, aws, metrics)
    await mapping.run()   # until mapping.stop()
"""

from esm.sources.mq.config import MqMappingConfig, is_mq_mapping, parse_mq_mapping
from esm.sources.mq.runtime import MqMapping

__all__ = ["MqMapping", "MqMappingConfig", "is_mq_mapping", "parse_mq_mapping"]
