"""TOML configuration -> immutable, validated objects.

Owns every range and default of the config file; the rest of esm never sees raw TOML.
Mapping keys are AWS CreateEventSourceMapping parameter names in snake_case, so AWS's
documentation tells a user what each one does. Validation collects every problem at once,
each naming its key path and the rule (`mappings[0].batch_size: 20000 is above ...`).
"""

from __future__ import annotations

import math
import os
import re
import stat
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from esm.arns import ArnError, SourceArn, parse_source_arn
from esm.errors import ConfigError
from esm.filtering import validate_pattern
from esm.idle_pacing import DEFAULT_IDLE_SHARD_READS_PER_SECOND

SourceKind = Literal["sqs", "kinesis", "dynamodb"]
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
FUNCTION_KINDS = ("python", "process", "http", "lambda")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_BACKENDS = ("sqlite", "dynamodb")
MAX_FILTERS = 5
UNRESOLVED_PREFIX = "<unresolved:"
_BARE_KEY = re.compile(r"[A-Za-z0-9_.\[\]-]+")
"""Bare keys, plus the dots and brackets of paths esm composes (`filters[1].pattern`)."""
MAX_FILTER_PATTERN_CHARS = 4096
MAX_CONFIG_BYTES = 4 * 1024 * 1024
"""Largest config file esm reads (4 MiB: ~39,000 short mappings, which validate in ~2 s);
a larger file is refused unparsed, so a runaway file cannot stall a reload or exhaust memory."""
MAX_NESTING = 16
"""Deepest nesting of tables and arrays esm accepts; its schema needs five levels
(`mappings[0].destination_config.on_failure.destination`)."""


@dataclass(frozen=True)
class DaemonConfig:
    region: str = "us-east-1"
    endpoint_url: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 9464
    log_format: str = "json"
    log_level: str = "info"
    drain_timeout: float = 910.0
    idle_shard_reads_per_second: float = DEFAULT_IDLE_SHARD_READS_PER_SECOND
    """GetRecords calls per second shared by all caught-up shards (esm.idle_pacing)."""
    functions_use_endpoint_url: bool = True
    """Give handlers AWS_ENDPOINT_URL = endpoint_url (esm.lambda_environment)."""


@dataclass(frozen=True)
class StateConfig:
    """Where stream checkpoints live. `dynamodb` is also the lease table that lets several
    workers share shards (README "Running a fleet"); the lease timings only apply to it."""

    backend: str = "sqlite"
    path: Path = Path("esm-state.sqlite3")
    table: str | None = None
    create_table: bool = False
    lease_renewal_interval: float = 2.0
    failover_time: float = 10.0
    max_leases_taken_per_cycle: int = 2


@dataclass(frozen=True)
class FunctionConfig:
    name: str
    kind: str
    handler: str
    code_path: Path
    timeout: float = 3.0
    memory_size: int = 128
    environment: Mapping[str, str] = field(default_factory=dict)
    reserved_concurrent_executions: int | None = None
    command: tuple[str, ...] | None = None
    """kind = "process": the execution environment's command (None: esm's built-in Python
    runtime client running `handler`)."""
    url: str | None = None
    """kind = "http": where the event is POSTed."""
    headers: Mapping[str, str] = field(default_factory=dict)
    bearer_token_env: str | None = None
    """kind = "http": the environment variable holding the bearer token (never the token)."""
    verify_tls: bool = True
    function_name: str | None = None
    """kind = "lambda": function name or ARN, qualifier allowed (`name:alias`)."""
    endpoint_url: str | None = None
    """kind = "lambda": Lambda endpoint override (Runtime Interface Emulator, SAM local)."""

    @property
    def arn(self) -> str:
        return f"arn:aws:lambda:local:000000000000:function:{self.name}"


@dataclass(frozen=True)
class MappingConfig:
    name: str
    function: str
    source: SourceArn
    enabled: bool = True
    batch_size: int = 10
    maximum_batching_window_in_seconds: float = 0.0
    function_response_types: frozenset[str] = frozenset()
    maximum_concurrency: int | None = None
    filter_patterns: tuple[str, ...] = ()
    starting_position: str | None = None
    starting_position_timestamp: datetime | None = None
    parallelization_factor: int = 1
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: int = -1
    maximum_record_age_in_seconds: int = -1
    on_failure_destination: str | None = None
    tumbling_window_in_seconds: int = 0

    @property
    def event_source_arn(self) -> str:
        return self.source.arn

    @property
    def report_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    state: StateConfig
    functions: Mapping[str, FunctionConfig]
    mappings: tuple[MappingConfig, ...]


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem.

    Any file at all gives a Config or a ConfigError, never another exception: a running
    daemon reloads through here, and a file must never take it down (see README,
    "Changing mappings while running")."""
    path = Path(path)
    raw = _parse_toml(path, _read_text(path))
    try:
        return parse_config(raw, base_dir=path.parent)
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply to validate"]) from None


def _read_text(path: Path) -> str:
    """The file's text, read only when it is a regular file of at most MAX_CONFIG_BYTES (a
    FIFO or device would block or never end)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would already block
            raise ConfigError([f"{path}: not a regular file"])
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError([f"{path}: cannot read the config file ({reason})"]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            [f"{path}: larger than the maximum config file size ({MAX_CONFIG_BYTES} bytes)"]
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8"]
        ) from None


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    except ValueError as exc:  # an integer of more than 4,300 digits (int's str limit)
        reason = str(exc).split(";")[0]
        raise ConfigError([f"{path}: not valid TOML ({reason})"]) from None
    except RecursionError:
        # tomllib recurses once per nested array or inline table.
        raise ConfigError(
            [f"{path}: nested more than {MAX_NESTING} levels deep (arrays or inline tables)"]
        ) from None
    problem = _document_problem(raw)
    if problem is not None:
        raise ConfigError([problem.replace("<file>", str(path), 1)])
    return raw


_INT64 = range(-(2**63), 2**63)


def _document_problem(raw: Mapping[str, Any]) -> str | None:
    """The first value nested deeper than MAX_NESTING, or integer outside TOML's 64-bit range
    (which the TOML spec says to refuse, and which could not even be printed in a problem
    line past 4,300 digits). Iterative, so that the check cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(raw, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"<file>: nested more than {MAX_NESTING} levels deep at {path}"
        if isinstance(node, int) and not isinstance(node, bool) and node not in _INT64:
            return f"{path}: integer outside TOML's 64-bit range (-2^63 to 2^63-1)"
        if isinstance(node, Mapping):
            for key, child in node.items():
                child_path = f"{path}.{_quoted_key(key)}" if path else _quoted_key(key)
                stack.append((child, child_path, depth + 1))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                stack.append((child, f"{path}[{index}]", depth + 1))
    return None


def parse_config(raw: Mapping[str, Any], base_dir: Path = Path(".")) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base_dir`."""
    problems: list[str] = []
    top = _Table(raw, "", problems)
    daemon = _parse_daemon(top.table("daemon"))
    state = _parse_state(top.table("state"), base_dir)
    functions = {
        name: _parse_function(name, section, base_dir)
        for name, section in top.named_tables("functions")
    }
    parsed = [
        _parse_mapping(index, section, functions)
        for index, section in enumerate(top.array_of_tables("mappings"))
    ]
    top.finish()
    _check_unique_names([mapping for mapping, _ in parsed], problems)
    mappings = tuple(mapping for mapping, usable in parsed if usable)
    _check_in_process_environments(functions, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a key read twice is reported once
    return Config(daemon=daemon, state=state, functions=functions, mappings=mappings)


def _parse_daemon(t: _Table) -> DaemonConfig:
    defaults = DaemonConfig()
    host, port = _parse_address(t, "http_address", f"{defaults.http_host}:{defaults.http_port}")
    config = DaemonConfig(
        region=t.string("region", defaults.region),
        endpoint_url=_endpoint_url(t),
        http_host=host,
        http_port=port,
        log_format=t.choice("log_format", LOG_FORMATS, defaults.log_format),
        log_level=t.choice("log_level", LOG_LEVELS, defaults.log_level),
        drain_timeout=t.number("drain_timeout", defaults.drain_timeout, 0, 3600),
        idle_shard_reads_per_second=t.number(
            "idle_shard_reads_per_second", defaults.idle_shard_reads_per_second, 1, 100_000
        ),
        functions_use_endpoint_url=t.boolean(
            "functions_use_endpoint_url", defaults.functions_use_endpoint_url
        ),
    )
    t.finish()
    return config


def _parse_address(t: _Table, key: str, default: str) -> tuple[str, int]:
    value = t.string(key, default)
    host, sep, port_text = value.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not host or not digits or not 0 <= int(port_text) <= 65535:
        t.problem(key, f"{value!r} is not HOST:PORT with a port from 0 to 65535")
        return "127.0.0.1", 0
    return host.strip("[]"), int(port_text)


def _parse_state(t: _Table, base_dir: Path) -> StateConfig:
    defaults = StateConfig()
    backend = t.choice("backend", STATE_BACKENDS, defaults.backend)
    config = StateConfig(
        backend=backend,
        path=base_dir / t.string("path", "esm-state.sqlite3"),
        table=t.optional_string("table"),
        create_table=t.boolean("create_table", defaults.create_table),
        lease_renewal_interval=t.number(
            "lease_renewal_interval", defaults.lease_renewal_interval, 0.2, 60
        ),
        failover_time=t.number("failover_time", defaults.failover_time, 1, 600),
        max_leases_taken_per_cycle=t.integer(
            "max_leases_taken_per_cycle", defaults.max_leases_taken_per_cycle, 1, 1000
        ),
    )
    if backend == "dynamodb" and not config.table:
        t.problem("table", 'is required with backend = "dynamodb" (the lease table name)')
    if (
        config.failover_time <= config.lease_renewal_interval
        and not {"failover_time", "lease_renewal_interval"} & t.problems_for
    ):
        t.problem(
            "failover_time",
            f"{config.failover_time} must exceed lease_renewal_interval"
            f" ({config.lease_renewal_interval}), or live leases would expire",
        )
    t.finish()
    return config


_FUNCTION_KEYS_BY_KIND: dict[str, tuple[str, ...]] = {
    "python": ("handler", "code_path", "memory_size", "environment"),
    "process": ("handler", "code_path", "memory_size", "environment", "command"),
    "http": ("url", "headers", "bearer_token_env", "verify_tls"),
    "lambda": ("function_name", "endpoint_url", "verify_tls"),
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_LAMBDA_FUNCTION_NAME = re.compile(
    r"(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:)?"
    r"(\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\$LATEST|[a-zA-Z0-9-_]+))?"
)
_LAMBDA_FUNCTION_NAME_MAX = 170
_HOP_BY_HOP_HEADERS = frozenset(
    {"content-length", "content-type", "host", "transfer-encoding", "connection"}
)


def _parse_function(name: str, t: _Table, base_dir: Path) -> FunctionConfig:
    kind = t.choice("kind", FUNCTION_KINDS, "python")
    timeout = t.number("timeout", 3.0, 1, 900)
    concurrency = t.optional_integer("reserved_concurrent_executions", 1, 1000)
    if "kind" in t.problems_for:
        # Checking the keys against a kind the user did not mean would only add noise
        # ("url: does not apply to kind 'python'", "handler: is required"): one line it is.
        for key in {k for keys in _FUNCTION_KEYS_BY_KIND.values() for k in keys}:
            t.consume(key)
        t.finish()
        return FunctionConfig(name=name, kind=kind, handler="", code_path=base_dir)
    _reject_keys_of_other_kinds(t, kind)
    if kind == "http":
        config = _parse_http_function(name, t, timeout, concurrency)
    elif kind == "lambda":
        config = _parse_lambda_function(name, t, timeout, concurrency)
    else:
        command = _parse_command(t) if kind == "process" else None
        # A custom runtime reads _HANDLER its own way; only esm's Python runtimes need
        # module.function.
        needs_module_function = command is None
        handler = t.string("handler", "", required=needs_module_function)
        if (
            needs_module_function
            and handler
            and ("." not in handler or handler.startswith(".") or handler.endswith("."))
        ):
            t.problem("handler", f"{handler!r} is not module.function (as Lambda writes it)")
        config = FunctionConfig(
            name=name,
            kind=kind,
            handler=handler,
            code_path=base_dir / t.string("code_path", "."),
            timeout=timeout,
            memory_size=t.integer("memory_size", 128, 128, 10240),
            environment=_environment(t),
            reserved_concurrent_executions=concurrency,
            command=command,
        )
    t.finish()
    return config


def _environment(t: _Table) -> dict[str, str]:
    """Variables the OS can set: a name without `=` or NUL, a value without NUL."""
    environment = t.string_map("environment")
    for name, value in environment.items():
        if not name or "=" in name or "\0" in name:
            t.problem(
                "environment", f"{_quoted_key(name)} is not a valid environment variable name"
            )
        elif "\0" in value:
            t.problem(
                "environment", f"{_quoted_key(name)}: a value may not contain a NUL character"
            )
    return environment


def _quoted_key(key: str) -> str:
    """A key as written in TOML: bare when it can be, quoted and escaped otherwise, so that
    a key holding spaces, quotes or newlines keeps its problem on one unambiguous line."""
    if _BARE_KEY.fullmatch(key):
        return key
    return '"' + key.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def _reject_keys_of_other_kinds(t: _Table, kind: str) -> None:
    """A key of another kind is a mistake worth naming (not just "unknown key")."""
    own = _FUNCTION_KEYS_BY_KIND.get(kind, ())
    for key in t.raw:
        if key in own:
            continue
        kinds = [k for k, keys in _FUNCTION_KEYS_BY_KIND.items() if key in keys]
        if kinds:
            t.consume(key)
            t.problem(
                key,
                f"does not apply to kind = {kind!r} (it applies to kind "
                + " or ".join(repr(k) for k in kinds)
                + ")",
            )


def _parse_command(t: _Table) -> tuple[str, ...] | None:
    value = t.consume("command")
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) for v in value)
        or not value[0]
    ):
        t.problem(
            "command",
            'must be a non-empty list of strings, e.g. ["./bootstrap"] or '
            '["python", "-m", "awslambdaric", "app.handler"]',
        )
        return None
    return tuple(value)


def _parse_http_function(
    name: str, t: _Table, timeout: float, concurrency: int | None
) -> FunctionConfig:
    url = t.string("url", "", required=True)
    if url and not _is_http_url(url):
        t.problem("url", f"{url!r} is not an http:// or https:// URL with a host")
    elif "@" in urlsplit(url).netloc:
        # Never echo the URL: it holds a secret, and problems end up in logs.
        t.problem("url", "must not carry credentials (user:password@); use bearer_token_env")
    headers = t.string_map("headers")
    for header in headers:
        if not _HEADER_NAME.fullmatch(header):
            t.problem("headers", f"{header!r} is not a valid HTTP header name")
        elif header.lower() == "authorization":
            t.problem(
                "headers",
                "Authorization must not be written in the config file; put the token in an "
                "environment variable and name it in bearer_token_env",
            )
        elif header.lower() in _HOP_BY_HOP_HEADERS:
            t.problem("headers", f"{header!r} is set by esm and cannot be overridden")
    token_env = t.optional_string("bearer_token_env")
    if token_env is not None and not _ENV_NAME.fullmatch(token_env):
        t.problem(
            "bearer_token_env",
            f"{token_env!r} is not an environment variable name (the token itself never "
            "belongs in the config file)",
        )
    return FunctionConfig(
        name=name,
        kind="http",
        handler="",
        code_path=Path("."),
        timeout=timeout,
        reserved_concurrent_executions=concurrency,
        url=url,
        headers=headers,
        bearer_token_env=token_env,
        verify_tls=t.boolean("verify_tls", True),
    )


def _parse_lambda_function(
    name: str, t: _Table, timeout: float, concurrency: int | None
) -> FunctionConfig:
    function_name = t.string("function_name", "", required=True)
    if function_name and (
        len(function_name) > _LAMBDA_FUNCTION_NAME_MAX
        or not _LAMBDA_FUNCTION_NAME.fullmatch(function_name)
    ):
        t.problem(
            "function_name",
            f"{function_name!r} is not a Lambda function name or ARN (name, name:qualifier, "
            f"or arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER], at most "
            f"{_LAMBDA_FUNCTION_NAME_MAX} characters)",
        )
    endpoint_url = _endpoint_url(t)
    return FunctionConfig(
        name=name,
        kind="lambda",
        handler="",
        code_path=Path("."),
        timeout=timeout,
        reserved_concurrent_executions=concurrency,
        function_name=function_name,
        endpoint_url=endpoint_url,
        verify_tls=t.boolean("verify_tls", True),
    )


def _endpoint_url(t: _Table) -> str | None:
    """An AWS endpoint override botocore can use: http(s)://HOST[:PORT][/PATH]. Credentials,
    a query or a fragment cannot work there (botocore signs and sends them as they are, and
    every call then fails with an opaque error), so they are refused here, naming the key."""
    url = t.optional_string("endpoint_url")
    if url is None:
        return None
    if not _is_http_url(url) or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        # A URL that does not parse may still hold a password: echo only its scheme.
        shown = repr(url) if "@" not in url else "the value"
        t.problem("endpoint_url", f"{shown} is not an http:// or https:// URL with a host")
        return None
    parts = urlsplit(url)
    if "@" in parts.netloc:
        # Never echo the URL: it holds a secret, and problems end up in logs.
        t.problem(
            "endpoint_url",
            "must not carry credentials (user:password@): AWS calls are signed with the "
            "credential chain (AWS_ACCESS_KEY_ID, a profile, a role)",
        )
    elif parts.query or url.endswith("?"):
        t.problem("endpoint_url", f"{url!r} must not have a query (?...): use http(s)://HOST:PORT")
    elif parts.fragment or "#" in url:
        t.problem(
            "endpoint_url", f"{url!r} must not have a fragment (#...): use http(s)://HOST:PORT"
        )
    else:
        return url
    return None


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _parse_mapping(
    index: int, t: _Table, functions: Mapping[str, FunctionConfig]
) -> tuple[MappingConfig, bool]:
    """The mapping, and False when its event source ARN is unusable. Either way every key is
    checked, so one `esm validate` lists all of the mapping's problems: with a bad ARN the
    keys are checked against the source kind the ARN or the keys suggest."""
    name = t.string("name", f"mapping-{index}")
    function = t.string("function", "", required=True)
    if function and function not in functions:
        known = ", ".join(_quoted_key(f) for f in sorted(functions)) or "none defined"
        t.problem("function", f"{function!r} is not a [functions.*] entry (known: {known})")
    arn_text = t.string("event_source_arn", "", required=True)
    source: SourceArn | None = None
    if arn_text:
        try:
            source = parse_source_arn(arn_text)
        except ArnError as exc:
            t.problem("event_source_arn", str(exc))
    common: dict[str, Any] = dict(
        name=name,
        function=function,
        source=source or _assumed_source(arn_text, t),
        enabled=t.boolean("enabled", True),
        function_response_types=frozenset(
            t.string_list("function_response_types", ("ReportBatchItemFailures",))
        ),
        filter_patterns=_parse_filter_criteria(t),
    )
    if common["source"].kind == "sqs":
        mapping = _parse_sqs_mapping(t, common["source"], common)
    else:
        mapping = _parse_stream_mapping(t, common["source"], common)
    t.finish()
    return mapping, source is not None


def _assumed_source(arn_text: str, t: _Table) -> SourceArn:
    """What an unusable ARN most likely meant, only to check the mapping's other keys: the
    ARN's service when it names one, else a stream when a stream-only key is set."""
    parts = arn_text.split(":")
    service = parts[2] if len(parts) > 2 and parts[0] == "arn" else ""
    kind: SourceKind
    if service in ("sqs", "kinesis", "dynamodb"):
        kind = service  # type: ignore[assignment]
    else:
        kind = "kinesis" if any(key in t.raw for key in _STREAM_ONLY_KEYS) else "sqs"
    return SourceArn(arn_text, kind, "", "", parts[-1] if kind == "sqs" else "")


_STREAM_ONLY_KEYS = (
    "starting_position",
    "starting_position_timestamp",
    "parallelization_factor",
    "bisect_batch_on_function_error",
    "maximum_retry_attempts",
    "maximum_record_age_in_seconds",
    "destination_config",
    "tumbling_window_in_seconds",
)


def _parse_sqs_mapping(t: _Table, source: SourceArn, common: dict[str, Any]) -> MappingConfig:
    for key in _STREAM_ONLY_KEYS:
        if key in t.raw:
            t.consume(key)
            hint = " (use the queue's redrive policy)" if key == "destination_config" else ""
            t.problem(key, f"applies to Kinesis and DynamoDB streams only, not SQS{hint}")
    fifo = source.name.endswith(".fifo")
    limit = 10 if fifo else 10_000
    batch_size = t.integer("batch_size", 10, 1, limit, what="FIFO SQS" if fifo else "SQS")
    window = t.number("maximum_batching_window_in_seconds", 0.0, 0, 300)
    if (
        batch_size > 10
        and window < 1
        and "maximum_batching_window_in_seconds" not in t.problems_for
    ):
        t.problem(
            "maximum_batching_window_in_seconds",
            f"must be at least 1 when batch_size is above 10 (batch_size is {batch_size}), as AWS requires",
        )
    scaling = t.table("scaling_config")
    concurrency = scaling.optional_integer("maximum_concurrency", 2, 1000)
    scaling.finish()
    return MappingConfig(
        batch_size=batch_size,
        maximum_batching_window_in_seconds=window,
        maximum_concurrency=concurrency,
        **common,
    )


def _parse_stream_mapping(t: _Table, source: SourceArn, common: dict[str, Any]) -> MappingConfig:
    if "scaling_config" in t.raw:
        t.consume("scaling_config")
        t.problem(
            "scaling_config", "applies to SQS only; streams scale with parallelization_factor"
        )
    positions = STARTING_POSITIONS if source.kind == "kinesis" else STARTING_POSITIONS[:2]
    position = t.choice("starting_position", positions, "", required=True)
    timestamp = t.optional_timestamp("starting_position_timestamp")
    if position == "AT_TIMESTAMP" and timestamp is None:
        t.problem(
            "starting_position_timestamp", "is required when starting_position is AT_TIMESTAMP"
        )
    if timestamp is not None and position != "AT_TIMESTAMP":
        t.problem(
            "starting_position_timestamp", "is only allowed with starting_position AT_TIMESTAMP"
        )
    retries = t.integer("maximum_retry_attempts", -1, -1, 10_000)
    record_age = t.integer("maximum_record_age_in_seconds", -1, -1, 604_800)
    if 0 <= record_age < 60:
        t.problem(
            "maximum_record_age_in_seconds",
            f"{record_age} is not allowed: use -1 (infinite) or 60..604800",
        )
    destination = t.table("destination_config")
    on_failure = destination.table("on_failure")
    destination_arn = on_failure.optional_string("destination")
    if destination_arn is not None and not _is_destination_arn(destination_arn):
        on_failure.problem(
            "destination", f"{destination_arn!r} is not an SQS queue, SNS topic or S3 bucket ARN"
        )
    on_failure.finish()
    destination.finish()
    return MappingConfig(
        batch_size=t.integer("batch_size", 100, 1, 10_000),
        maximum_batching_window_in_seconds=t.number(
            "maximum_batching_window_in_seconds", 0.0, 0, 300
        ),
        starting_position=position or None,
        starting_position_timestamp=timestamp,
        parallelization_factor=t.integer("parallelization_factor", 1, 1, 10),
        bisect_batch_on_function_error=t.boolean("bisect_batch_on_function_error", False),
        maximum_retry_attempts=retries,
        maximum_record_age_in_seconds=record_age,
        on_failure_destination=destination_arn,
        tumbling_window_in_seconds=t.integer("tumbling_window_in_seconds", 0, 0, 900),
        **common,
    )


def _is_destination_arn(arn: str) -> bool:
    parts = arn.split(":")
    return len(parts) >= 6 and parts[0] == "arn" and parts[2] in ("sqs", "sns", "s3")


def _parse_filter_criteria(t: _Table) -> tuple[str, ...]:
    criteria = t.table("filter_criteria")
    filters = criteria.array_of_tables("filters")
    if len(filters) > MAX_FILTERS:
        criteria.problem(
            "filters", f"has {len(filters)} filters; at most {MAX_FILTERS} are allowed"
        )
    patterns = []
    for f in filters:
        pattern = f.string("pattern", "", required=True)
        if len(pattern) > MAX_FILTER_PATTERN_CHARS:
            f.problem(
                "pattern", f"is {len(pattern)} characters; at most {MAX_FILTER_PATTERN_CHARS}"
            )
        elif pattern and (problem := validate_pattern(pattern)) is not None:
            f.problem("pattern", problem)
        f.finish()
        patterns.append(pattern)
    criteria.finish()
    return tuple(patterns)


def _check_unique_names(mappings: list[MappingConfig], problems: list[str]) -> None:
    """By index in the file, counting mappings with other problems too."""
    seen: dict[str, int] = {}
    for index, mapping in enumerate(mappings):
        if mapping.name in seen:
            problems.append(
                f"mappings[{index}].name: {mapping.name!r} is already used by mappings[{seen[mapping.name]}]"
            )
        seen.setdefault(mapping.name, index)


T = TypeVar("T")
N = TypeVar("N", int, float)


def _check_in_process_environments(
    functions: Mapping[str, FunctionConfig], problems: list[str]
) -> None:
    """In-process functions share one os.environ, so their `environment` tables must agree:
    on Lambda each function has its own, and a silently shared value is the wrong one."""
    seen: dict[str, tuple[str, str]] = {}
    for function in functions.values():
        if function.kind != "python":
            continue
        for variable, value in function.environment.items():
            first = seen.setdefault(variable, (function.name, value))
            if first[1] != value:
                problems.append(
                    f"functions.{_quoted_key(first[0])} and functions.{_quoted_key(function.name)}:"
                    f" environment.{_quoted_key(variable)} differs, but in-process functions"
                    ' share one environment; use kind = "process" for one of them'
                )


class _Table:
    """One TOML table being validated: typed getters that record problems under a key path."""

    def __init__(self, raw: Any, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        self.problems_for: set[str] = set()
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{path or 'config'}: must be a table, not {_type_name(raw)}")
            raw = {}
        self.raw: Mapping[str, Any] = raw
        self._seen: set[str] = set()
        self._placeholders: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{_quoted_key(key)}" if self.path else _quoted_key(key)

    def problem(self, key: str, message: str) -> None:
        self.problems_for.add(key)
        self.problems.append(f"{self.key_path(key)}: {message}")

    def consume(self, key: str) -> Any:
        """The key's value; a placeholder left by esm import reads as absent, so that its one
        problem line is the only one (not also "is not an ARN", "is required", ...)."""
        self._seen.add(key)
        value = self.raw.get(key)
        self._reject_placeholders(key, value)
        if isinstance(value, str) and value.startswith(UNRESOLVED_PREFIX):
            self._placeholders.add(key)
            return None
        return value

    def _reject_placeholders(self, key: str, value: Any) -> None:
        """`esm import` writes `<unresolved: ...>` where it could not resolve a value; such a
        config must not run, whichever key (an ARN, an environment variable, a command)."""
        if isinstance(value, str) and value.startswith(UNRESOLVED_PREFIX):
            self.problem(key, f"{value} is a placeholder left by esm import: set the real value")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self._reject_placeholders(f"{key}[{index}]", item)
        elif isinstance(value, Mapping) and not isinstance(value, _Table):
            for name, item in value.items():
                if isinstance(item, str | list):
                    self._reject_placeholders(f"{key}.{name}", item)

    def finish(self, ignore_unknown: bool = False) -> None:
        """Unknown keys are errors: a typo must never be silently ignored."""
        if ignore_unknown:
            return
        for key in self.raw:
            if key not in self._seen:
                self.problem(key, "unknown key")

    def _get(
        self,
        key: str,
        default: T,
        check: Callable[[Any], bool],
        expected: str,
        required: bool = False,
    ) -> Any:
        value = self.consume(key)
        if value is None:
            if required and key not in self._placeholders:
                self.problem(key, "is required")
            return default
        if not check(value):
            self.problem(key, f"must be {expected}, not {_type_name(value)} {value!r}")
            return default
        return value

    def string(self, key: str, default: str, required: bool = False) -> str:
        value: str = self._get(key, default, lambda v: isinstance(v, str), "a string", required)
        return value

    def optional_string(self, key: str) -> str | None:
        value: str | None = self._get(key, None, lambda v: isinstance(v, str), "a string")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, default, lambda v: isinstance(v, bool), "true or false")
        return value

    def choice(
        self, key: str, allowed: tuple[str, ...], default: str, required: bool = False
    ) -> str:
        value = self.string(key, default, required)
        if value and value not in allowed:
            self.problem(key, f"{value!r} is not one of {', '.join(allowed)}")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, what: str = "") -> int:
        value = self.optional_integer(key, low, high, what)
        return default if value is None else value

    def optional_integer(self, key: str, low: int, high: int, what: str = "") -> int | None:
        value: int | None = self._get(
            key, None, lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"
        )
        return self._in_range(key, value, low, high, what)

    def number(self, key: str, default: float, low: float, high: float) -> float:
        value = self._get(
            key,
            None,
            lambda v: isinstance(v, int | float) and not isinstance(v, bool),
            "a number",
        )
        checked = self._in_range(key, value, low, high)
        return default if checked is None else float(checked)

    def _in_range(
        self, key: str, value: N | None, low: float, high: float, what: str = ""
    ) -> N | None:
        if value is None:
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.problem(key, f"{value} is not a number from {low} to {high}")
            return None
        suffix = f" for {what}" if what else ""
        if value < low:
            self.problem(key, f"{value} is below the minimum {low}{suffix}")
            return None
        if value > high:
            self.problem(key, f"{value} is above the maximum {high}{suffix}")
            return None
        return value

    def optional_timestamp(self, key: str) -> datetime | None:
        value = self.consume(key)
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                return datetime.fromtimestamp(value, UTC)
            except (OverflowError, ValueError, OSError):
                self.problem(key, f"{value} is not a time in epoch seconds")
                return None
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
        self.problem(key, f"must be an ISO 8601 date-time or epoch seconds, not {value!r}")
        return None

    def string_list(self, key: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        value = self.consume(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(key, f"must be a list of strings, not {_type_name(value)}")
            return ()
        for item in value:
            if item not in allowed:
                self.problem(key, f"{item!r} is not one of {', '.join(allowed)}")
        return tuple(v for v in value if v in allowed)

    def string_map(self, key: str) -> dict[str, str]:
        value = self.consume(key)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a table of strings, not {_type_name(value)}")
            return {}
        result = {}
        for name, item in value.items():
            if isinstance(item, str):
                result[name] = item
            else:
                self.problems.append(
                    f"{self.key_path(key)}.{name}: must be a string, not {_type_name(item)}"
                )
        return result

    def table(self, key: str) -> _Table:
        return _Table(self.consume(key), self.key_path(key), self.problems)

    def named_tables(self, key: str) -> list[tuple[str, _Table]]:
        section = self.table(key)
        tables = [(name, section.table(name)) for name in section.raw]
        return tables

    def array_of_tables(self, key: str) -> list[_Table]:
        value = self.consume(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, f"must be an array of tables ([[{key}]]), not {_type_name(value)}")
            return []
        return [
            _Table(item, f"{self.key_path(key)}[{i}]", self.problems)
            for i, item in enumerate(value)
        ]


def _type_name(value: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
    if isinstance(value, Mapping):
        return "table"
    if isinstance(value, datetime):
        return "date-time"
    return names.get(type(value), type(value).__name__)
