"""Bad configuration never gets a traceback: `esm validate` and `esm run` name every problem.

Hypothesis writes TOML documents shaped like esm's config but broken at every level (wrong
types, unknown keys, out-of-range numbers, bad ARNs, invalid filter patterns, nested
garbage), plus random bytes and spliced, invalid TOML. `esm validate` must exit 0 or 2;
on 2 every stderr line is `<key path or file>: <message>` and the key path leads to a key
of the document (or, for its last part, to a key of esm's schema that is missing).
`esm run` on an invalid document exits 2 the same way. Targeted tests below pin each
defect the property tests found, one behaviour each.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from conftest import HANDLERS, free_port, wait_for_http, wait_until
from hypothesis import Phase, assume, given, note, settings
from hypothesis import strategies as st

from esm.cli import main
from esm.config import load_config
from esm.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

# Every key of esm's config schema (README, "Configuration reference").
SCHEMA_KEYS = frozenset(
    """daemon state functions mappings region endpoint_url http_address log_format log_level
    drain_timeout backend path kind handler code_path timeout memory_size environment
    reserved_concurrent_executions command url headers bearer_token_env verify_tls
    function_name name function event_source_arn enabled batch_size
    maximum_batching_window_in_seconds function_response_types filter_criteria filters
    pattern scaling_config maximum_concurrency starting_position starting_position_timestamp
    parallelization_factor bisect_batch_on_function_error maximum_retry_attempts
    maximum_record_age_in_seconds destination_config on_failure destination
    tumbling_window_in_seconds""".split()  # noqa: SIM905 - a word list reads better
)

# --- TOML writing (tomllib only reads) ----------------------------------------------------


def toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(type(value))


def toml_document(doc: dict[str, Any]) -> str:
    """Top-level tables as [headers] and arrays of tables as [[headers]], like a user writes."""
    lines: list[str] = []
    tables: list[str] = []
    for key, value in doc.items():
        name = toml_string(key)
        if isinstance(value, dict):
            tables.append(f"[{name}]")
            tables.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for item in value:
                tables.append(f"[[{name}]]")
                tables.extend(f"{toml_string(k)} = {toml_value(v)}" for k, v in item.items())
        else:
            lines.append(f"{name} = {toml_value(value)}")
    return "\n".join(lines + tables) + "\n"


# --- strategies ---------------------------------------------------------------------------

SAFE_KEY = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=10)
text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=20)
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    text,
    st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
    st.dates(),
    st.times(),
)
garbage = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(SAFE_KEY, children, max_size=3)
    ),
    max_leaves=6,
)


def hostile(*good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a plausible value, often garbage of any type."""
    return st.one_of(*good, *good, garbage)


def numbers(low: float, high: float) -> st.SearchStrategy[Any]:
    low_i, high_i = int(low), int(high)
    return hostile(
        st.integers(low_i - 2, low_i + 2),
        st.integers(high_i - 2, high_i + 2),
        st.integers(low_i, high_i),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, -1, 2**63 - 1, -(2**63), 0.5, 1e300]),
    )


QUEUE_ARNS = ["arn:aws:sqs:us-east-1:123456789012:q", "arn:aws:sqs:us-east-1:123456789012:q.fifo"]
STREAM_ARNS = [
    "arn:aws:kinesis:us-east-1:123456789012:stream/s",
    "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024-01-01T00:00:00.000",
]
BAD_ARNS = [
    "",
    "arn",
    "arn:aws:sqs",
    "arn:aws:sqs:us-east-1:123456789012:",
    "arn:aws:s3:::bucket",
    "arn:aws:kinesis:us-east-1:123456789012:stream/",
    "arn:aws:dynamodb:us-east-1:1:table/t",
    "arn:aws:sqs:us-east-1:123456789012:a/b",
    "not an arn",
    "arn:aws:lambda:us-east-1:1:function:f",
]
PATTERNS = [
    '{"body": {"a": ["x"]}}',
    '{"body": {"n": [{"numeric": [">", 1, "<=", 5]}]}}',
    '{"a": [{"exists": true}]}',
    '{"a": [{"prefix": "us-"}]}',
    '{"$or": [{"a": ["1"]}, {"b": ["2"]}]}',
    '{"a": [{"anything-but": ["x"]}]}',
    '{"a": [{"equals-ignore-case": "x"}]}',
]


@st.composite
def filter_patterns(draw: st.DrawFn) -> Any:
    inner = draw(garbage)
    return draw(
        st.one_of(
            st.sampled_from(PATTERNS),
            text,
            st.just(json.dumps(inner, default=str)),
            st.sampled_from(
                [
                    "numeric",
                    "anything-but",
                    "prefix",
                    "suffix",
                    "exists",
                    "equals-ignore-case",
                    "cidr",
                    "wildcard",
                    "$or",
                ]
            ).map(lambda op: json.dumps({"a": [{op: inner}]}, default=str)),
            st.just(json.dumps({"a": inner}, default=str)),
            st.integers(1, 3000).map(lambda n: '{"a": ' * n + '["x"]' + "}" * n),
            st.just("[" * 2000),
            st.integers(4090, 4200).map(lambda n: '{"a": ["' + "x" * (n - 11) + '"]}'),
            garbage,
        )
    )


def optional_table(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Any subset of the fields, plus sometimes unknown keys."""
    return st.builds(
        lambda known, unknown: {**known, **unknown},
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(SAFE_KEY, garbage, max_size=2) | st.just({}),
    )


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    function_names = draw(st.lists(SAFE_KEY, max_size=3, unique=True))
    daemon = optional_table(
        {
            "region": hostile(st.sampled_from(["us-east-1", "eu-west-1", ""]), text),
            "endpoint_url": hostile(st.sampled_from(["http://127.0.0.1:9", "not a url", ""])),
            "http_address": hostile(
                st.sampled_from(
                    [
                        "127.0.0.1:0",
                        "[::1]:0",
                        ":9464",
                        "host:",
                        "h:65536",
                        "h:-1",
                        "127.0.0.1:\u00b2",
                        "a:b:c",
                        "0.0.0.0:9464",
                    ]
                ),
                st.builds(lambda h, p: f"{h}:{p}", text, st.integers(-5, 70000)),
            ),
            "log_format": hostile(st.sampled_from(["json", "console", "xml", ""])),
            "log_level": hostile(
                st.sampled_from(["debug", "info", "warning", "error", "trace", "INFO"])
            ),
            "drain_timeout": numbers(0, 3600),
        }
    )
    state = optional_table(
        {"backend": hostile(st.sampled_from(["sqlite", "redis"])), "path": hostile(text)}
    )
    function = optional_table(
        {
            "kind": hostile(st.sampled_from(["python", "process", "http", "lambda", "java"])),
            "handler": hostile(
                st.sampled_from(["app.handler", "handler", ".x", "x.", "a.b.c"]), text
            ),
            "code_path": hostile(text),
            "timeout": numbers(1, 900),
            "memory_size": numbers(128, 10240),
            "environment": hostile(st.dictionaries(SAFE_KEY, hostile(text), max_size=3)),
            "reserved_concurrent_executions": numbers(1, 1000),
            "command": hostile(st.lists(text, max_size=3)),
            "url": hostile(
                st.sampled_from(
                    [
                        "http://127.0.0.1:8080/x",
                        "https://h/",
                        "ftp://h",
                        "http://",
                        "http://h:99999/",
                    ]
                ),
                text,
            ),
            "headers": hostile(
                st.dictionaries(
                    st.sampled_from(["X-A", "Authorization", "Host", "bad header"]),
                    hostile(text),
                    max_size=2,
                )
            ),
            "bearer_token_env": hostile(st.sampled_from(["TOKEN", "1BAD", "A-B", ""])),
            "verify_tls": hostile(st.booleans()),
            "function_name": hostile(
                st.sampled_from(
                    [
                        "f",
                        "arn:aws:lambda:us-east-1:123456789012:function:f:1",
                        "bad name",
                        "x" * 200,
                    ]
                )
            ),
        }
    )
    mapping = optional_table(
        {
            "name": hostile(text, st.sampled_from(["a", "a"])),
            "function": hostile(st.sampled_from(function_names or ["f"]), SAFE_KEY),
            "event_source_arn": hostile(st.sampled_from(QUEUE_ARNS + STREAM_ARNS + BAD_ARNS), text),
            "enabled": hostile(st.booleans()),
            "batch_size": numbers(1, 10_000),
            "maximum_batching_window_in_seconds": numbers(0, 300),
            "function_response_types": hostile(
                st.lists(st.sampled_from(["ReportBatchItemFailures", "Other"]), max_size=2)
            ),
            "filter_criteria": hostile(
                optional_table(
                    {
                        "filters": hostile(
                            st.lists(optional_table({"pattern": filter_patterns()}), max_size=6)
                        )
                    }
                )
            ),
            "scaling_config": hostile(optional_table({"maximum_concurrency": numbers(2, 1000)})),
            "starting_position": hostile(
                st.sampled_from(["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "EARLIEST"])
            ),
            "starting_position_timestamp": hostile(
                st.datetimes(timezones=st.one_of(st.none(), st.just(UTC))),
                st.sampled_from(["2024-01-01T00:00:00Z", "yesterday", "2024-13-01", ""]),
                st.floats(allow_nan=True, allow_infinity=True),
                st.integers(min_value=-(2**63), max_value=2**63 - 1),
            ),
            "parallelization_factor": numbers(1, 10),
            "bisect_batch_on_function_error": hostile(st.booleans()),
            "maximum_retry_attempts": numbers(-1, 10_000),
            "maximum_record_age_in_seconds": numbers(-1, 604_800),
            "destination_config": hostile(
                optional_table(
                    {
                        "on_failure": hostile(
                            optional_table(
                                {
                                    "destination": hostile(
                                        st.sampled_from(
                                            QUEUE_ARNS
                                            + BAD_ARNS
                                            + ["arn:aws:sns:us-east-1:1:t", "arn:aws:s3:::b"]
                                        )
                                    )
                                }
                            )
                        )
                    }
                )
            ),
            "tumbling_window_in_seconds": numbers(0, 900),
        }
    )
    top = optional_table(
        {
            "daemon": hostile(daemon),
            "state": hostile(state),
            "functions": hostile(
                st.fixed_dictionaries({n: hostile(function) for n in function_names})
            ),
            "mappings": hostile(st.lists(hostile(mapping), min_size=1, max_size=3)),
        }
    )
    return draw(top)


NESTINGS = ("arrays", "inline-tables", "table-headers")


def deeply_nested(shape: str, depth: int) -> str:
    """A TOML line (or table header) nested `depth` levels deep."""
    if shape == "arrays":
        return "\ndeep = " + "[" * depth + "]" * depth + "\n"
    if shape == "inline-tables":
        return "\ndeep = " + "{ a = " * depth + "1" + " }" * depth + "\n"
    return "\n[" + ".".join(["a"] * depth) + "]\n"


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    """The bytes of a config file: a rendered document, random bytes, or a spliced one."""
    kind = draw(st.sampled_from(["toml", "toml", "toml", "bytes", "spliced", "deep", "huge"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    rendered = toml_document(draw(config_documents())).encode()
    if kind == "toml":
        return rendered
    if kind == "huge":  # an integer past 64 bits, decimal (tomllib's digit limit) or hex
        digits = draw(st.integers(19, 6000))
        number = draw(st.sampled_from(["9" * digits, "0x" + "f" * digits, "-" + "9" * digits]))
        return rendered + f"\nhuge = {number}\n".encode()
    if kind == "deep":
        return (
            rendered
            + deeply_nested(draw(st.sampled_from(NESTINGS)), draw(st.integers(10, 2000))).encode()
        )
    at = draw(st.integers(0, len(rendered)))
    junk = draw(
        st.one_of(
            st.binary(max_size=8),
            st.sampled_from([b"[", b"]]", b"=", b'"', b"\n[[mappings", b"\x00", b"\xff"]),
        )
    )
    return rendered[:at] + junk + rendered[at + draw(st.integers(0, 8)) :]


# --- checking what esm printed -------------------------------------------------------------


def written(key: str) -> str:
    """A key as esm writes it in a key path: bare when TOML allows, else quoted and escaped."""
    if re.fullmatch(r"[A-Za-z0-9_.\[\]-]+", key):
        return key
    return '"' + key.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


def key_paths(node: Any, prefix: str = "") -> set[str]:
    """Every key path of a parsed document, written the way esm writes them (iterative: a
    generated document may nest deeper than Python's recursion limit)."""
    paths: set[str] = set()
    stack = [(prefix, node)]
    while stack:
        base, current = stack.pop()
        if isinstance(current, dict):
            children = [
                (f"{base}.{written(k)}" if base else written(k), v) for k, v in current.items()
            ]
        elif isinstance(current, list):
            children = [(f"{base}[{i}]", v) for i, v in enumerate(current)]
        else:
            continue
        for path, child in children:
            paths.add(path)
            stack.append((path, child))
    return paths


def names_a_key(key_path: str, paths: set[str]) -> bool:
    """The path is one of the document's keys, or a key of esm's schema missing from a table
    of the document (`mappings[0].function: is required`)."""
    if key_path in paths:
        return True
    parent, _, last = key_path.rpartition(".")
    return last in SCHEMA_KEYS and (parent == "" or parent in paths)


def check_output(code: int | None, out: str, err: str, path: Path, doc: Any) -> None:
    note(f"exit {code}\nstdout: {out}\nstderr: {err}")
    assert "Traceback" not in out + err
    assert code in (0, 2), f"exit code {code}"
    if code == 0:
        assert out.startswith(f"{path}: valid")
        return
    lines = err.splitlines()
    assert lines, "exit 2 without naming a problem"
    paths = key_paths(doc)
    for line in lines:
        head, sep, message = line.partition(": ")
        assert sep and message.strip(), f"not '<key>: <message>': {line!r}"
        if head == str(path):
            continue
        assert doc is not None and names_a_key(head, paths), (
            f"names no key of the document: {line!r}"
        )


def parsed(data: bytes) -> Any:
    import tomllib

    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return None
    except ValueError:  # an integer of more than 4,300 digits: esm says "not valid TOML" too
        return None


def validate_in_process(path: Path) -> tuple[int | None, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["validate", "-c", str(path)])
    return code, out.getvalue(), err.getvalue()


def esm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def esm_run(config: Path, http_port: int | None = None) -> tuple[int, str, bool]:
    """`esm run -c config`: its exit code and output, and whether it started serving (then it
    was stopped with SIGTERM). An invalid config must make it exit at once, never serve."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    started = False
    try:
        proc.wait(timeout=3 if http_port is None else 0.5)
    except subprocess.TimeoutExpired:
        started = _wait_serving(proc, http_port) if http_port is not None else True
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    try:
        output, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return proc.returncode, output, started


def _wait_serving(proc: subprocess.Popen[str], port: int) -> bool:
    for _ in range(100):
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return True
        except OSError:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.1)
    return proc.poll() is None


# --- properties ----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(documents())
def test_validate_in_process_names_every_problem(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "esm.toml"
        path.write_bytes(data)
        note(f"document: {data!r}")
        code, out, err = validate_in_process(path)
        check_output(code, out, err, path, parsed(data))


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
@given(documents())
def test_esm_validate_process_never_prints_a_traceback(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "esm.toml"
        path.write_bytes(data)
        note(f"document: {data!r}")
        result = esm("validate", "-c", str(path))
        check_output(result.returncode, result.stdout, result.stderr, path, parsed(data))


def _invalid(path: Path) -> bool:
    """True unless the document is valid (then `esm run` would start a daemon)."""
    try:
        load_config(path)
    except ConfigError:
        return True
    except Exception:  # noqa: BLE001 - a crash is invalid too; esm run must still not traceback
        return True
    return False


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)
@given(documents())
def test_esm_run_on_an_invalid_config_exits_2_without_traceback(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "esm.toml"
        path.write_bytes(data)
        assume(_invalid(path))
        note(f"document: {data!r}")
        code, output, started = esm_run(path)
        assert not started, "esm run kept running on an invalid config"
        assert "Traceback" not in output, output
        assert code == 2, output
        assert output.strip(), "exit 2 without naming a problem"


# --- targeted: each defect found, one behaviour each ---------------------------------------

VALID_BASE = """
[daemon]
http_address = "127.0.0.1:{port}"
endpoint_url = "http://127.0.0.1:9"
{daemon}
[functions.f]
handler = "json.dumps"
{function}
[[mappings]]
function = "f"
event_source_arn = "{arn}"
{mapping}
"""


def write_config(
    tmp_path: Path,
    daemon: str = "",
    function: str = "",
    mapping: str = "",
    arn: str = QUEUE_ARNS[0],
) -> tuple[Path, int]:
    port = free_port()
    path = tmp_path / "esm.toml"
    path.write_text(
        VALID_BASE.format(port=port, daemon=daemon, function=function, mapping=mapping, arn=arn)
    )
    return path, port


def assert_names(err: str, key: str) -> None:
    lines = err.splitlines()
    assert lines and all(": " in line for line in lines), err
    assert any(line.startswith(f"{key}: ") for line in lines), f"no line names {key}:\n{err}"


def test_the_base_config_of_these_tests_is_valid(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path)
    assert validate_in_process(path)[0] == 0


def test_file_that_is_not_utf8_is_named_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "esm.toml"
    path.write_bytes(b'\xff\xfe[daemon]\nregion = "\xe9"\n')
    for command in ("validate", "run"):
        result = esm(command, "-c", str(path))
        assert "Traceback" not in result.stderr, result.stderr
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"{path}: "), result.stderr


def test_http_address_port_with_non_ascii_digits_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "esm.toml"
    path.write_text('[daemon]\nhttp_address = "127.0.0.1:\u00b2"\n', encoding="utf-8")
    result = esm("validate", "-c", str(path))
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2
    assert_names(result.stderr, "daemon.http_address")


@pytest.mark.parametrize("value", ["1e20", "-1e15", "nan", "inf", "-inf", "9223372036854775807"])
def test_starting_position_timestamp_out_of_range_is_a_problem(tmp_path: Path, value: str) -> None:
    path, _ = write_config(
        tmp_path,
        arn=STREAM_ARNS[0],
        mapping=f'starting_position = "AT_TIMESTAMP"\nstarting_position_timestamp = {value}',
    )
    try:
        code, _, err = validate_in_process(path)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"esm validate raised {type(exc).__name__}: {exc}")
    assert code == 2
    assert_names(err, "mappings[0].starting_position_timestamp")


@pytest.mark.parametrize(
    ("section", "line", "key"),
    [
        ("daemon", "drain_timeout = nan", "daemon.drain_timeout"),
        ("function", "timeout = nan", "functions.f.timeout"),
        (
            "mapping",
            "maximum_batching_window_in_seconds = nan",
            "mappings[0].maximum_batching_window_in_seconds",
        ),
    ],
)
def test_nan_is_not_a_valid_number(tmp_path: Path, section: str, line: str, key: str) -> None:
    """NaN compares false with every bound, so a range check that only asks `< low` and
    `> high` lets it through; at run time it breaks every deadline computed from it."""
    path, _ = write_config(tmp_path, **{section: line})
    code, _, err = validate_in_process(path)
    assert code == 2, "NaN was accepted"
    assert_names(err, key)


def test_esm_run_with_nan_drain_timeout_exits_2_without_traceback(tmp_path: Path) -> None:
    path, port = write_config(tmp_path, daemon="drain_timeout = nan")
    code, output, started = esm_run(path, http_port=port)
    assert "Traceback" not in output, output[-3000:]
    assert not started and code == 2, output[-3000:]


@pytest.mark.parametrize(
    "environment",
    ['{ "A=B" = "x" }', '{ "" = "x" }', '{ A = "x\\u0000y" }'],
    ids=["equals-in-name", "empty-name", "nul-in-value"],
)
def test_environment_that_cannot_be_set_is_a_config_problem(
    tmp_path: Path, environment: str
) -> None:
    """`environment` is applied to os.environ, which refuses these; validate must say so,
    and `esm run` must not crash with a traceback while loading the function."""
    path, port = write_config(tmp_path, function=f"environment = {environment}")
    problems = []
    code, _, err = validate_in_process(path)
    if code != 2 or not any(
        line.startswith("functions.f.environment") for line in err.splitlines()
    ):
        problems.append(
            f"esm validate exited {code} without naming functions.f.environment: {err!r}"
        )
    run_code, output, started = esm_run(path, http_port=port)
    if "Traceback" in output or started or run_code != 2:
        problems.append(f"esm run exited {run_code} (started: {started}):\n{output[-1500:]}")
    assert not problems, "\n".join(problems)


def test_one_line_per_problem_even_for_key_names_with_newlines(tmp_path: Path) -> None:
    """Key names are user text: a newline in one must not split a problem over two lines."""
    path = tmp_path / "esm.toml"
    path.write_text('[functions."bad\\nname"]\nkind = "java"\ntimeout = 0\n', encoding="utf-8")
    code, _, err = validate_in_process(path)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 2, f"expected 2 problems (kind, timeout) on 2 lines, got:\n{err}"
    assert all(line.startswith("functions.") for line in lines), err


def test_missing_file_and_directory_are_named(tmp_path: Path) -> None:
    for path in (tmp_path / "absent.toml", tmp_path):
        for command in ("validate", "run"):
            result = esm(command, "-c", str(path))
            assert "Traceback" not in result.stderr
            assert result.returncode == 2
            assert result.stderr.startswith(f"{path}: "), result.stderr


# --- hostile and huge files: validate and a running daemon's reload -----------------------


@pytest.mark.parametrize("shape", NESTINGS)
def test_deeply_nested_file_is_one_line_without_traceback(tmp_path: Path, shape: str) -> None:
    """tomllib recurses per nested array or inline table: 600 levels raised RecursionError."""
    path, _ = write_config(tmp_path)
    path.write_text(path.read_text() + deeply_nested(shape, 600))
    code, _, err = validate_in_process(path)
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.startswith(f"{path}: nested more than"), err
    result = esm("validate", "-c", str(path))
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2 and result.stderr == err


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("9" * 5000, "{path}: not valid TOML (Exceeds the limit (4300 digits)"),
        ("0x" + "f" * 4000, "daemon.drain_timeout: integer outside TOML's 64-bit range"),
        ("9223372036854775808", "daemon.drain_timeout: integer outside TOML's 64-bit range"),
    ],
    ids=["5000-digits", "4000-hex-digits", "2^63"],
)
def test_integers_beyond_64_bits_are_one_line_without_traceback(
    tmp_path: Path, value: str, expected: str
) -> None:
    """tomllib raised ValueError on 5,000 decimal digits; a 4,000-digit hex integer parsed
    but could not be printed in its problem line (ValueError again)."""
    path, _ = write_config(tmp_path, daemon=f"drain_timeout = {value}")
    result = esm("validate", "-c", str(path))
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2
    assert result.stderr.startswith(expected.format(path=path)), result.stderr[:500]
    assert len(result.stderr.splitlines()) == 1


def test_file_above_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    from esm.config import MAX_CONFIG_BYTES

    path, _ = write_config(tmp_path)
    with path.open("a") as file:
        # 50 MB of valid TOML: a 12-byte line repeated, so only the size can refuse it.
        file.write("# padding.\n" * (50 * 1024 * 1024 // 11))
    assert path.stat().st_size > MAX_CONFIG_BYTES
    result = esm("validate", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr == (
        f"{path}: larger than the maximum config file size ({MAX_CONFIG_BYTES} bytes)\n"
    )


def test_many_mappings_under_the_size_limit_are_valid(tmp_path: Path) -> None:
    """The limit leaves room: 10,000 mappings (1.3 MB) validate."""
    path, _ = write_config(tmp_path)
    with path.open("a") as file:
        for i in range(10_000):
            file.write(
                f'[[mappings]]\nname = "m{i}"\nfunction = "f"\n'
                f'event_source_arn = "arn:aws:sqs:us-east-1:000000000000:q{i}"\n'
            )
    code, out, err = validate_in_process(path)
    assert code == 0, err[:2000]
    assert "10001 mappings" in out


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "esm.toml"
    os.mkfifo(path)
    result = esm("validate", "-c", str(path), timeout=30)
    assert result.returncode == 2
    assert result.stderr == f"{path}: not a regular file\n"


def test_hostile_files_never_take_a_running_daemon_down(
    endpoint: str, sqs: Any, unique: str, tmp_path: Path
) -> None:
    """Each hostile file, sent by SIGHUP or POST /-/reload, is one `daemon.reload_rejected`
    line; the daemon keeps handling its mapping, applies the next valid file, and drains on
    SIGTERM (exit 0). Before the fix the deeply nested file ended the daemon at once, and a
    handler that could not load left its mappings stopped."""
    from test_sqs_mapping import make_queue

    url_a, arn_a = make_queue(sqs, f"cfg-a-{unique}", VisibilityTimeout="2")
    url_b, arn_b = make_queue(sqs, f"cfg-b-{unique}", VisibilityTimeout="2")
    record_path = tmp_path / "handled.jsonl"
    config = tmp_path / "esm.toml"
    port = free_port()

    def valid(*arns: str, handler: str = "recorder.write_to_file") -> str:
        mappings = "".join(
            f'[[mappings]]\nname = "m{i}"\nfunction = "w"\nevent_source_arn = "{arn}"\n'
            for i, arn in enumerate(arns)
        )
        return (
            f'[daemon]\nendpoint_url = "{endpoint}"\nhttp_address = "127.0.0.1:{port}"\n'
            f'[functions.w]\nhandler = "{handler}"\ncode_path = "{HANDLERS}"\n'
            f'timeout = 1\nenvironment = {{ RECORD_PATH = "{record_path}" }}\n{mappings}'
        )

    def handled() -> str:
        return record_path.read_text() if record_path.exists() else ""

    config.write_text(valid(arn_a))
    log_path = tmp_path / "esm.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )

    def logged() -> str:
        return log_path.read_text()

    def reload(by_signal: bool) -> None:
        if by_signal:
            proc.send_signal(signal.SIGHUP)
        else:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/-/reload", method="POST", data=b""
            )
            urllib.request.urlopen(request, timeout=5).close()

    hostile_files: list[tuple[str, Any]] = [
        ("arrays", lambda: config.write_text(valid(arn_a) + deeply_nested("arrays", 600))),
        (
            "inline-tables",
            lambda: config.write_text(valid(arn_a) + deeply_nested("inline-tables", 600)),
        ),
        ("50 MB", lambda: config.write_text(valid(arn_a) + "# padding.\n" * 4_800_000)),
        ("not UTF-8", lambda: config.write_bytes(b"\xff\xfe[daemon]\n")),
        ("directory", lambda: (config.unlink(), config.mkdir())),
    ]
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        sqs.send_message(QueueUrl=url_a, MessageBody="before")
        wait_until(lambda: "before" in handled())
        for count, (what, write) in enumerate(hostile_files, start=1):
            write()
            reload(by_signal=count % 2 == 1)
            wait_until(lambda n=count: logged().count("daemon.reload_rejected") == n)
            assert proc.poll() is None, f"the daemon exited after the {what} file:\n{logged()}"
            sqs.send_message(QueueUrl=url_a, MessageBody=f"after {what}")
            wait_until(lambda w=what: f"after {w}" in handled())
        config.rmdir()
        # A valid file whose changed handler cannot be imported applies, as UpdateFunctionCode
        # does on Lambda: the import failure is the function's init error, not the daemon's.
        config.write_text(valid(arn_a, arn_b, handler="no_such_module.handle"))
        reload(by_signal=True)
        wait_until(lambda: "function.init_failed" in logged())
        wait_until(lambda: logged().count("daemon.reloaded") == 1)
        assert proc.poll() is None, f"the daemon exited after an unloadable handler:\n{logged()}"
        config.write_text(valid(arn_a, arn_b))
        reload(by_signal=True)
        sqs.send_message(QueueUrl=url_b, MessageBody="new mapping")
        wait_until(lambda: "new mapping" in handled())
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    lines = logged().splitlines()
    assert proc.returncode == 0, logged()[-3000:]
    assert "Traceback" not in logged()
    events = [json.loads(line) for line in lines]  # every line one JSON event
    rejected = [e for e in events if e["event"] == "daemon.reload_rejected"]
    assert len(rejected) == len(hostile_files)
    assert all(len(e["problems"]) == 1 for e in rejected), rejected
    assert [e["event"] for e in events].count("daemon.reloaded") == 2
    assert "daemon.stopped" in [e["event"] for e in events]
