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
        "UnusedFunction: function without an event source mapping event",
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
        " OrdersQueueArn=... or --stack-name> is a"
        " placeholder left by esm import: set the real value"
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


# -- #13: isolation, inline code, dependencies, the header and --help ----------------------

APPS = Path(__file__).parent.parent / "apps"
ORDERS_APP_PARAMS = {
    "OrdersQueueArn": QUEUE,
    "OrdersTable": "orders",
    "OrdersTableStreamArn": TABLE_STREAM,
    "AuditQueue": "https://sqs.us-east-1.amazonaws.com/123456789012/audit",
}


def sam_function(name: str, queue: str, extra: str = "", code: str = "src/") -> str:
    return f"""
  {name}:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      CodeUri: {code}
      Handler: app.handler
{extra}      Events:
        Queue:
          Type: SQS
          Properties:
            Queue: {queue}
"""


def sam_template(tmp_path: Path, *functions: str, head: str = "") -> Path:
    path = tmp_path / "template.yaml"
    path.write_text(
        "Transform: AWS::Serverless-2016-10-31\n" + head + "Resources:\n" + "".join(functions)
    )
    return path


def test_several_python_functions_run_as_processes_and_the_report_says_so(tmp_path: Path) -> None:
    result = import_template(
        APPS / "orders_app" / "template.yaml", ORDERS_APP_PARAMS, output_dir=tmp_path
    )
    raw = tomllib.loads(result.text)
    assert {f["kind"] for f in raw["functions"].values()} == {"process"}
    assert all("command" not in f for f in raw["functions"].values())  # esm's built-in client
    assert any(
        line.startswith(
            '2 Python functions (OrdersFunction, AuditFunction) run as kind = "process"'
        )
        for line in result.report
    )
    assert 'run as kind = "process"' in result.text  # also in the file's header


def test_a_single_python_function_stays_in_process(tmp_path: Path) -> None:
    path, report = write(tmp_path, "e2e_sqs.yaml", {"OrdersQueueArn": QUEUE})
    assert load_config(path).functions["RecorderFunction"].kind == "python"
    assert not any("Python functions" in line for line in report)


def test_inline_code_is_written_beside_the_config_under_the_handler_module(
    tmp_path: Path,
) -> None:
    template = sam_template(
        tmp_path,
        """
  Inline:
    Type: AWS::Serverless::Function
    Properties:
      Runtime: python3.12
      Handler: index.handler
      InlineCode: |
        def handler(event, context):
            return {"batchItemFailures": []}
      Events:
        Queue:
          Type: SQS
          Properties:
            Queue: arn:aws:sqs:us-east-1:123456789012:q
  Zipped:
    Type: AWS::Lambda::Function
    Properties:
      Runtime: nodejs20.x
      Handler: index.handler
      Code:
        ZipFile: !Sub "exports.handler = async () => '${AWS::Region}';"
  ZippedMapping:
    Type: AWS::Lambda::EventSourceMapping
    Properties:
      FunctionName: !Ref Zipped
      EventSourceArn: arn:aws:sqs:us-east-1:123456789012:q2
""",
    )
    out = tmp_path / "out"
    result = import_template(template, {}, output_dir=out, region="eu-west-1")
    assert result.files == {
        "inline/Inline/index.py": (
            'def handler(event, context):\n    return {"batchItemFailures": []}\n'
        ),
        "inline/Zipped/index.js": "exports.handler = async () => 'eu-west-1';\n",
    }
    raw = tomllib.loads(result.text)
    assert raw["functions"]["Inline"]["code_path"] == "inline/Inline"
    assert raw["functions"]["Zipped"]["code_path"] == "inline/Zipped"
    assert "Inline: inline code written to inline/Inline/index.py" in result.report


def test_inline_code_that_cannot_be_evaluated_is_reported_not_written(tmp_path: Path) -> None:
    template = sam_template(
        tmp_path,
        sam_function(
            "Fn", "arn:aws:sqs:us-east-1:123456789012:q",
            extra="      InlineCode: !Sub 'x = \"${Missing}\"'\n",
        ),
    )  # fmt: skip
    result = import_template(template, {}, output_dir=tmp_path)
    assert result.files == {}
    assert any(line.startswith("Fn: inline code cannot be evaluated") for line in result.report)


def test_requirements_and_local_layers_are_recorded_for_esm_build(tmp_path: Path) -> None:
    result = import_template(
        APPS / "orders_app" / "template.yaml", ORDERS_APP_PARAMS, output_dir=tmp_path
    )
    assert result.build_manifest is not None
    manifest = tomllib.loads(result.build_manifest)["functions"]
    orders = manifest["OrdersFunction"]
    assert orders["kind"] == "process"
    assert (tmp_path / orders["source"]).resolve() == (APPS / "orders_app/src/orders").resolve()
    assert (tmp_path / orders["requirements"]).resolve() == (
        APPS / "orders_app/src/orders/requirements.txt"
    ).resolve()
    layers = [(layer["name"], (tmp_path / layer["path"]).resolve()) for layer in orders["layers"]]
    assert layers == [("SharedLayer", (APPS / "orders_app/layers/shared/python").resolve())]
    assert orders["package"] == ".esm-build/OrdersFunction"
    raw = tomllib.loads(result.text)
    assert raw["functions"]["OrdersFunction"]["code_path"] == ".esm-build/OrdersFunction"
    assert "run `esm build -c <this file>` before `esm run`" in result.text


def test_a_function_without_requirements_needs_no_build(tmp_path: Path) -> None:
    result = import_template(
        TEMPLATES / "e2e_sqs.yaml", {"OrdersQueueArn": QUEUE}, output_dir=tmp_path
    )
    assert result.build_manifest is None
    assert "esm build" not in result.text


def test_layers_not_in_the_template_or_without_python_are_reported(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "bare").mkdir()
    template = sam_template(
        tmp_path,
        sam_function(
            "Fn", "arn:aws:sqs:us-east-1:123456789012:q",
            extra="      Layers:\n        - arn:aws:lambda:us-east-1:1:layer:x:1\n"
            "        - !Ref Bare\n        - !Ref Remote\n",
        ),
        """
  Bare:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: bare/
  Remote:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: s3://bucket/layer.zip
""",
    )  # fmt: skip
    (tmp_path / "local" / "python").mkdir(parents=True)
    template = sam_template(
        tmp_path,
        template.read_text().split("Resources:\n", 1)[1],
        sam_function(
            "InS3", "arn:aws:sqs:us-east-1:123456789012:q2", code="s3://bucket/code.zip",
            extra="      Layers:\n        - !Ref Local\n",
        ),
        "\n  Local:\n    Type: AWS::Serverless::LayerVersion\n"
        "    Properties:\n      ContentUri: local/\n",
    )  # fmt: skip
    result = import_template(template, {}, output_dir=tmp_path)
    text = "\n".join(result.report)
    assert "InS3.Layers: not carried over (the function's code is not local" in text
    assert "Fn.Layers: not carried over (arn:aws:lambda:us-east-1:1:layer:x:1 is not a" in text
    assert "Fn.Layers: not carried over (Bare has no python/ directory" in text
    assert "Fn.Layers: not carried over (Remote.ContentUri is not a local path" in text
    assert result.build_manifest is None


def test_in_process_requirements_esm_cannot_satisfy_are_reported_at_import(
    tmp_path: Path,
) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "requirements.txt").write_text("boto3==1.20.0\ntabulate\n")
    template = sam_template(tmp_path, sam_function("Fn", "arn:aws:sqs:us-east-1:123456789012:q"))
    result = import_template(template, {}, output_dir=tmp_path)
    conflict = [line for line in result.report if "does not satisfy" in line]
    assert len(conflict) == 1
    assert conflict[0].startswith("Fn: requirements esm's own environment does not satisfy: ")
    assert "boto3==1.20.0 (esm runs boto3 " in conflict[0]
    assert 'set kind = "process" for it' in conflict[0]
    assert "tabulate" not in conflict[0]  # esm does not have it: esm build installs it


def test_the_header_lists_the_params_used_and_masks_no_echo_ones(tmp_path: Path) -> None:
    template = sam_template(
        tmp_path,
        sam_function(
            "Fn", "!Ref QueueArn",
            extra="      Environment:\n        Variables:\n          TOKEN: !Ref Token\n",
        ),
        head="Parameters:\n  QueueArn:\n    Type: String\n  Token:\n    Type: String\n"
        "    NoEcho: true\n",
    )  # fmt: skip
    (tmp_path / "src").mkdir()
    result = import_template(
        template, {"QueueArn": QUEUE, "Token": "s3cret", "Unused": "x"}, output_dir=tmp_path
    )
    header = [line for line in result.text.splitlines() if line.startswith("#")]
    assert "#   --param QueueArn=" + QUEUE in header
    assert "#   --param Token=****" in header
    assert "s3cret" not in "\n".join(header)
    assert not any("--param Unused=" in line for line in header[:4])  # reported as unused
    assert any("--param Unused: not used by the template" in line for line in header)


def test_import_help_says_what_each_ref_expects(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    text = capsys.readouterr().out
    assert "QueueArn=arn:aws:sqs:" in text
    assert "a queue's Ref is its URL, not its ARN" in text
    assert "TableStreamArn=arn:aws:dynamodb:" in text
    assert 'kind = "process"' in text


def test_cli_writes_inline_code_and_the_build_manifest_and_removes_a_stale_one(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out" / "esm.toml"
    args = ["import", str(APPS / "orders_app" / "template.yaml"), "-o", str(out)]
    args += [f"--param={k}={v}" for k, v in ORDERS_APP_PARAMS.items()]
    assert main(args) == 0
    assert (out.parent / "esm-build.toml").is_file()
    assert "next: esm build -c" in capsys.readouterr().err
    assert main(["import", str(TEMPLATES / "e2e_sqs.yaml"), f"--param=OrdersQueueArn={QUEUE}",
                 "-o", str(out)]) == 0  # fmt: skip
    assert not (out.parent / "esm-build.toml").exists()
    assert main(["build", "-c", str(out)]) == 0
    assert "nothing to build" in capsys.readouterr().out


# -- esm build (real pip, against the machine's configured index) --------------------------


def imported_single_function(tmp_path: Path, requirements: str) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("def handler(event, context):\n    return None\n")
    (tmp_path / "src" / "requirements.txt").write_text(requirements)
    template = sam_template(tmp_path, sam_function("Fn", "arn:aws:sqs:us-east-1:123456789012:q"))
    config = tmp_path / "out" / "esm.toml"
    assert main(["import", str(template), "-o", str(config)]) == 0
    return config


def test_build_refuses_in_process_requirements_that_would_replace_esms_own(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    config = imported_single_function(tmp_path, "tabulate\nboto3==1.20.0  # pinned\n")
    capsys.readouterr()
    assert main(["build", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "function Fn: requirements esm's own environment does not satisfy: boto3==1.20.0" in err
    assert 'nothing was installed: use kind = "process"' in err
    assert not (config.parent / ".esm-build" / "Fn").exists()


def test_build_installs_only_what_esm_lacks_for_an_in_process_function(tmp_path: Path) -> None:
    config = imported_single_function(tmp_path, "PyYAML>=5\ntabulate\n")
    assert main(["build", "-c", str(config)]) == 0
    package = config.parent / ".esm-build" / "Fn"
    assert (package / "app.py").is_file()
    assert (package / "tabulate").is_dir()
    assert not (package / "yaml").exists()  # esm's own PyYAML satisfies it: not shadowed
    assert load_config(config).functions["Fn"].code_path.resolve() == package.resolve()


def test_build_names_the_function_and_requirement_pip_cannot_install(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    config = imported_single_function(tmp_path, "no-such-distribution-esm-test==1.0\n")
    capsys.readouterr()
    assert main(["build", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "function Fn: pip could not install " in err
    assert "requirements.txt" in err
    assert "requirement no-such-distribution-esm-test==1.0" in err
    assert "Traceback" not in err


def test_requirements_files_are_read_as_pip_reads_them(tmp_path: Path) -> None:
    from esm.build import BuildError, read_requirements

    (tmp_path / "base.txt").write_text("humanize>=4 ; python_version >= '3'\n")
    (tmp_path / "requirements.txt").write_text(
        "# comment\n-r base.txt\n--index-url https://example.invalid/simple\n\ntabulate  # x\n"
    )
    assert [str(r) for r in read_requirements(tmp_path / "requirements.txt")] == [
        'humanize>=4; python_version >= "3"',
        "tabulate",
    ]
    (tmp_path / "bad.txt").write_text("tabulate\nnot a requirement!\n")
    with pytest.raises(BuildError, match=r"bad.txt:2: 'not a requirement!' is not a requirement"):
        read_requirements(tmp_path / "bad.txt")


def test_pip_failure_names_the_requirement_pip_stopped_at() -> None:
    from esm.build import pip_failure

    output = (
        "Collecting x\nERROR: Could not find a version that satisfies the requirement "
        "foo==9 (from versions: 1.0)\nERROR: No matching distribution found for foo==9\n"
    )
    assert pip_failure(output).startswith("requirement foo==9: Could not find a version")
    assert pip_failure("ERROR: Something else\n") == "Something else"
    assert pip_failure("") == "pip failed without a message"


def test_build_of_a_config_without_its_manifest_is_a_clear_error(tmp_path: Path) -> None:
    assert main(["build", "-c", str(tmp_path / "missing.toml")]) == 2


def test_build_refuses_a_dependency_that_would_shadow_esms_own_in_process(
    tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """A local project named like one of esm's distributions, in another version: pip installs
    it into the package, which comes first on the shared sys.path, so it is refused."""
    project = tmp_path / "vendored-yaml"
    (project / "src" / "yaml_shadow").mkdir(parents=True)
    (project / "src" / "yaml_shadow" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "PyYAML"\nversion = "0.0.1"\n'
    )
    config = imported_single_function(tmp_path, "../vendored-yaml\n")
    capsys.readouterr()
    assert main(["build", "-c", str(config)]) == 1
    err = capsys.readouterr().err
    assert "function Fn: its requirements bring PyYAML 0.0.1 (esm runs PyYAML " in err
    assert not (config.parent / ".esm-build" / "Fn").exists()
