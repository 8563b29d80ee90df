"""The typed config of a broker-queue mapping (Lambda's Amazon MQ event source mappings).

Parsed once from a `[[mappings]]` table into a frozen `MqMappingConfig`; every problem names
its key and the allowed values, as esm/config.py reports them. Must not do I/O: a broker ARN's
endpoints and a secret's value are resolved when the mapping starts (esm.sources.mq.resolve).

AWS rules (CreateEventSourceMapping; Lambda guide "Using Lambda with Amazon MQ" and its
"parameters" page): exactly one queue in `Queues`; `BatchSize` 1-10,000, default 100;
`MaximumBatchingWindowInSeconds` 0-300, default 500 ms; `SourceAccessConfigurations` with
one BASIC_AUTH (a Secrets Manager secret holding `username` and `password`) and, for
RabbitMQ, one VIRTUAL_HOST. Lambda reads Amazon MQ brokers by ARN only; esm also reads a
broker that is not on AWS through `self_managed_event_source`, in the shape Lambda uses for
self-managed Kafka, with `RABBITMQ_BROKER_URLS` or `ACTIVEMQ_BROKER_URLS` (esm's keys).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from esm.config_table import UNRESOLVED_PREFIX, Table, parse_filter_criteria, quoted_key
from esm.errors import ConfigError
from esm.filtering import kinesis_filter_view
from esm.sources.base import MappingConfig, MappingContext

Engine = Literal["rabbitmq", "activemq"]

DEFAULT_BATCH_SIZE: Final = 100
MAX_BATCH_SIZE: Final = 10_000
DEFAULT_BATCHING_WINDOW: Final = 0.5
MAX_BATCHING_WINDOW: Final = 300
AWS_CONCURRENCY: Final[Mapping[Engine, int]] = {"rabbitmq": 1, "activemq": 5}
"""Lambda's fixed limit of concurrent batches per Amazon MQ mapping (with-mq, Concurrency)."""
MAX_CONCURRENCY: Final = 1000
URL_KEYS: Final[Mapping[str, Engine]] = {
    "RABBITMQ_BROKER_URLS": "rabbitmq",
    "ACTIVEMQ_BROKER_URLS": "activemq",
}
URL_SCHEMES: Final[Mapping[Engine, tuple[str, ...]]] = {
    "rabbitmq": ("amqp", "amqps"),
    "activemq": ("stomp", "stomp+ssl"),
}
BROKER_ARN: Final = re.compile(
    r"^arn:aws[a-z-]*:mq:([a-z0-9-]+):(\d{12}):broker:(?:[^:]+:)?([^:]+)$"
)
"""AWS's `broker:NAME:ID`; moto's `broker:ID` is accepted too. The last part is the id."""
ACCESS_TYPES: Final = ("BASIC_AUTH", "VIRTUAL_HOST")
SECRET_ARN: Final = re.compile(r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:.+$")


@dataclass(frozen=True)
class Credentials:
    """Where BASIC_AUTH's username and password live: a Secrets Manager secret ARN (as AWS
    reads it), `file:PATH` (a JSON file of the same shape) or `env:PREFIX` (variables
    PREFIX_USERNAME and PREFIX_PASSWORD). Never the values themselves."""

    kind: Literal["secret", "file", "env"]
    location: str


@dataclass(frozen=True, kw_only=True)
class MqMappingConfig(MappingConfig):
    queue: str
    engine: Engine | None
    """None for a broker ARN until DescribeBroker tells its EngineType."""
    broker_arn: str | None = None
    broker_urls: tuple[str, ...] = ()
    credentials: Credentials | None = None
    virtual_host: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    maximum_batching_window_in_seconds: float = DEFAULT_BATCHING_WINDOW
    maximum_concurrency: int | None = None
    """`scaling_config.maximum_concurrency`, esm-only for Amazon MQ: batches in flight at
    once; None means Lambda's fixed limit for the engine."""

    @property
    def family(self) -> str:
        return "mq"

    @property
    def region(self) -> str | None:
        match = BROKER_ARN.match(self.broker_arn or "")
        return match.group(1) if match else None

    @property
    def event_source_arn(self) -> str:
        """The broker ARN, or for a self-managed broker a local one naming the mapping (as
        esm's local function ARNs do), so events keep the field every consumer reads."""
        return self.broker_arn or f"arn:aws:mq:local:000000000000:broker:{self.name}:self-managed"

    def concurrency(self, engine: Engine) -> int:
        return self.maximum_concurrency or AWS_CONCURRENCY[engine]


def is_mq_mapping(raw: Mapping[str, Any]) -> bool:
    """The registry's `recognises`: a `[[mappings]]` table is a broker-queue mapping when its
    ARN is an Amazon MQ broker, its self-managed endpoints name broker URLs, or it sets
    `queues` (an Amazon MQ-only key) without an ARN of another service (absent, or a
    placeholder `esm import` left for an unresolved broker ARN)."""
    arn = raw.get("event_source_arn")
    if isinstance(arn, str) and arn.startswith("arn:"):
        return arn.split(":")[2:3] == ["mq"]
    endpoints = raw.get("self_managed_event_source")
    endpoints = endpoints.get("endpoints") if isinstance(endpoints, Mapping) else None
    if isinstance(endpoints, Mapping) and any(key in URL_KEYS for key in endpoints):
        return True
    return "queues" in raw


def mq_filter_view(record: dict[str, Any]) -> Any:
    """What FilterCriteria patterns see of a broker message: its fields with `data` decoded
    and parsed when it is JSON, the rule Lambda applies to Kinesis records (with-mq,
    "Event filtering"), so the Kinesis view serves."""
    return kinesis_filter_view({"kinesis": record})


def parse_mq_mapping(t: Table, ctx: MappingContext) -> MqMappingConfig | None:
    """The registry's parser: every problem goes to the table's list under its key path;
    None when the mapping cannot run (no usable broker or queue, or any other problem)."""
    before = len(t.problems)
    name = t.string("name", f"mapping-{ctx.index}")
    function = t.string("function", "", required=True)
    if function and function not in ctx.functions:
        known = ", ".join(quoted_key(f) for f in sorted(ctx.functions)) or "none defined"
        t.problem("function", f"{function!r} is not a [functions.*] entry (known: {known})")
    engine, arn, urls = _source(t)
    queue = _queue(t)
    credentials, vhost = _access(t, engine)
    enabled = t.boolean("enabled", True)
    batch_size = t.integer("batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE, "Amazon MQ")
    window = t.number(
        "maximum_batching_window_in_seconds", DEFAULT_BATCHING_WINDOW, 0, MAX_BATCHING_WINDOW
    )
    scaling = t.table("scaling_config")
    concurrency = scaling.optional_integer("maximum_concurrency", 1, MAX_CONCURRENCY)
    scaling.finish()
    patterns = parse_filter_criteria(t)
    if "function_response_types" in t.raw:
        t.consume("function_response_types")
        t.problem(
            "function_response_types",
            "does not apply to Amazon MQ mappings (Lambda has no partial batch response for"
            " them: a failed batch is redelivered whole)",
        )
    if len(t.problems) > before or not queue or (engine is None and arn is None):
        return None
    return MqMappingConfig(
        name=name,
        function=function,
        queue=queue,
        engine=engine,
        broker_arn=arn,
        broker_urls=urls,
        credentials=credentials,
        virtual_host=vhost,
        enabled=enabled,
        batch_size=batch_size,
        maximum_batching_window_in_seconds=window,
        maximum_concurrency=concurrency,
        filter_patterns=patterns,
    )


def parse_mq_table(
    raw: Mapping[str, Any], path: str, functions: Collection[str], index: int = 0
) -> MqMappingConfig:
    """One table parsed on its own (tests, tools), unknown keys included; raises
    ConfigError listing every problem."""
    problems: list[str] = []
    t = Table(raw, path, problems)
    config = parse_mq_mapping(t, MappingContext(index, tuple(functions), None))
    t.finish()
    if problems or config is None:
        raise ConfigError(list(dict.fromkeys(problems)) or [f"{path}: not a usable mapping"])
    return config


def _source(t: Table) -> tuple[Engine | None, str | None, tuple[str, ...]]:
    has_arn = "event_source_arn" in t.raw
    if has_arn == ("self_managed_event_source" in t.raw):
        t.consume("event_source_arn")
        t.consume("self_managed_event_source")
        t.problem(
            "event_source_arn",
            "set exactly one of event_source_arn (an Amazon MQ broker ARN) and "
            "self_managed_event_source",
        )
        return None, None, ()
    if not has_arn:
        return _self_managed(t.table("self_managed_event_source"))
    arn = t.optional_string("event_source_arn")
    if arn is None:
        return None, None, ()  # a placeholder or not a string: already reported
    if not BROKER_ARN.match(arn):
        t.problem(
            "event_source_arn",
            f"{arn!r} is not an Amazon MQ broker ARN (arn:aws:mq:REGION:ACCOUNT:broker:NAME:ID)",
        )
        return None, None, ()
    return None, arn, ()


def _self_managed(managed: Table) -> tuple[Engine | None, None, tuple[str, ...]]:
    endpoints = managed.table("endpoints")
    managed.finish()
    if len(endpoints.raw) != 1:
        managed.problem(
            "endpoints", "must hold exactly one of RABBITMQ_BROKER_URLS or ACTIVEMQ_BROKER_URLS"
        )
        for key in endpoints.raw:
            endpoints.consume(key)
        return None, None, ()
    (key,) = endpoints.raw
    urls = endpoints.consume(key)
    engine = URL_KEYS.get(key)
    if engine is None:
        endpoints.problem(key, "unknown; use RABBITMQ_BROKER_URLS or ACTIVEMQ_BROKER_URLS")
        return None, None, ()
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        if urls is not None:  # None: a placeholder, already reported
            endpoints.problem(key, "must be a non-empty list of broker URLs")
        return None, None, ()
    schemes = URL_SCHEMES[engine]
    usable = True
    for url in urls:
        parts = urlsplit(url)
        if url.startswith(UNRESOLVED_PREFIX):
            usable = False  # reported by consume, under its index
        elif parts.scheme not in schemes or not parts.hostname:
            endpoints.problem(key, f"{url!r} is not a {' or '.join(schemes)}://HOST:PORT URL")
            usable = False
        elif parts.username or parts.password:
            endpoints.problem(
                key, "must not hold credentials; use source_access_configurations BASIC_AUTH"
            )
            usable = False
    return (engine, None, tuple(urls)) if usable else (None, None, ())


def _queue(t: Table) -> str:
    present = "queues" in t.raw
    queues = t.consume("queues")
    if isinstance(queues, list) and len(queues) == 1 and isinstance(queues[0], str):
        if queues[0].startswith(UNRESOLVED_PREFIX):
            return ""  # reported by consume as queues[0]
        if 1 <= len(queues[0]) <= 1000:
            return queues[0]
    if queues is not None or not present:
        t.problem("queues", "must be a list of exactly one queue name (1 to 1000 characters)")
    return ""


def _access(t: Table, engine: Engine | None) -> tuple[Credentials | None, str | None]:
    key = "source_access_configurations"
    found: dict[str, str] = {}
    for entry in t.array_of_tables(key):
        kind = entry.string("type", "", required=True)
        uri = entry.string("uri", "", required=True)
        entry.finish()
        if kind and kind not in ACCESS_TYPES:
            entry.problem("type", f"{kind!r} is not one of {', '.join(ACCESS_TYPES)}")
        elif kind in found:
            entry.problem("type", f"{kind} appears more than once")
        elif kind and uri:
            found[kind] = uri
    vhost = found.get("VIRTUAL_HOST")
    if vhost is not None and engine == "activemq":
        t.problem(key, "VIRTUAL_HOST applies to RabbitMQ brokers only")
    credentials = _credentials(t, key, found["BASIC_AUTH"]) if "BASIC_AUTH" in found else None
    return credentials, vhost


def _credentials(t: Table, key: str, uri: str) -> Credentials | None:
    if SECRET_ARN.match(uri):
        return Credentials("secret", uri)
    if uri.startswith("file:") and len(uri) > 5:
        return Credentials("file", uri[5:])
    if re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", uri):
        return Credentials("env", uri[4:])
    t.problem(
        key,
        f"BASIC_AUTH uri {uri!r} must be a Secrets Manager secret ARN, file:PATH or env:PREFIX",
    )
    return None
