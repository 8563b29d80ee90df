"""TOML configuration -> immutable, validated objects.

Owns every range and default of the config file; the rest of esm never sees raw TOML.
`[daemon]`, `[state]` and `[functions.*]` are parsed here; each `[[mappings]]` table goes to
its source family's parser, found through esm/sources/registry.py, into the family's own
frozen config (a `MappingConfig` subclass). Mapping keys are AWS CreateEventSourceMapping
parameter names in snake_case, so AWS's documentation tells a user what each one does.
Validation collects every problem at once, each naming its key path and the rule
(`mappings[0].batch_size: 20000 is above ...`).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from esm.config_table import (
    Table,
    parse_filter_criteria,
    quoted_key,
)
from esm.errors import ConfigError
from esm.idle_pacing import DEFAULT_IDLE_SHARD_READS_PER_SECOND
from esm.sources import registry
from esm.sources.base import MappingConfig, MappingContext

# The names family config modules written before esm/config_table.py imported from here.
_Table = Table
_quoted_key = quoted_key
_parse_filter_criteria = parse_filter_criteria
FUNCTION_KINDS = ("python", "process", "http", "lambda")
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
STATE_BACKENDS = ("sqlite", "dynamodb")
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
    idle_shard_reads_per_second: float | None = DEFAULT_IDLE_SHARD_READS_PER_SECOND
    """Opt-in: GetRecords calls per second shared by all caught-up shards (esm.idle_pacing);
    None (the default) reads each caught-up shard about once a second, as Lambda does."""
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
                child_path = f"{path}.{quoted_key(key)}" if path else quoted_key(key)
                stack.append((child, child_path, depth + 1))
        elif isinstance(node, list):
            for index, child in enumerate(node):
                stack.append((child, f"{path}[{index}]", depth + 1))
    return None


def parse_config(raw: Mapping[str, Any], base_dir: Path = Path(".")) -> Config:
    """Validate a parsed TOML document; relative paths resolve against `base_dir`."""
    problems: list[str] = []
    top = Table(raw, "", problems)
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
    _check_unique_names([name for name, _ in parsed], problems)
    mappings = tuple(mapping for _, mapping in parsed if mapping is not None)
    _check_in_process_environments(functions, problems)
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))  # a key read twice is reported once
    return Config(daemon=daemon, state=state, functions=functions, mappings=mappings)


def _parse_daemon(t: Table) -> DaemonConfig:
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
        idle_shard_reads_per_second=t.optional_number("idle_shard_reads_per_second", 1, 100_000),
        functions_use_endpoint_url=t.boolean(
            "functions_use_endpoint_url", defaults.functions_use_endpoint_url
        ),
    )
    t.finish()
    return config


def _parse_address(t: Table, key: str, default: str) -> tuple[str, int]:
    value = t.string(key, default)
    host, sep, port_text = value.rpartition(":")
    digits = port_text.isascii() and port_text.isdigit()
    if not sep or not host or not digits or not 0 <= int(port_text) <= 65535:
        t.problem(key, f"{value!r} is not HOST:PORT with a port from 0 to 65535")
        return "127.0.0.1", 0
    return host.strip("[]"), int(port_text)


def _parse_state(t: Table, base_dir: Path) -> StateConfig:
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


def _parse_function(name: str, t: Table, base_dir: Path) -> FunctionConfig:
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


def _environment(t: Table) -> dict[str, str]:
    """Variables the OS can set: a name without `=` or NUL, a value without NUL."""
    environment = t.string_map("environment")
    for name, value in environment.items():
        if not name or "=" in name or "\0" in name:
            t.problem("environment", f"{quoted_key(name)} is not a valid environment variable name")
        elif "\0" in value:
            t.problem("environment", f"{quoted_key(name)}: a value may not contain a NUL character")
    return environment


def _reject_keys_of_other_kinds(t: Table, kind: str) -> None:
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


def _parse_command(t: Table) -> tuple[str, ...] | None:
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
    name: str, t: Table, timeout: float, concurrency: int | None
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
    name: str, t: Table, timeout: float, concurrency: int | None
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


def _endpoint_url(t: Table) -> str | None:
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
    index: int, t: Table, functions: Mapping[str, FunctionConfig]
) -> tuple[str, MappingConfig | None]:
    """The mapping's name, and its config (None when it cannot run: an unusable event
    source, or a family that gives up on the table). Either way every key is checked, so
    one `esm validate` lists all of the mapping's problems: with a bad ARN the keys are
    checked against the family the registry thinks the ARN or the keys meant."""
    recognised = registry.recognise(t.raw)
    name = t.raw.get("name")
    name = name if isinstance(name, str) else f"mapping-{index}"
    context = MappingContext(index, tuple(functions), recognised.source, recognised.arn_problem)
    mapping = recognised.family.parse(t, context)
    t.finish()
    return name, mapping if recognised.arn_problem is None else None


def _check_unique_names(names: list[str], problems: list[str]) -> None:
    """By index in the file, counting mappings with other problems too."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            problems.append(
                f"mappings[{index}].name: {name!r} is already used by mappings[{seen[name]}]"
            )
        seen.setdefault(name, index)


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
                    f"functions.{quoted_key(first[0])} and functions.{quoted_key(function.name)}:"
                    f" environment.{quoted_key(variable)} differs, but in-process functions"
                    ' share one environment; use kind = "process" for one of them'
                )
