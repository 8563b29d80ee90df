"""`esm import`: SAM / CloudFormation templates -> esm config, checked through load_config."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from esm.cli import main
from esm.config import load_config
from esm.errors import ConfigError
from esm.importer import import_template, toml_writer
from esm.importer.template import load_template

TEMPLATES = Path(__file__).parent.parent / "templates"
QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
FAILURES = "arn:aws:sqs:us-east-1:123456789012:failures"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
TABLE_STREAM = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"
SAM_PARAMS = {
    "OrdersQueueArn": QUEUE,
    "FailureQueueArn": FAILURES,
    "OrdersStreamArn": STREAM,
    "OrdersTableStreamArn": TABLE_STREAM,
    "OrdersTable": "orders",
}


def write(
    tmp_path: Path, template: str, params: dict[str, str], **options
) -> tuple[Path, list[str]]:  # type: ignore[no-untyped-def]
    result = import_template(TEMPLATES / template, params, output_dir=tmp_path, **options)
    path = tmp_path / "config.toml"
    path.write_text(result.text, encoding="utf-8")
    return path, result.report


def test_sam_events_become_mappings_with_globals_applied(tmp_path: Path) -> None:
    path, _ = write(tmp_path, "sam_all_events.yaml", SAM_PARAMS)
    config = load_config(path)
    by_name = {m.name: m for m in config.mappings}
    assert list(by_name) == [
        "OrdersFunctionOrders",
        "OrdersFunctionClicks",
        "OrdersFunctionChanges",
        "NodeFunctionOrders",
    ]
    orders = by_name["OrdersFunctionOrders"]
    assert orders.event_source_arn == QUEUE
    assert orders.function == "OrdersFunction"
    assert orders.batch_size == 25  # !Ref of a Number parameter's default
    assert orders.maximum_batching_window_in_seconds == 2
    assert orders.report_batch_item_failures
    assert orders.maximum_concurrency == 4
    assert orders.filter_patterns == ('{"body": {"type": ["order"]}}',)
    clicks = by_name["OrdersFunctionClicks"]
    assert (clicks.source.kind, clicks.event_source_arn) == ("kinesis", STREAM)
    assert clicks.starting_position == "TRIM_HORIZON"
    assert clicks.batch_size == 200
    assert clicks.parallelization_factor == 4
    assert clicks.bisect_batch_on_function_error is True
    assert clicks.maximum_retry_attempts == 3
    assert clicks.maximum_record_age_in_seconds == 3600
    assert clicks.tumbling_window_in_seconds == 60
    assert clicks.on_failure_destination == FAILURES
    changes = by_name["OrdersFunctionChanges"]
    assert (changes.source.kind, changes.enabled, changes.starting_position) == (
        "dynamodb",
        False,
        "LATEST",
    )

    function = config.functions["OrdersFunction"]
    assert function.kind == "python"
    assert function.handler == "app.handler"
    assert function.code_path.resolve() == (TEMPLATES / "src").resolve()
    assert function.timeout == 30  # Globals
    assert function.memory_size == 512  # the function's own value wins over Globals
    assert function.reserved_concurrent_executions == 5
    assert dict(function.environment) == {
        "STAGE": "dev",
        "TABLE_NAME": "orders",
        "LOG_LEVEL": "debug",
    }
    assert "UnusedFunction" not in config.functions


def test_sam_non_python_runtime_becomes_process_with_its_bootstrap(tmp_path: Path) -> None:
    path, report = write(tmp_path, "sam_all_events.yaml", SAM_PARAMS)
    node = load_config(path).functions["NodeFunction"]
    assert node.kind == "process"
    assert node.command == ("npx", "aws-lambda-ric", "index.handler")
    assert (node.timeout, node.memory_size) == (10, 256)
    assert any(line.startswith("NodeFunction.Runtime: nodejs20.x") for line in report)


def test_properties_esm_cannot_honour_are_reported(tmp_path: Path) -> None:
    _, report = write(tmp_path, "sam_all_events.yaml", SAM_PARAMS)
    text = "\n".join(report)
    for expected in (
        "OrdersFunction.Layers: not carried over",
        "OrdersFunction.Tracing: not carried over",
        "OrdersFunction.Events.Changes.KmsKeyArn: not carried over",
        "OrdersFunction.Events.Http: event type 'Api' is not an event source mapping",
        "Globals.Api: not used",
        "UnusedFunction: function without an SQS, Kinesis or DynamoDB event",
    ):
        assert expected in text
    assert not any("placeholder" in line for line in report)


def test_cloudformation_mappings_with_intrinsics(tmp_path: Path) -> None:
    path, report = write(
        tmp_path,
        "cfn_mappings.yaml",
        {"Env": "test", "JobsQueueArn": QUEUE, "JobsQueue": "https://sqs/jobs"},
        region="eu-west-1",
        stack=None,
    )
    text = path.read_text()
    assert (
        "<unresolved: !Sub arn:${AWS::Partition}:kinesis:${AWS::Region}:${AWS::AccountId}" in text
    )
    path, report = write(
        tmp_path,
        "cfn_mappings.yaml",
        {
            "Env": "test",
            "JobsQueueArn": QUEUE,
            "JobsQueue": "https://sqs/jobs",
            "AWS::AccountId": "123456789012",
        },
        region="eu-west-1",
    )
    config = load_config(path)
    assert config.daemon.region == "eu-west-1"
    by_name = {m.name: m for m in config.mappings}
    jobs = by_name["JobsMapping"]
    assert (jobs.function, jobs.event_source_arn, jobs.batch_size) == ("Worker", QUEUE, 10)
    assert jobs.enabled is False  # !If [IsProd, true, false] with Env=test
    clicks = by_name["ClicksMapping"]
    assert clicks.function == "GoWorker"  # !GetAtt GoWorker.Arn
    assert clicks.event_source_arn == "arn:aws:kinesis:eu-west-1:123456789012:stream/clicks"
    assert clicks.starting_position == "AT_TIMESTAMP"
    assert clicks.starting_position_timestamp is not None
    assert clicks.maximum_retry_attempts == -1  # !Ref AWS::NoValue removes the property
    assert (
        by_name["ExternalMapping"].event_source_arn
        == "arn:aws:sqs:us-east-1:123456789012:billing-jobs"
    )
    assert (
        by_name["DebugMapping"].event_source_arn == "arn:aws:sqs:us-east-1:123456789012:debug-test"
    )
    worker = config.functions["Worker"]
    assert worker.kind == "python" and worker.code_path.resolve() == (TEMPLATES / "code").resolve()
    assert dict(worker.environment) == {"QUEUE_URL": "https://sqs/jobs", "MODE": "lenient"}
    go = config.functions["GoWorker"]
    assert (go.kind, go.command, go.handler) == ("process", ("./bootstrap",), "bootstrap")
    external = config.functions["billing-live"]
    assert (external.kind, external.function_name) == (
        "lambda",
        "arn:aws:lambda:us-east-1:123456789012:function:billing:live",
    )
    assert list(config.functions) == ["Worker", "GoWorker", "billing-live"]
    assert "ClicksMapping.Tags: not carried over (esm mappings have no tags)" in report
    assert any(line.startswith("GoWorker.Code: code is not a local path") for line in report)


def test_resources_whose_condition_is_false_are_left_out(tmp_path: Path) -> None:
    path, _ = write(tmp_path, "cfn_mappings.yaml", {"Env": "prod", "JobsQueueArn": QUEUE})
    names = [m["name"] for m in tomllib.loads(path.read_text())["mappings"]]
    assert "DebugMapping" not in names


def test_serverless_style_nested_intrinsics(tmp_path: Path) -> None:
    path, report = write(
        tmp_path,
        "serverless_nested.json",
        {
            "EventsTableStreamArn": TABLE_STREAM,
            "EventsTableArn": "arn:aws:dynamodb:us-east-1:1:table/events",
        },
        region="us-east-1",
    )
    config = load_config(path)
    (mapping,) = config.mappings
    assert mapping.function == "ProcessLambdaFunction"
    assert mapping.event_source_arn == TABLE_STREAM
    assert mapping.batch_size == 10  # Fn::FindInMap with a string "10"
    assert mapping.maximum_retry_attempts == 0
    assert mapping.enabled is True  # "True"
    # Fn::Join of Fn::Ref, Fn::If over Fn::And / Condition, and a nested Fn::Join
    assert mapping.on_failure_destination == "arn:aws:sqs:us-east-1:123456789012:app-dev-dlq"
    assert mapping.filter_patterns == ('{"eventName": ["INSERT"]}',)
    function = config.functions["ProcessLambdaFunction"]
    assert function.handler == "handlers.process.main"
    assert dict(function.environment) == {"EVENTS_TABLE": "events", "REGION": "us-east-1"}
    assert (function.timeout, function.memory_size) == (6, 1024)
    assert any(
        line.startswith("ProcessLambdaFunction.Code: code is not a local path") for line in report
    )


def test_unresolved_arns_are_placeholders_that_validate_rejects_by_key(tmp_path: Path) -> None:
    params = dict(SAM_PARAMS)
    del params["OrdersQueueArn"]
    path, report = write(tmp_path, "sam_all_events.yaml", params)
    assert (
        "<unresolved: !GetAtt OrdersQueue.Arn - pass --param OrdersQueueArn=... or --stack-name>"
        in path.read_text()
    )
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = raised.value.problems
    assert {p.split(":")[0] for p in problems} == {
        "mappings[0].event_source_arn",
        "mappings[3].event_source_arn",
    }
    assert (
        "mappings[0].event_source_arn: <unresolved: !GetAtt OrdersQueue.Arn - pass --param"
        " OrdersQueueArn=... or --stack-name> is a placeholder left by esm import: set the real value"
    ) in problems
    assert any(
        "mappings[0].event_source_arn, mappings[3].event_source_arn" in line for line in report
    )
    assert main(["validate", "-c", str(path)]) == 2


def test_lambda_flag_calls_the_deployed_functions(tmp_path: Path) -> None:
    path, report = write(
        tmp_path,
        "sam_all_events.yaml",
        {**SAM_PARAMS, "OrdersFunction": "orders-fn", "NodeFunction": "node-fn"},
        lambda_kind=True,
    )
    config = load_config(path)
    orders = config.functions["OrdersFunction"]
    assert (orders.kind, orders.function_name, orders.timeout) == ("lambda", "orders-fn", 30)
    assert orders.reserved_concurrent_executions == 5
    assert config.functions["NodeFunction"].function_name == "node-fn"
    assert "OrdersFunction.Environment: set on the deployed function, not by esm" in report


def test_import_twice_gives_the_same_bytes_through_the_cli(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["import", str(TEMPLATES / "sam_all_events.yaml")]
    args += [arg for key, value in SAM_PARAMS.items() for arg in ("--param", f"{key}={value}")]
    first, second = tmp_path / "a" / "config.toml", tmp_path / "b" / "config.toml"
    for out in (first, second):
        out.parent.mkdir()
        assert main([*args, "-o", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert main(["validate", "-c", str(first)]) == 0
    err = capsys.readouterr().err
    assert "esm import: OrdersFunction.Layers: not carried over" in err
    assert main([*args]) == 0  # no -o: the config goes to standard output
    assert len(tomllib.loads(capsys.readouterr().out)["mappings"]) == 4


def test_bad_param_and_missing_template_exit_2(tmp_path: Path) -> None:
    assert main(["import", str(TEMPLATES / "cfn_mappings.yaml"), "--param", "novalue"]) == 2
    assert main(["import", str(tmp_path / "missing.yaml")]) == 2


def test_yaml_short_form_tags_load_as_long_form(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "Resources:\n"
        "  A:\n"
        "    Type: X\n"
        "    Properties:\n"
        "      G: !GetAtt Q.Arn\n"
        "      S: !Sub [ '${x}', { x: !Ref P } ]\n"
        "      J: !Join [ '', [ a, !Select [ 0, !Split [ ',', 'b,c' ] ] ] ]\n"
        "      I: !If [ C, !Base64 x, !FindInMap [ M, k, v ] ]\n"
        "      D: 2024-01-01\n"
    )
    props = load_template(path)["Resources"]["A"]["Properties"]
    assert props["G"] == {"Fn::GetAtt": ["Q", "Arn"]}
    assert props["S"] == {"Fn::Sub": ["${x}", {"x": {"Ref": "P"}}]}
    assert props["J"] == {"Fn::Join": ["", ["a", {"Fn::Select": [0, {"Fn::Split": [",", "b,c"]}]}]]}
    assert props["I"] == {"Fn::If": ["C", {"Fn::Base64": "x"}, {"Fn::FindInMap": ["M", "k", "v"]}]}
    assert props["D"] == "2024-01-01"


def test_toml_writer_round_trips_through_tomllib() -> None:
    document = {
        "daemon": {"region": "us-east-1"},
        "functions": {
            "a.b": {"environment": {"K-1": 'quote " back\\ tab\t nl\n del\x7f é', "x y": ""}}
        },
        "mappings": [
            {
                "name": "m",
                "batch_size": 10,
                "window": 0.5,
                "on": True,
                "list": ["a", 1],
                "nested": {"filters": [{"pattern": '{"a": [1]}'}]},
                "empty": {},
            },
        ],
    }
    text = toml_writer.dumps(document, header="line one\nline two")
    assert text.startswith("# line one\n# line two\n")
    assert tomllib.loads(text) == document


def test_unknown_values_become_placeholders_never_crashes(tmp_path: Path) -> None:
    template = tmp_path / "edge.yaml"
    template.write_text(
        "Parameters:\n"
        "  Size: {Type: Number}\n"
        "Conditions:\n"
        "  Off: !Equals [a, b]\n"  # `Off` is a name here, not YAML 1.1's false
        "Resources:\n"
        "  M:\n"
        "    Type: AWS::Lambda::EventSourceMapping\n"
        "    Properties:\n"
        "      FunctionName: !Ref D\n"
        "      EventSourceArn: arn:aws:kinesis:us-east-1:123456789012:stream/s\n"
        "      StartingPosition: !Select [5, [LATEST]]\n"
        "      BatchSize: !Ref Size\n"
        "      DestinationConfig: !If [Off, {OnFailure: {Destination: x}}, !Ref AWS::NoValue]\n"
        "  D:\n"
        "    Type: AWS::Serverless::Function\n"
        "    Properties: {Runtime: dotnet8, Handler: A::B::C, CodeUri: s3://bucket/key}\n"
    )
    result = import_template(template, {}, output_dir=tmp_path)
    config_path = tmp_path / "config.toml"
    config_path.write_text(result.text)
    raw = tomllib.loads(result.text)
    (mapping,) = raw["mappings"]
    assert "destination_config" not in mapping
    assert mapping["batch_size"] == "<unresolved: !Ref Size - pass --param Size=...>"
    assert mapping["starting_position"].startswith("<unresolved: !Select")
    assert raw["functions"]["D"]["command"] == [
        "<unresolved: no bootstrap command known for runtime dotnet8 - set command>"
    ]
    assert result.placeholders == [
        "mappings[0].batch_size",
        "mappings[0].starting_position",
        "functions.D.command",
    ]
    with pytest.raises(ConfigError) as raised:
        load_config(config_path)
    # Every placeholder is refused by key, the command's included.
    assert list(dict.fromkeys(p.split(":")[0] for p in raised.value.problems)) == [
        "functions.D.command[0]",
        "mappings[0].batch_size",
        "mappings[0].starting_position",
    ]


def test_globals_merge_as_sam_does() -> None:
    from esm.importer.translate import merge_globals

    merged = merge_globals(
        {"Environment": {"Variables": {"A": "1", "B": "2"}}, "Layers": ["l1"], "Timeout": 3},
        {"Environment": {"Variables": {"B": "3"}}, "Layers": ["l2"], "Timeout": 9},
    )
    assert merged == {
        "Environment": {"Variables": {"A": "1", "B": "3"}},
        "Layers": ["l1", "l2"],
        "Timeout": 9,
    }
