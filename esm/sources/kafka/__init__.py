"""The Kafka event source family: self-managed Apache Kafka and Amazon MSK.

Modules: `config` (the mapping's keys), `auth` (source_access_configurations to client
settings), `event` (Lambda's Kafka event JSON), `items` (what the shared ordered-source
policy `esm.sources.streams.policy` needs from a Kafka batch: rules, identifiers, positions),
`onfailure` (the on-failure record and its delivery), `metrics`, `runtime` (the consumer:
per-partition lanes and offset commits).
"""

from esm.sources.kafka.config import (
    KafkaMappingConfig,
    default_consumer_group_id,
    is_kafka_mapping,
    parse_kafka_mapping,
)

__all__ = [
    "KafkaMappingConfig",
    "default_consumer_group_id",
    "is_kafka_mapping",
    "parse_kafka_mapping",
]
