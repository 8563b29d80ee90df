"""The Kafka event source family: self-managed Apache Kafka and Amazon MSK.

Modules: `config` (the mapping's keys), `auth` (source_access_configurations to client
settings), `event` (Lambda's Kafka event JSON), `policy` (what happens to a batch after the
invocation), `runtime` (the consumer: per-partition lanes and offset commits).
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
