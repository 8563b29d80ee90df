"""`esm import` against the local endpoint: a SAM template's queue handled by its function,
and ARNs resolved from a deployed stack (--stack-name, DescribeStackResources)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import boto3
import recorder
from conftest import wait_until

from esm.cli import main
from esm.config import load_config

TEMPLATES = Path(__file__).parent.parent / "templates"


def test_imported_sam_template_runs_and_handles_messages(
    endpoint, sqs, unique, run_daemon, tmp_path
):  # type: ignore[no-untyped-def]
    url = sqs.create_queue(QueueName=f"imported-{unique}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    output = tmp_path / "config.toml"
    assert (
        main(
            [
                "import",
                str(TEMPLATES / "e2e_sqs.yaml"),
                "--param",
                f"OrdersQueueArn={arn}",
                "--endpoint-url",
                endpoint,
                "--region",
                "us-east-1",
                "-o",
                str(output),
            ]
        )
        == 0
    )
    config = load_config(output)
    assert (
        config.functions["RecorderFunction"].code_path.resolve()
        == (TEMPLATES.parent / "handlers").resolve()
    )
    config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, http_port=0))
    for i in range(7):
        sqs.send_message(QueueUrl=url, MessageBody=f"order-{i}")
    run_daemon(config)
    wait_until(lambda: len(recorder.bodies_for(arn)) == 7)
    assert sorted(recorder.bodies_for(arn)) == [f"order-{i}" for i in range(7)]
    assert all(len(e["Records"]) <= 5 for e in recorder.events_for(arn))
    assert recorder.CONTEXTS[-1]["function_name"] == "RecorderFunction"
    assert recorder.CONTEXTS[-1]["env"] == "from-template"


def test_stack_name_resolves_arns_from_the_deployed_stack(endpoint, unique, tmp_path, capsys):  # type: ignore[no-untyped-def]
    cloudformation = boto3.client("cloudformation", endpoint_url=endpoint, region_name="us-east-1")
    stack = f"orders-{unique}"
    deployed = {
        "Resources": {
            "OrdersQueue": {"Type": "AWS::SQS::Queue"},
            "FailureQueue": {"Type": "AWS::SQS::Queue"},
            "OrdersStream": {"Type": "AWS::Kinesis::Stream", "Properties": {"ShardCount": 1}},
            "OrdersTable": {
                "Type": "AWS::DynamoDB::Table",
                "Properties": {
                    "BillingMode": "PAY_PER_REQUEST",
                    "AttributeDefinitions": [{"AttributeName": "id", "AttributeType": "S"}],
                    "KeySchema": [{"AttributeName": "id", "KeyType": "HASH"}],
                    "StreamSpecification": {"StreamViewType": "NEW_AND_OLD_IMAGES"},
                },
            },
        }
    }
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(deployed))
    physical = {
        r["LogicalResourceId"]: r["PhysicalResourceId"]
        for r in cloudformation.describe_stack_resources(StackName=stack)["StackResources"]
    }
    output = tmp_path / "config.toml"
    assert (
        main(
            [
                "import",
                str(TEMPLATES / "sam_all_events.yaml"),
                "--stack-name",
                stack,
                "--endpoint-url",
                endpoint,
                "-o",
                str(output),
            ]
        )
        == 0
    )
    assert "placeholder" not in capsys.readouterr().err
    config = load_config(output)
    by_name = {m.name: m for m in config.mappings}
    queue_name = physical["OrdersQueue"].rsplit("/", 1)[1]
    assert (
        by_name["OrdersFunctionOrders"].event_source_arn
        == f"arn:aws:sqs:us-east-1:123456789012:{queue_name}"
    )
    assert by_name["OrdersFunctionClicks"].event_source_arn == (
        f"arn:aws:kinesis:us-east-1:123456789012:stream/{physical['OrdersStream']}"
    )
    assert by_name["OrdersFunctionClicks"].on_failure_destination.endswith(
        physical["FailureQueue"].rsplit("/", 1)[1]
    )
    table_stream = by_name["OrdersFunctionChanges"].event_source_arn
    assert table_stream.startswith(
        f"arn:aws:dynamodb:us-east-1:123456789012:table/{physical['OrdersTable']}/stream/"
    )
    assert config.functions["OrdersFunction"].environment["TABLE_NAME"] == physical["OrdersTable"]
    assert config.daemon.region == "us-east-1"
    assert tomllib.loads(output.read_text())["daemon"]["endpoint_url"] == endpoint


def test_unknown_stack_is_a_clear_error(endpoint, capsys):  # type: ignore[no-untyped-def]
    assert (
        main(
            [
                "import",
                str(TEMPLATES / "e2e_sqs.yaml"),
                "--stack-name",
                "no-such-stack",
                "--endpoint-url",
                endpoint,
            ]
        )
        == 2
    )
    assert "cannot describe stack 'no-such-stack'" in capsys.readouterr().err
