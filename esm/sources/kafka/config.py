"""A Kafka mapping's config: one `[[mappings]]` table parsed once into a frozen object.

Owns the Kafka keys (AWS's CreateEventSourceMapping parameters in snake_case) and their
ranges; must not connect to a broker or read a secret (that is `auth.py`, at start-up).
Errors name the key and the allowed values, like esm/config.py, and go to the same list.

AWS rules (Lambda developer guide: with-kafka, with-msk, kafka-esm-parameters,
kafka-starting-positions, kafka-cluster-auth, msk-cluster-auth):

- Self-managed: `self_managed_event_source.endpoints.KAFKA_BOOTSTRAP_SERVERS` (a list of
  `host:port`), `topics` with exactly one topic, and an optional
  `self_managed_kafka_event_source_config.consumer_group_id`.
- MSK: `event_source_arn` is the cluster ARN, brokers come from GetBootstrapBrokers, and
  `amazon_managed_kafka_event_source_config.consumer_group_id` is optional. esm-only:
  `msk_bootstrap_servers` names the brokers itself, for endpoints that cannot answer
  GetBootstrapBrokers (moto's kafka cannot).
- ConsumerGroupId: 1-200 characters of `[a-zA-Z0-9-/*:_+=.@-]`; AWS defaults it to the
  mapping's UUID. esm has no UUID, so it derives one from the mapping name
  (`default_consumer_group_id`): stable across restarts and identical on every worker.
- BatchSize 1-10,000 (default 100); MaximumBatchingWindowInSeconds 0-300 (default 0.5 s for
  Kafka); StartingPosition TRIM_HORIZON | LATEST | AT_TIMESTAMP (with
  StartingPositionTimestamp), used only when the group has no committed offset.
- SourceAccessConfigurations: at most one of BASIC_AUTH (SASL/PLAIN), SASL_SCRAM_256_AUTH,
  SASL_SCRAM_512_AUTH, CLIENT_CERTIFICATE_TLS_AUTH, plus optionally
  SERVER_ROOT_CA_CERTIFICATE (self-managed only; MSK takes SASL_SCRAM_512_AUTH and
  CLIENT_CERTIFICATE_TLS_AUTH). The uri is a Secrets Manager secret ARN; esm also takes
  `file:/path` and `env:NAME` holding the same JSON.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from esm.config_table import Table, parse_filter_criteria, quoted_key
from esm.sources.base import MappingConfig, MappingContext

DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 10_000
DEFAULT_BATCHING_WINDOW_S = 0.5
MAX_BATCHING_WINDOW_S = 300
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
SASL_TYPES = ("BASIC_AUTH", "SASL_SCRAM_256_AUTH", "SASL_SCRAM_512_AUTH")
AUTH_TYPES = (*SASL_TYPES, "CLIENT_CERTIFICATE_TLS_AUTH")
SELF_MANAGED_ACCESS_TYPES = (*AUTH_TYPES, "SERVER_ROOT_CA_CERTIFICATE")
MSK_ACCESS_TYPES = ("SASL_SCRAM_512_AUTH", "CLIENT_CERTIFICATE_TLS_AUTH")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
CONSUMER_GROUP_ID = re.compile(r"[a-zA-Z0-9\-/*:_+=.@]{1,200}")
_MSK_CLUSTER_ARN = re.compile(r"arn:aws[a-z-]*:kafka:[a-z0-9-]+:\d{12}:cluster/[^/\s]+(/\S+)?")
"""AWS's `cluster/NAME/UUID-N`, and moto's `cluster/UUID` (its ARNs leave the name out)."""
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_BROKER = re.compile(r"[^\s:,]+:\d{1,5}")
_GROUP_NAMESPACE = uuid.UUID("6f1d3b2a-8c0e-5a7b-9d4e-2f6a1c3e5b70")
"""Fixed namespace of the derived consumer group ids: changing it would move every default
group to a new one and re-read the topics from `starting_position`."""

KAFKA_KEYS = frozenset(
    {
        "self_managed_event_source",
        "self_managed_kafka_event_source_config",
        "amazon_managed_kafka_event_source_config",
        "topics",
        "source_access_configurations",
        "msk_bootstrap_servers",
        "kafka_security_protocol",
    }
)

SecretKind = Literal["secretsmanager", "file", "env"]


@dataclass(frozen=True)
class SecretRef:
    """Where a credential's JSON lives; the value itself is read at start-up, never here."""

    kind: SecretKind
    location: str
    """The secret ARN, the file path or the environment variable's name."""

    def __str__(self) -> str:  # what logs and errors show: the location, never the value
        return f"{self.kind}:{self.location}"


@dataclass(frozen=True)
class AccessConfig:
    type: str
    uri: SecretRef


@dataclass(frozen=True, kw_only=True)
class KafkaMappingConfig(MappingConfig):
    """A Kafka mapping: the common keys (esm.sources.base) with Kafka's defaults (BatchSize
    100, a 0.5 s batching window), plus the topic, group, brokers, auth and retry keys."""

    batch_size: int = DEFAULT_BATCH_SIZE
    maximum_batching_window_in_seconds: float = DEFAULT_BATCHING_WINDOW_S
    topic: str
    consumer_group_id: str
    bootstrap_servers: tuple[str, ...]
    """Empty for MSK without `msk_bootstrap_servers`: ask GetBootstrapBrokers."""
    cluster_arn: str | None = None
    """The MSK cluster; None for self-managed Kafka."""
    starting_position: str = "TRIM_HORIZON"
    starting_position_timestamp: datetime | None = None
    access: tuple[AccessConfig, ...] = ()
    security_protocol: str | None = None
    """esm-only override; None means what AWS uses for the configured auth (see auth.py)."""
    maximum_retry_attempts: int = -1
    """As configured; `items.retry_rules` applies AWS's cap of 10 with a destination."""
    maximum_record_age_in_seconds: int = -1
    bisect_batch_on_function_error: bool = False
    on_failure_destination: str | None = None
    """An SQS queue, SNS topic or S3 bucket ARN, or `kafka://TOPIC`
    (`destination_config.on_failure`)."""

    @property
    def family(self) -> str:
        """The registry name (esm/sources/registry.py), for self-managed Kafka and MSK."""
        return "kafka"

    @property
    def is_msk(self) -> bool:
        return self.cluster_arn is not None

    @property
    def event_source(self) -> str:
        """The event's `eventSource`: `aws:kafka` for MSK, `SelfManagedKafka` otherwise."""
        return "aws:kafka" if self.is_msk else "SelfManagedKafka"

    def access_of(self, types: Collection[str]) -> AccessConfig | None:
        return next((a for a in self.access if a.type in types), None)


def default_consumer_group_id(mapping_name: str) -> str:
    """The UUID AWS would give the mapping, derived from its name (uuid5) so every worker
    and every restart of the same mapping joins the same consumer group."""
    return str(uuid.uuid5(_GROUP_NAMESPACE, mapping_name))


_SHARED_ENDPOINT_KEYS = frozenset({"self_managed_event_source", "source_access_configurations"})
"""Keys Lambda's other broker sources (Amazon MQ, self-managed RabbitMQ / ActiveMQ) have too:
they make a table Kafka's only with KAFKA_BOOTSTRAP_SERVERS among the endpoints."""


def is_kafka_mapping(raw: Any) -> bool:
    """True for a `[[mappings]]` table of the Kafka family (self-managed or an MSK ARN): the
    registry's `recognises` hook, asked before any ARN is parsed."""
    if not isinstance(raw, Mapping):
        return False
    arn = raw.get("event_source_arn")
    if isinstance(arn, str) and arn.split(":")[2:3] == ["kafka"]:
        return True
    if any(key in raw for key in KAFKA_KEYS - _SHARED_ENDPOINT_KEYS):
        return True
    source = raw.get("self_managed_event_source")
    endpoints = source.get("endpoints") if isinstance(source, Mapping) else None
    return isinstance(endpoints, Mapping) and "KAFKA_BOOTSTRAP_SERVERS" in endpoints


def parse_kafka(t: Table, ctx: MappingContext) -> KafkaMappingConfig | None:
    """The registry's parser hook (esm/sources/registry.py): a Kafka table is recognised by
    its own keys or an MSK ARN, so the context carries no parsed source."""
    return parse_kafka_mapping(ctx.index, t, ctx.functions)


def parse_kafka_mapping(
    index: int, t: Table, functions: Collection[str]
) -> KafkaMappingConfig | None:
    """Validate one Kafka mapping table; problems go to `t`'s list, None when it is invalid."""
    before = len(t.problems)
    name = t.string("name", f"mapping-{index}")
    function = t.string("function", "", required=True)
    if function and function not in functions:
        known = ", ".join(quoted_key(f) for f in sorted(functions)) or "none defined"
        t.problem("function", f"{function!r} is not a [functions.*] entry (known: {known})")
    cluster_arn = _cluster_arn(t)
    servers = _bootstrap_servers(t, msk=cluster_arn is not None)
    topic = _topic(t)
    group = _consumer_group_id(t, msk=cluster_arn is not None) or default_consumer_group_id(name)
    position = t.choice("starting_position", STARTING_POSITIONS, "", required=True)
    timestamp = t.optional_timestamp("starting_position_timestamp")
    if position == "AT_TIMESTAMP" and timestamp is None:
        t.problem(
            "starting_position_timestamp", "is required when starting_position is AT_TIMESTAMP"
        )
    if timestamp is not None and position != "AT_TIMESTAMP":
        t.problem(
            "starting_position_timestamp", "is only allowed with starting_position AT_TIMESTAMP"
        )
    access = _access_configurations(t, msk=cluster_arn is not None)
    protocol = t.choice("kafka_security_protocol", SECURITY_PROTOCOLS, "") or None
    config = KafkaMappingConfig(
        name=name,
        function=function,
        topic=topic,
        consumer_group_id=group,
        bootstrap_servers=servers,
        cluster_arn=cluster_arn,
        enabled=t.boolean("enabled", True),
        batch_size=t.integer("batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE, what="Kafka"),
        maximum_batching_window_in_seconds=t.number(
            "maximum_batching_window_in_seconds",
            DEFAULT_BATCHING_WINDOW_S,
            0,
            MAX_BATCHING_WINDOW_S,
        ),
        starting_position=position or "TRIM_HORIZON",
        starting_position_timestamp=timestamp,
        access=access,
        security_protocol=protocol,
        filter_patterns=parse_filter_criteria(t),
        function_response_types=frozenset(
            t.string_list("function_response_types", ("ReportBatchItemFailures",))
        ),
        maximum_retry_attempts=t.integer("maximum_retry_attempts", -1, -1, 10_000),
        maximum_record_age_in_seconds=_record_age(t),
        bisect_batch_on_function_error=t.boolean("bisect_batch_on_function_error", False),
        on_failure_destination=_on_failure_destination(t),
    )
    _reject_unbuilt(t)
    t.finish()
    return config if len(t.problems) == before else None


def _cluster_arn(t: Table) -> str | None:
    arn = t.optional_string("event_source_arn")
    if arn is None:
        return None
    if not _MSK_CLUSTER_ARN.fullmatch(arn):
        t.problem(
            "event_source_arn",
            f"{arn!r} is not an MSK cluster ARN (arn:aws:kafka:REGION:ACCOUNT:cluster/NAME/UUID); "
            "for self-managed Kafka leave it out and set self_managed_event_source",
        )
        return None
    if "self_managed_event_source" in t.raw:
        t.consume("self_managed_event_source")
        t.problem(
            "self_managed_event_source",
            "is for self-managed Kafka, not with an MSK event_source_arn",
        )
    return arn


def _bootstrap_servers(t: Table, msk: bool) -> tuple[str, ...]:
    if msk:
        return _server_list(t, "msk_bootstrap_servers", required=False)
    if "msk_bootstrap_servers" in t.raw:
        t.consume("msk_bootstrap_servers")
        t.problem("msk_bootstrap_servers", "applies to MSK only; use self_managed_event_source")
    source = t.table("self_managed_event_source")
    endpoints = source.table("endpoints")
    if "self_managed_event_source" not in t.raw:
        t.problem(
            "self_managed_event_source",
            "is required for self-managed Kafka "
            '(endpoints = { KAFKA_BOOTSTRAP_SERVERS = ["host:9092"] }), '
            "or set event_source_arn to an MSK cluster ARN",
        )
        return ()
    servers = _server_list(endpoints, "KAFKA_BOOTSTRAP_SERVERS", required=True)
    endpoints.finish()
    source.finish()
    return servers


def _server_list(t: Table, key: str, required: bool) -> tuple[str, ...]:
    value = t.consume(key)
    if value is None:
        if required:
            t.problem(key, 'is required: a list of "host:port" brokers')
        return ()
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        t.problem(key, 'must be a non-empty list of "host:port" strings')
        return ()
    bad = [v for v in value if not _BROKER.fullmatch(v)]
    if bad:
        t.problem(key, f"{bad[0]!r} is not host:port")
        return ()
    return tuple(value)


def _topic(t: Table) -> str:
    topics = t.consume("topics")
    if topics is None:
        t.problem("topics", 'is required: a list with exactly one topic name, e.g. ["orders"]')
        return ""
    if not isinstance(topics, list) or len(topics) != 1 or not isinstance(topics[0], str):
        t.problem(
            "topics", "must be a list with exactly one topic name (AWS allows one per mapping)"
        )
        return ""
    if not _TOPIC.fullmatch(topics[0]):
        t.problem("topics", f"{topics[0]!r} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)")
        return ""
    return topics[0]


def _consumer_group_id(t: Table, msk: bool) -> str | None:
    right = "amazon_managed" if msk else "self_managed"
    wrong = "self_managed" if msk else "amazon_managed"
    key = f"{right}_kafka_event_source_config"
    if f"{wrong}_kafka_event_source_config" in t.raw:
        t.consume(f"{wrong}_kafka_event_source_config")
        kind = "an MSK" if msk else "a self-managed Kafka"
        t.problem(
            f"{wrong}_kafka_event_source_config", f"does not apply to {kind} mapping; use {key}"
        )
    section = t.table(key)
    group = section.optional_string("consumer_group_id")
    section.finish()
    if group is not None and not CONSUMER_GROUP_ID.fullmatch(group):
        section.problem(
            "consumer_group_id",
            f"{group!r} must be 1-200 characters of a-z A-Z 0-9 - / * : _ + = . @",
        )
        return None
    return group


def _access_configurations(t: Table, msk: bool) -> tuple[AccessConfig, ...]:
    allowed = MSK_ACCESS_TYPES if msk else SELF_MANAGED_ACCESS_TYPES
    result: list[AccessConfig] = []
    for entry in t.array_of_tables("source_access_configurations"):
        kind = entry.choice("type", allowed, "", required=True)
        uri = entry.string("uri", "", required=True)
        entry.finish()
        ref = _secret_ref(entry, uri) if uri else None
        if kind and ref is not None:
            result.append(AccessConfig(kind, ref))
    auth = [a.type for a in result if a.type in AUTH_TYPES]
    if len(auth) > 1:
        t.problem(
            "source_access_configurations",
            f"has {len(auth)} authentication methods ({', '.join(auth)}); use at most one",
        )
    if len({a.type for a in result}) != len(result):
        t.problem("source_access_configurations", "names the same type twice")
    return tuple(result)


def _secret_ref(t: Table, uri: str) -> SecretRef | None:
    if uri.startswith("arn:") and uri.split(":")[2:3] == ["secretsmanager"]:
        return SecretRef("secretsmanager", uri)
    if uri.startswith("file:") and len(uri) > len("file:"):
        return SecretRef("file", uri.removeprefix("file://").removeprefix("file:"))
    if uri.startswith("env:") and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", uri[4:]):
        return SecretRef("env", uri[4:])
    t.problem(
        "uri",
        f"{uri!r} must be a Secrets Manager secret ARN (arn:aws:secretsmanager:...), "
        "file:/path/to/secret.json or env:VARIABLE",
    )
    return None


def _record_age(t: Table) -> int:
    """AWS: -1 (infinite, the default) or 60..604,800 seconds (kafka-retry-configurations)."""
    age = t.integer("maximum_record_age_in_seconds", -1, -1, 604_800)
    if 0 <= age < 60:
        t.problem(
            "maximum_record_age_in_seconds",
            f"{age} is not allowed: use -1 (infinite) or 60..604800",
        )
    return age


_DESTINATION_SERVICES = ("sqs", "sns", "s3")
KAFKA_DESTINATION_PREFIX = "kafka://"
"""A Kafka topic on the source cluster as on-failure destination (kafka-on-failure-destination)."""
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def _on_failure_destination(t: Table) -> str | None:
    """`destination_config = { on_failure = { destination = ARN } }`: SQS, SNS or S3."""
    if "destination_config" not in t.raw:
        return None
    destination = t.table("destination_config")
    on_failure = destination.table("on_failure")
    arn = on_failure.optional_string("destination")
    on_failure.finish()
    destination.finish()
    if arn is None:
        return None
    if arn.startswith(KAFKA_DESTINATION_PREFIX):
        topic = arn.removeprefix(KAFKA_DESTINATION_PREFIX)
        if not _TOPIC_NAME.fullmatch(topic):
            on_failure.problem(
                "destination",
                f"{arn!r}: kafka://<topic> needs a topic name of 1-249 of a-zA-Z0-9._-",
            )
            return None
        if topic in t.raw.get("topics", ()):
            on_failure.problem(
                "destination",
                f"{arn!r} is the mapping's own topic: Lambda refuses it (it would loop)",
            )
            return None
        return arn
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] not in _DESTINATION_SERVICES:
        on_failure.problem(
            "destination", f"{arn!r} is not an SQS queue, SNS topic or S3 bucket ARN"
        )
        return None
    return arn


_UNBUILT = {
    "parallelization_factor": "applies to Kinesis and DynamoDB streams only",
    "tumbling_window_in_seconds": "applies to Kinesis and DynamoDB streams only",
    "scaling_config": "applies to SQS only",
}


def _reject_unbuilt(t: Table) -> None:
    for key, reason in _UNBUILT.items():
        if key in t.raw:
            t.consume(key)
            t.problem(key, reason)
