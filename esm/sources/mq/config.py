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

from esm.errors import ConfigError
from esm.filtering import MAX_FILTERS, MAX_PATTERN_CHARS, validate_pattern

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
MAPPING_KEYS: Final = frozenset(
    {
        "name",
        "function",
        "enabled",
        "event_source_arn",
        "self_managed_event_source",
        "queues",
        "source_access_configurations",
        "batch_size",
        "maximum_batching_window_in_seconds",
        "scaling_config",
        "filter_criteria",
    }
)


@dataclass(frozen=True)
class Credentials:
    """Where BASIC_AUTH's username and password live: a Secrets Manager secret ARN (as AWS
    reads it), `file:PATH` (a JSON file of the same shape) or `env:PREFIX` (variables
    PREFIX_USERNAME and PREFIX_PASSWORD). Never the values themselves."""

    kind: Literal["secret", "file", "env"]
    location: str


@dataclass(frozen=True)
class MqMappingConfig:
    name: str
    function: str
    queue: str
    engine: Engine | None
    """None for a broker ARN until DescribeBroker tells its EngineType."""
    broker_arn: str | None = None
    broker_urls: tuple[str, ...] = ()
    credentials: Credentials | None = None
    virtual_host: str | None = None
    enabled: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    maximum_batching_window_in_seconds: float = DEFAULT_BATCHING_WINDOW
    maximum_concurrency: int | None = None
    """`scaling_config.maximum_concurrency`, esm-only for Amazon MQ: batches in flight at
    once; None means Lambda's fixed limit for the engine."""
    filter_patterns: tuple[str, ...] = ()

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
    """The hook config.py needs: a `[[mappings]]` table is a broker-queue mapping when its ARN
    is an Amazon MQ broker or its self-managed endpoints name broker URLs."""
    arn = raw.get("event_source_arn")
    if isinstance(arn, str) and arn.startswith("arn:") and arn.split(":")[2:3] == ["mq"]:
        return True
    endpoints = _endpoints_table(raw.get("self_managed_event_source"))
    return any(key in URL_KEYS for key in endpoints)


def parse_mq_mapping(
    raw: Mapping[str, Any], path: str, functions: Collection[str], index: int = 0
) -> MqMappingConfig:
    """Validate one `[[mappings]]` table; raise ConfigError listing every problem."""
    p = _Problems(path)
    for key in raw:
        if key not in MAPPING_KEYS:
            p.add(key, "unknown key for an Amazon MQ mapping")
    name = _string(p, raw, "name") or f"mapping-{index}"
    function = _string(p, raw, "function", required=True)
    if function and function not in functions:
        p.add("function", f"{function!r} is not a [functions.*] entry")
    engine, arn, urls = _source(p, raw)
    queue = _queue(p, raw)
    credentials, vhost = _access(p, raw, engine)
    mapping = MqMappingConfig(
        name=name,
        function=function,
        queue=queue,
        engine=engine,
        broker_arn=arn,
        broker_urls=urls,
        credentials=credentials,
        virtual_host=vhost,
        enabled=_boolean(p, raw, "enabled", True),
        batch_size=int(_number(p, raw, "batch_size", DEFAULT_BATCH_SIZE, 1, MAX_BATCH_SIZE, True)),
        maximum_batching_window_in_seconds=_number(
            p,
            raw,
            "maximum_batching_window_in_seconds",
            DEFAULT_BATCHING_WINDOW,
            0,
            MAX_BATCHING_WINDOW,
        ),
        maximum_concurrency=_concurrency(p, raw),
        filter_patterns=_filters(p, raw),
    )
    if p.problems:
        raise ConfigError(p.problems)
    return mapping


class _Problems:
    def __init__(self, path: str) -> None:
        self.path = path
        self.problems: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path}.{key}: {message}" if self.path else f"{key}: {message}")


def _string(p: _Problems, raw: Mapping[str, Any], key: str, required: bool = False) -> str:
    value = raw.get(key)
    if value is None:
        if required:
            p.add(key, "is required")
        return ""
    if not isinstance(value, str):
        p.add(key, f"must be a string, not {value!r}")
        return ""
    return value


def _boolean(p: _Problems, raw: Mapping[str, Any], key: str, default: bool) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        p.add(key, f"must be true or false, not {value!r}")
        return default
    return value


def _number(
    p: _Problems,
    raw: Mapping[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    integer: bool = False,
) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        p.add(key, f"must be {'an integer' if integer else 'a number'} from {low:g} to {high:g}")
        return default
    if not low <= value <= high:
        p.add(key, f"{value} is outside the allowed range {low:g} to {high:g}")
        return default
    return float(value)


def _optional_int(
    p: _Problems, raw: Mapping[str, Any], key: str, low: int, high: int
) -> int | None:
    if raw.get(key) is None:
        return None
    return int(_number(p, raw, key, low, low, high, integer=True))


def _concurrency(p: _Problems, raw: Mapping[str, Any]) -> int | None:
    """`scaling_config.maximum_concurrency`, the key SQS mappings use (esm-only here)."""
    scaling = raw.get("scaling_config")
    if scaling is None:
        return None
    if not isinstance(scaling, Mapping) or set(scaling) - {"maximum_concurrency"}:
        p.add("scaling_config", "must be { maximum_concurrency = N }")
        return None
    inner = _Problems(f"{p.path}.scaling_config" if p.path else "scaling_config")
    value = _optional_int(inner, scaling, "maximum_concurrency", 1, MAX_CONCURRENCY)
    p.problems.extend(inner.problems)
    return value


def _endpoints_table(value: Any) -> Mapping[str, Any]:
    if isinstance(value, Mapping) and isinstance(value.get("endpoints"), Mapping):
        endpoints: Mapping[str, Any] = value["endpoints"]
        return endpoints
    return {}


def _source(
    p: _Problems, raw: Mapping[str, Any]
) -> tuple[Engine | None, str | None, tuple[str, ...]]:
    arn = raw.get("event_source_arn")
    managed = raw.get("self_managed_event_source")
    if (arn is None) == (managed is None):
        p.add(
            "event_source_arn",
            "set exactly one of event_source_arn (an Amazon MQ broker ARN) and "
            "self_managed_event_source",
        )
        return None, None, ()
    if arn is not None:
        if not isinstance(arn, str) or not BROKER_ARN.match(arn):
            p.add(
                "event_source_arn",
                f"{arn!r} is not an Amazon MQ broker ARN "
                "(arn:aws:mq:REGION:ACCOUNT:broker:NAME:ID)",
            )
        return None, arn if isinstance(arn, str) else None, ()
    return _self_managed(p, managed)


def _self_managed(p: _Problems, managed: Any) -> tuple[Engine | None, None, tuple[str, ...]]:
    key = "self_managed_event_source.endpoints"
    endpoints = _endpoints_table(managed)
    if not isinstance(managed, Mapping) or set(managed) != {"endpoints"} or len(endpoints) != 1:
        p.add(key, "must hold exactly one of RABBITMQ_BROKER_URLS or ACTIVEMQ_BROKER_URLS")
        return None, None, ()
    ((name, urls),) = endpoints.items()
    engine = URL_KEYS.get(name)
    if engine is None:
        p.add(f"{key}.{name}", "unknown; use RABBITMQ_BROKER_URLS or ACTIVEMQ_BROKER_URLS")
        return None, None, ()
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        p.add(f"{key}.{name}", "must be a non-empty list of broker URLs")
        return engine, None, ()
    schemes = URL_SCHEMES[engine]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in schemes or not parts.hostname:
            p.add(f"{key}.{name}", f"{url!r} is not a {' or '.join(schemes)}://HOST:PORT URL")
        elif parts.username or parts.password:
            p.add(
                f"{key}.{name}",
                "must not hold credentials; use source_access_configurations BASIC_AUTH",
            )
    return engine, None, tuple(urls)


def _queue(p: _Problems, raw: Mapping[str, Any]) -> str:
    queues = raw.get("queues")
    if (
        not isinstance(queues, list)
        or len(queues) != 1
        or not isinstance(queues[0], str)
        or not 1 <= len(queues[0]) <= 1000
    ):
        p.add("queues", "must be a list of exactly one queue name (1 to 1000 characters)")
        return ""
    return queues[0]


def _access(
    p: _Problems, raw: Mapping[str, Any], engine: Engine | None
) -> tuple[Credentials | None, str | None]:
    key = "source_access_configurations"
    entries = raw.get(key, [])
    if not isinstance(entries, list):
        p.add(key, "must be a list of { type, uri } tables")
        return None, None
    found: dict[str, str] = {}
    for i, entry in enumerate(entries):
        kind = entry.get("type") if isinstance(entry, Mapping) else None
        uri = entry.get("uri") if isinstance(entry, Mapping) else None
        if kind not in ACCESS_TYPES or not isinstance(uri, str) or not uri:
            p.add(f"{key}[{i}]", f'must be {{ type = {" or ".join(ACCESS_TYPES)}, uri = "..." }}')
        elif kind in found:
            p.add(f"{key}[{i}]", f"{kind} appears more than once")
        else:
            found[str(kind)] = uri
    vhost = found.get("VIRTUAL_HOST")
    if vhost is not None and engine == "activemq":
        p.add(key, "VIRTUAL_HOST applies to RabbitMQ brokers only")
    credentials = _credentials(p, key, found["BASIC_AUTH"]) if "BASIC_AUTH" in found else None
    return credentials, vhost


def _credentials(p: _Problems, key: str, uri: str) -> Credentials | None:
    if SECRET_ARN.match(uri):
        return Credentials("secret", uri)
    if uri.startswith("file:") and len(uri) > 5:
        return Credentials("file", uri[5:])
    if re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", uri):
        return Credentials("env", uri[4:])
    p.add(
        key,
        f"BASIC_AUTH uri {uri!r} must be a Secrets Manager secret ARN, file:PATH or env:PREFIX",
    )
    return None


def _filters(p: _Problems, raw: Mapping[str, Any]) -> tuple[str, ...]:
    criteria = raw.get("filter_criteria")
    if criteria is None:
        return ()
    filters = criteria.get("filters") if isinstance(criteria, Mapping) else None
    if not isinstance(filters, list):
        p.add("filter_criteria", 'must be { filters = [ { pattern = "..." } ] }')
        return ()
    if len(filters) > MAX_FILTERS:
        p.add("filter_criteria.filters", f"has {len(filters)}; at most {MAX_FILTERS} are allowed")
    patterns: list[str] = []
    for i, entry in enumerate(filters):
        pattern = entry.get("pattern") if isinstance(entry, Mapping) else None
        where = f"filter_criteria.filters[{i}].pattern"
        if not isinstance(pattern, str) or not pattern:
            p.add(where, "is required (a JSON filter pattern)")
        elif len(pattern) > MAX_PATTERN_CHARS:
            p.add(where, f"is {len(pattern)} characters; at most {MAX_PATTERN_CHARS}")
        elif (problem := validate_pattern(pattern)) is not None:
            p.add(where, problem)
        else:
            patterns.append(pattern)
    return tuple(patterns)
