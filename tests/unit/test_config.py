"""Config validation: every problem named by key path and rule, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from esm.config import load_config, parse_config
from esm.errors import ConfigError

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
FIFO = "arn:aws:sqs:us-east-1:123456789012:orders.fifo"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
DDB = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2024-01-01T00:00:00.000"
ROOT = Path(__file__).resolve().parents[2]


def problems_of(mapping: dict, functions: dict | None = None, **top: object) -> list[str]:
    raw = {
        "functions": functions or {"f": {"handler": "app.handle"}},
        "mappings": [{"function": "f", **mapping}],
        **top,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value.problems


def test_valid_sqs_mapping_gets_lambda_defaults() -> None:
    config = parse_config(
        {
            "functions": {"f": {"handler": "app.handle"}},
            "mappings": [{"function": "f", "event_source_arn": QUEUE}],
        }
    )
    m = config.mappings[0]
    assert (m.batch_size, m.maximum_batching_window_in_seconds, m.enabled) == (10, 0.0, True)
    assert m.source.kind == "sqs" and m.source.name == "orders"
    assert config.functions["f"].timeout == 3.0
    assert config.daemon.http_port == 9464


def test_idle_shards_are_read_at_lambdas_pace_unless_a_budget_is_set() -> None:
    """No shared idle read budget by default (each caught-up shard read about once a second,
    as Lambda does); the budget is an opt-in number of reads per second, 1..100,000."""
    base = {
        "functions": {"f": {"handler": "app.handle"}},
        "mappings": [{"function": "f", "event_source_arn": STREAM, "starting_position": "LATEST"}],
    }
    assert parse_config(base).daemon.idle_shard_reads_per_second is None
    budget = parse_config({**base, "daemon": {"idle_shard_reads_per_second": 30}})
    assert budget.daemon.idle_shard_reads_per_second == 30.0
    problems = problems_of(
        {"event_source_arn": QUEUE}, daemon={"idle_shard_reads_per_second": 100_001}
    )
    assert "daemon.idle_shard_reads_per_second: 100001 is above the maximum 100000" in problems


def test_stream_mapping_defaults_to_batch_size_100() -> None:
    config = parse_config(
        {
            "functions": {"f": {"handler": "app.handle"}},
            "mappings": [
                {"function": "f", "event_source_arn": STREAM, "starting_position": "LATEST"}
            ],
        }
    )
    m = config.mappings[0]
    assert (
        m.batch_size,
        m.maximum_retry_attempts,
        m.maximum_record_age_in_seconds,
        m.parallelization_factor,
    ) == (100, -1, -1, 1)


@pytest.mark.parametrize(
    ("mapping", "expected"),
    [
        (
            {"event_source_arn": QUEUE, "batch_size": 20000},
            "mappings[0].batch_size: 20000 is above the maximum 10000 for SQS",
        ),
        (
            {"event_source_arn": QUEUE, "batch_size": 0},
            "mappings[0].batch_size: 0 is below the minimum 1 for SQS",
        ),
        (
            {"event_source_arn": FIFO, "batch_size": 11, "maximum_batching_window_in_seconds": 1},
            "mappings[0].batch_size: 11 is above the maximum 10 for FIFO SQS",
        ),
        (
            {"event_source_arn": QUEUE, "batch_size": 50},
            "mappings[0].maximum_batching_window_in_seconds:"
            " must be at least 1 when batch_size is above 10",
        ),
        (
            {"event_source_arn": QUEUE, "maximum_batching_window_in_seconds": 301},
            "mappings[0].maximum_batching_window_in_seconds: 301 is above the maximum 300",
        ),
        (
            {"event_source_arn": QUEUE, "batch_size": "10"},
            "mappings[0].batch_size: must be an integer, not string '10'",
        ),
        ({"event_source_arn": QUEUE, "batchsize": 10}, "mappings[0].batchsize: unknown key"),
        (
            {"event_source_arn": QUEUE, "scaling_config": {"maximum_concurrency": 1}},
            "mappings[0].scaling_config.maximum_concurrency: 1 is below the minimum 2",
        ),
        (
            {"event_source_arn": QUEUE, "scaling_config": {"maximum_concurrency": 1001}},
            "mappings[0].scaling_config.maximum_concurrency: 1001 is above the maximum 1000",
        ),
        (
            {"event_source_arn": QUEUE, "function_response_types": ["Partial"]},
            "mappings[0].function_response_types: 'Partial' is not one of ReportBatchItemFailures",
        ),
        (
            {"event_source_arn": QUEUE, "starting_position": "LATEST"},
            "mappings[0].starting_position: applies to Kinesis and DynamoDB streams only, not SQS",
        ),
        (
            {"event_source_arn": QUEUE, "enabled": "yes"},
            "mappings[0].enabled: must be true or false",
        ),
        (
            {"event_source_arn": "arn:aws:s3:::bucket"},
            "mappings[0].event_source_arn: 'arn:aws:s3:::bucket' is"
            " not an SQS queue, Kinesis stream or DynamoDB stream ARN",
        ),
        ({"event_source_arn": "orders"}, "mappings[0].event_source_arn: 'orders' is not an ARN"),
        ({}, "mappings[0].event_source_arn: is required"),
        (
            {"event_source_arn": QUEUE, "function": "nope"},
            "mappings[0].function: 'nope' is not a [functions.*] entry (known: f)",
        ),
        ({"event_source_arn": STREAM}, "mappings[0].starting_position: is required"),
        (
            {"event_source_arn": STREAM, "starting_position": "EARLIEST"},
            "mappings[0].starting_position: 'EARLIEST' is"
            " not one of TRIM_HORIZON, LATEST, AT_TIMESTAMP",
        ),
        (
            {
                "event_source_arn": DDB,
                "starting_position": "AT_TIMESTAMP",
                "starting_position_timestamp": 1,
            },
            "mappings[0].starting_position: 'AT_TIMESTAMP' is not one of TRIM_HORIZON, LATEST",
        ),
        (
            {"event_source_arn": STREAM, "starting_position": "AT_TIMESTAMP"},
            "mappings[0].starting_position_timestamp: is"
            " required when starting_position is AT_TIMESTAMP",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "parallelization_factor": 11,
            },
            "mappings[0].parallelization_factor: 11 is above the maximum 10",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "maximum_retry_attempts": -2,
            },
            "mappings[0].maximum_retry_attempts: -2 is below the minimum -1",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "maximum_record_age_in_seconds": 30,
            },
            "mappings[0].maximum_record_age_in_seconds: 30"
            " is not allowed: use -1 (infinite) or 60..604800",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "tumbling_window_in_seconds": 901,
            },
            "mappings[0].tumbling_window_in_seconds: 901 is above the maximum 900",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "destination_config": {
                    "on_failure": {"destination": "arn:aws:lambda:us-east-1:1:function:x"}
                },
            },
            "mappings[0].destination_config.on_failure.destination:"
            " 'arn:aws:lambda:us-east-1:1:function:x' is not an SQS queue,"
            " SNS topic or S3 bucket ARN",
        ),
        (
            {
                "event_source_arn": STREAM,
                "starting_position": "LATEST",
                "scaling_config": {"maximum_concurrency": 5},
            },
            "mappings[0].scaling_config: applies to SQS only",
        ),
        (
            {"event_source_arn": QUEUE, "filter_criteria": {"filters": [{"pattern": "{}"}] * 6}},
            "mappings[0].filter_criteria.filters: has 6 filters; at most 5 are allowed",
        ),
    ],
)
def test_each_problem_names_the_key_and_the_rule(mapping: dict, expected: str) -> None:
    problems = problems_of(mapping)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        (
            {"handler": "app.handle", "timeout": 901},
            "functions.f.timeout: 901 is above the maximum 900",
        ),
        ({"handler": "app.handle", "timeout": 0}, "functions.f.timeout: 0 is below the minimum 1"),
        ({"handler": "handle"}, "functions.f.handler: 'handle' is not module.function"),
        ({}, "functions.f.handler: is required"),
        (
            {"handler": "app.handle", "kind": "java"},
            "functions.f.kind: 'java' is not one of python",
        ),
        (
            {"handler": "app.handle", "environment": {"A": 1}},
            "functions.f.environment.A: must be a string, not integer",
        ),
        ({"handler": "app.handle", "memory": 128}, "functions.f.memory: unknown key"),
    ],
)
def test_function_problems_name_the_key(function: dict, expected: str) -> None:
    problems = problems_of({"event_source_arn": QUEUE}, functions={"f": function})
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        ({"daemon": {"http_address": "nope"}}, "daemon.http_address: 'nope' is not HOST:PORT"),
        ({"daemon": {"log_format": "xml"}}, "daemon.log_format: 'xml' is not one of json, console"),
        ({"daemon": {"regoin": "x"}}, "daemon.regoin: unknown key"),
        (
            {"daemon": {"idle_shard_reads_per_second": 0}},
            "daemon.idle_shard_reads_per_second: 0 is below the minimum 1",
        ),
        ({"state": {"backend": "redis"}}, "state.backend: 'redis' is not one of sqlite"),
        ({"extra": 1}, "extra: unknown key"),
    ],
)
def test_top_level_problems_name_the_key(top: dict, expected: str) -> None:
    problems = problems_of({"event_source_arn": QUEUE}, **top)
    assert any(p.startswith(expected) for p in problems), problems


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_of(
        {
            "event_source_arn": QUEUE,
            "batch_size": 0,
            "maximum_batching_window_in_seconds": -1,
            "typo": 1,
        }
    )
    assert len(problems) == 3


def test_a_bad_arn_does_not_hide_the_mappings_other_problems() -> None:
    """One pass lists everything: the destination placeholder and the batch size were only
    reported once the ARN was fixed, and a placeholder ARN was reported twice."""
    placeholder = "<unresolved: OrdersStream.Arn>"
    problems = problems_of(
        {
            "event_source_arn": placeholder,
            "starting_position": "LATEST",
            "batch_size": 0,
            "destination_config": {"on_failure": {"destination": "<unresolved: Dlq.Arn>"}},
        }
    )
    assert problems == [
        f"mappings[0].event_source_arn: {placeholder} is a placeholder left by esm import: "
        "set the real value",
        "mappings[0].destination_config.on_failure.destination: <unresolved: Dlq.Arn> is a "
        "placeholder left by esm import: set the real value",
        "mappings[0].batch_size: 0 is below the minimum 1",
    ]


@pytest.mark.parametrize(
    ("arn", "expected"),
    [
        ("arn:aws:kinesis:us-east-1:1:clicks", "mappings[0].starting_position: is required"),
        ("arn:aws:sqs:us-east-1:1:a/b", "mappings[0].batch_size: 20000 is above the maximum 10000"),
        ("not-an-arn", "mappings[0].batch_size: 20000 is above the maximum 10000"),
    ],
)
def test_a_bad_arn_is_reported_once_beside_the_kinds_other_problems(
    arn: str, expected: str
) -> None:
    problems = problems_of({"event_source_arn": arn, "batch_size": 20000, "typo": 1})
    assert [p for p in problems if p.startswith("mappings[0].event_source_arn")] == [
        next(p for p in problems if "event_source_arn" in p)
    ]
    assert any(p.startswith(expected) for p in problems), problems
    assert "mappings[0].typo: unknown key" in problems


def test_placeholders_are_reported_once_whatever_the_key() -> None:
    value = "<unresolved: X>"
    problems = problems_of(
        {
            "event_source_arn": STREAM,
            "starting_position": value,
            "starting_position_timestamp": value,
            "batch_size": value,
        }
    )
    assert sorted(problems) == sorted(
        f"mappings[0].{key}: {value} is a placeholder left by esm import: set the real value"
        for key in ("starting_position", "starting_position_timestamp", "batch_size")
    )


def test_an_unknown_kind_is_one_line_not_a_cascade() -> None:
    """Checking the keys against the default kind said "url: does not apply to kind
    'python'" and "handler: is required" for a mistyped kind = "htp"."""
    functions = {"f": {"kind": "htp", "url": "http://127.0.0.1:8080/", "typo": 1}}
    problems = problems_of({"event_source_arn": QUEUE}, functions)
    assert problems == [
        "functions.f.kind: 'htp' is not one of python, process, http, lambda",
        "functions.f.typo: unknown key",
    ]


def test_duplicate_names_count_mappings_with_other_problems() -> None:
    raw = {
        "functions": {"f": {"handler": "app.handle"}},
        "mappings": [
            {"name": "a", "function": "f", "event_source_arn": "bad"},
            {"name": "a", "function": "f", "event_source_arn": QUEUE},
        ],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.problems == [
        "mappings[0].event_source_arn: 'bad' is not an ARN "
        "(arn:PARTITION:SERVICE:REGION:ACCOUNT:RESOURCE)",
        "mappings[1].name: 'a' is already used by mappings[0]",
    ]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://user:secret@127.0.0.1:4566", "must not carry credentials (user:password@)"),
        ("http://user:secret@127.0.0.1:99999", "the value is not an http:// or https:// URL"),
        ("ftp://127.0.0.1:4566", "'ftp://127.0.0.1:4566' is not an http:// or https:// URL"),
        ("localhost:4566", "'localhost:4566' is not an http:// or https:// URL"),
        ("http://127.0.0.1:4566/?region=x", "must not have a query"),
        ("http://127.0.0.1:4566/#top", "must not have a fragment"),
        ("http://127.0.0.1:4566 ", "is not an http:// or https:// URL"),
    ],
)
def test_endpoint_urls_that_cannot_work_are_refused(url: str, expected: str) -> None:
    """`user:pass@` passed validate and left every mapping unavailable with an opaque
    aiohttp error; a secret in the URL is never echoed."""
    functions = {
        "f": {"handler": "app.handle"},
        "l": {"kind": "lambda", "function_name": "x", "endpoint_url": url},
    }
    problems = problems_of({"event_source_arn": QUEUE}, functions, daemon={"endpoint_url": url})
    for key in ("daemon.endpoint_url", "functions.l.endpoint_url"):
        assert any(p.startswith(f"{key}: ") and expected in p for p in problems), problems
    assert not any("secret" in p for p in problems), problems


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4566",
        "https://sqs.eu-west-1.amazonaws.com",
        "http://[::1]:4566/",
        "http://localstack:4566/prefix",
    ],
)
def test_endpoint_urls_that_work_are_kept(url: str) -> None:
    config = parse_config({"daemon": {"endpoint_url": url}})
    assert config.daemon.endpoint_url == url


def test_config_file_size_and_nesting_are_bounded(tmp_path: Path) -> None:
    from esm.config import MAX_CONFIG_BYTES, MAX_NESTING

    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * MAX_CONFIG_BYTES + b"\n")
    with pytest.raises(ConfigError, match="larger than the maximum config file size"):
        load_config(big)
    deep = tmp_path / "deep.toml"
    deep.write_text("[" + ".".join(["a"] * (MAX_NESTING + 1)) + "]\n")
    with pytest.raises(ConfigError) as info:
        load_config(deep)
    assert info.value.problems == [
        f"{deep}: nested more than {MAX_NESTING} levels deep at "
        + ".".join(["a"] * (MAX_NESTING + 1))
    ]
    fine = tmp_path / "fine.toml"
    fine.write_text("[" + ".".join(["a"] * MAX_NESTING) + "]\n")
    with pytest.raises(ConfigError) as info:
        load_config(fine)
    assert info.value.problems == ["a: unknown key"]


def test_duplicate_mapping_names_are_rejected() -> None:
    raw = {
        "functions": {"f": {"handler": "app.handle"}},
        "mappings": [{"name": "a", "function": "f", "event_source_arn": QUEUE}] * 2,
    }
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert info.value.problems == ["mappings[1].name: 'a' is already used by mappings[0]"]


def test_invalid_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[daemon\nregion = 1")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0].startswith(f"{path}: not valid TOML")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esm", *args], capture_output=True, text=True, timeout=60
    )


def test_validate_accepts_the_example_config() -> None:
    result = run_cli("validate", "-c", str(ROOT / "config.example.toml"))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_exits_2_with_one_line_per_problem_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[functions.f]\nhandler = "app.handle"\n'
        '[[mappings]]\nfunction = "f"\nevent_source_arn = "arn:aws:sqs:us-east-1:1:q"\n'
        "batch_size = 20000\n"
    )
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "mappings[0].batch_size: 20000 is above the maximum 10000 for SQS"
    ]
    assert "Traceback" not in result.stderr


def test_run_with_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run_cli("run", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode == 2
    assert "cannot read the config file" in result.stderr
    assert "Traceback" not in result.stderr


# --- function kinds: process, http, lambda ---------------------------------------------


def function_problems(section: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config({"functions": {"x": section}})
    return info.value.problems


def test_process_kind_defaults_to_the_built_in_client_and_takes_a_command() -> None:
    functions = parse_config(
        {
            "functions": {
                "default": {"kind": "process", "handler": "app.handle", "memory_size": 256},
                "custom": {
                    "kind": "process",
                    "command": ["./bootstrap"],
                    "handler": "function.handler",
                },
                "bare": {"kind": "process", "command": ["./bootstrap"]},
            }
        }
    ).functions
    assert (functions["default"].command, functions["default"].memory_size) == (None, 256)
    assert functions["custom"].command == ("./bootstrap",)
    assert functions["bare"].handler == "", "a custom runtime may leave handler unset"


def test_http_kind_keys_and_defaults() -> None:
    f = parse_config(
        {
            "functions": {
                "x": {
                    "kind": "http",
                    "url": "https://app.internal:8443/events",
                    "headers": {"X-Tenant": "blue"},
                    "bearer_token_env": "APP_TOKEN",
                    "timeout": 30,
                }
            }
        }
    ).functions["x"]
    assert (f.url, dict(f.headers), f.bearer_token_env, f.verify_tls, f.timeout) == (
        "https://app.internal:8443/events",
        {"X-Tenant": "blue"},
        "APP_TOKEN",
        True,
        30.0,
    )


def test_lambda_kind_accepts_names_qualifiers_and_arns() -> None:
    for name in (
        "orders",
        "orders:live",
        "orders:$LATEST",
        "arn:aws:lambda:eu-west-1:123456789012:function:orders:7",
    ):
        f = parse_config({"functions": {"x": {"kind": "lambda", "function_name": name}}}).functions[
            "x"
        ]
        assert (f.function_name, f.endpoint_url) == (name, None)


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ({"kind": "process"}, "functions.x.handler: is required"),
        (
            {"kind": "process", "handler": "app"},
            "functions.x.handler: 'app' is not module.function",
        ),
        (
            {"kind": "process", "handler": "a.b", "command": []},
            "functions.x.command: must be a non-empty list of strings",
        ),
        (
            {"kind": "process", "handler": "a.b", "command": "./bootstrap"},
            "functions.x.command: must be a non-empty list of strings",
        ),
        (
            {"kind": "process", "handler": "a.b", "memory_size": 64},
            "functions.x.memory_size: 64 is below the minimum 128",
        ),
        (
            {"kind": "process", "handler": "a.b", "url": "http://x"},
            "functions.x.url: does not apply to kind = 'process' (it applies to kind 'http')",
        ),
        (
            {"kind": "python", "handler": "a.b", "command": ["x"]},
            "functions.x.command: does not apply to kind = 'python' (it applies to kind 'process')",
        ),
        ({"kind": "http"}, "functions.x.url: is required"),
        (
            {"kind": "http", "url": "ftp://host/x"},
            "functions.x.url: 'ftp://host/x' is not an http:// or https:// URL with a host",
        ),
        (
            {"kind": "http", "url": "http:///path"},
            "functions.x.url: 'http:///path' is not an http:// or https:// URL",
        ),
        (
            {"kind": "http", "url": "http://h/", "headers": {"Authorization": "Bearer abc"}},
            "functions.x.headers: Authorization must not be written in the config file",
        ),
        (
            {"kind": "http", "url": "http://h/", "headers": {"Bad Header": "v"}},
            "functions.x.headers: 'Bad Header' is not a valid HTTP header name",
        ),
        (
            {"kind": "http", "url": "http://h/", "headers": {"X-N": 1}},
            "functions.x.headers.X-N: must be a string",
        ),
        (
            {"kind": "http", "url": "http://h/", "bearer_token_env": "Bearer abc123"},
            "functions.x.bearer_token_env: 'Bearer abc123' is not an environment variable name",
        ),
        (
            {"kind": "http", "url": "http://h/", "verify_tls": "no"},
            "functions.x.verify_tls: must be true or false",
        ),
        (
            {"kind": "http", "url": "http://h/", "handler": "a.b"},
            "functions.x.handler: does not apply to kind = 'http'",
        ),
        (
            {"kind": "http", "url": "http://h/", "environment": {}},
            "functions.x.environment: does not apply to kind = 'http'",
        ),
        (
            {"kind": "http", "url": "http://h/", "function_name": "f"},
            "functions.x.function_name: does not apply to"
            " kind = 'http' (it applies to kind 'lambda')",
        ),
        ({"kind": "lambda"}, "functions.x.function_name: is required"),
        (
            {"kind": "lambda", "function_name": "my function"},
            "functions.x.function_name: 'my function' is not a Lambda function name or ARN",
        ),
        (
            {"kind": "lambda", "function_name": "f", "endpoint_url": "localhost:9000"},
            "functions.x.endpoint_url: 'localhost:9000' is not an http:// or https:// URL",
        ),
        (
            {"kind": "lambda", "function_name": "f", "memory_size": 256},
            "functions.x.memory_size: does not apply to kind = 'lambda'",
        ),
        (
            {"kind": "lambda", "function_name": "f", "url": "http://h/"},
            "functions.x.url: does not apply to kind = 'lambda'",
        ),
        (
            {"kind": "lambda", "function_name": "f", "timeout": 901},
            "functions.x.timeout: 901 is above the maximum 900",
        ),
        (
            {"kind": "lambda", "function_name": "f", "reserved_concurrent_executions": 0},
            "functions.x.reserved_concurrent_executions: 0 is below the minimum 1",
        ),
        (
            {"kind": "container"},
            "functions.x.kind: 'container' is not one of python, process, http, lambda",
        ),
        ({"kind": "http", "url": "http://h/", "typo": 1}, "functions.x.typo: unknown key"),
    ],
)
def test_function_kind_problems_name_the_key(section: dict, expected: str) -> None:
    problems = function_problems(section)
    assert any(p.startswith(expected) for p in problems), problems
