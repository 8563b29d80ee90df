"""`esm import` against the local endpoint: a SAM template's queue handled by its function,
ARNs resolved from a deployed stack (--stack-name, DescribeStackResources), inline code, and
a multi-function SAM application through `esm import` + `esm build` + `esm run`."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import boto3
import recorder
from conftest import free_port, make_table_with_stream, queue_counts, stop_process, wait_until

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
    # Every order seen (a set): five receivers start on a full queue, and a standard queue
    # may hand a message to two of them (moto does when receives interleave).
    wait_until(lambda: set(recorder.bodies_for(arn)) == {f"order-{i}" for i in range(7)})
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


APPS = Path(__file__).parent.parent / "apps"


def _esm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The real command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "esm", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_multi_function_sam_app_runs_unchanged_under_import_build_run(
    endpoint, sqs, unique, tmp_path
):  # type: ignore[no-untyped-def]
    """#13 "Done when": tests/apps/orders_app (two `app.lambda_handler` functions, Powertools
    batch utility + Logger, module-level boto3 clients, a requirements.txt each with a package
    esm does not depend on, a shared layer) runs with no edit to its code or template."""
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")
    orders_url = sqs.create_queue(
        QueueName=f"orders-{unique}", Attributes={"VisibilityTimeout": "60"}
    )["QueueUrl"]
    orders_arn = sqs.get_queue_attributes(QueueUrl=orders_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    audit_url = sqs.create_queue(QueueName=f"audit-{unique}")["QueueUrl"]
    table = f"orders-{unique}"
    stream_arn = make_table_with_stream(ddb, table)
    config = tmp_path / "esm.toml"
    imported = _esm(
        "import", str(APPS / "orders_app" / "template.yaml"),
        "--param", f"OrdersQueueArn={orders_arn}",
        "--param", f"OrdersTable={table}",
        "--param", f"OrdersTableStreamArn={stream_arn}",
        "--param", f"AuditQueue={audit_url}",
        "--endpoint-url", endpoint, "--region", "us-east-1", "-o", str(config),
        cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    assert 'run as kind = "process"' in imported.stderr
    assert f"--param AuditQueue={audit_url}" in config.read_text()
    built = _esm("build", "-c", str(config), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    for function, package in (("OrdersFunction", "tabulate"), ("AuditFunction", "humanize")):
        assert (tmp_path / ".esm-build" / function / package).is_dir(), built.stdout
        assert (tmp_path / ".esm-build" / function / "order_keys.py").is_file()  # the layer
    # The one change a user may need: a free port for /readyz, so parallel runs don't collide.
    port = free_port()
    address = f'http_address = "127.0.0.1:{port}"\n'
    config.write_text(config.read_text().replace("[daemon]\n", f"[daemon]\n{address}"))
    for i in range(5):
        sqs.send_message(
            QueueUrl=orders_url, MessageBody=json.dumps({"id": f"o{i}", "qty": 1000 + i})
        )
    sqs.send_message(QueueUrl=orders_url, MessageBody=json.dumps({"id": "bad", "poison": True}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    audited: list[dict[str, str]] = []
    # Waits are on the set of orders audited, not on five audit messages: the orders queue
    # may hand an order to two of its five receivers (SQS is at-least-once; moto does when
    # receives interleave), and the order written again is audited again from the stream.
    orders = {f"order#o{i}" for i in range(5)}

    def keys() -> set[str]:
        return {m["key"] for m in audited}

    def audit_messages() -> bool:
        for message in sqs.receive_message(
            QueueUrl=audit_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        ).get("Messages", []):
            audited.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=audit_url, ReceiptHandle=message["ReceiptHandle"])
        return orders <= keys() or proc.poll() is not None

    try:
        delivered = _poll(lambda: audit_messages() and orders <= keys(), timeout=60)
        items = ddb.scan(TableName=table)["Items"]
        # The poison order failed alone (partial batch response) and stays in the queue.
        left = delivered and _poll(lambda: _in_queue(sqs, orders_url) == 1, timeout=30)
    finally:
        stop_process(proc, timeout=30)
    stderr = proc.stderr.read() if proc.stderr else ""
    tail = "\n".join(stderr.splitlines()[-40:])
    assert delivered, f"{len(keys())} of 5 orders audited; esm run's log ends with:\n{tail}"
    assert left, tail
    assert sorted(i["id"]["S"] for i in items) == [f"order#o{i}" for i in range(5)], stderr
    assert {i["written_by"]["S"] for i in items} == {"OrdersFunction"}
    assert keys() == orders
    assert {m["qty"] for m in audited} == {f"1,00{i}" for i in range(5)}  # humanize
    # Each function ran its own app.py with its own environment (no TABLE_NAME in the audit).
    assert {(m["audited_by"], m["table_env"]) for m in audited} == {("AuditFunction", None)}


def _poll(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    """wait_until that answers False at the timeout, so the test can show esm's log."""
    try:
        wait_until(predicate, timeout=timeout)
    except AssertionError:
        return False
    return True


def _in_queue(sqs, url: str) -> int:  # type: ignore[no-untyped-def]
    return sum(queue_counts(sqs, url))


def _queue(sqs, name: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def _lines(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_built_requirements_run_as_processes_each_with_its_own_code(
    endpoint, sqs, unique, tmp_path
):  # type: ignore[no-untyped-def]
    """esm build + two `app.handler` functions with third-party requirements, as processes
    (their handlers make no AWS call, so this holds whatever the functions' endpoint is)."""
    table_url, table_arn = _queue(sqs, f"table-{unique}")
    count_url, count_arn = _queue(sqs, f"count-{unique}")
    out = tmp_path / "handled.jsonl"
    config = tmp_path / "esm.toml"
    imported = _esm(
        "import", str(APPS / "report_app" / "template.yaml"),
        "--param", f"TableQueueArn={table_arn}", "--param", f"CountQueueArn={count_arn}",
        "--param", f"OutFile={out}", "--endpoint-url", endpoint, "--region", "us-east-1",
        "-o", str(config), cwd=tmp_path,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    built = _esm("build", "-c", str(config), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    port = free_port()
    address = f'http_address = "127.0.0.1:{port}"\n'
    config.write_text(config.read_text().replace("[daemon]\n", f"[daemon]\n{address}"))
    sqs.send_message(QueueUrl=table_url, MessageBody="abc")
    sqs.send_message(QueueUrl=count_url, MessageBody="1234567")
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Both functions' lines (a set: a queue may hand its message out twice).
        done = _poll(lambda: {line["by"] for line in _lines(out)} == {"table", "count"}, timeout=30)
    finally:
        stop_process(proc, timeout=30)
    stderr = proc.stderr.read() if proc.stderr else ""
    assert done, "\n".join(stderr.splitlines()[-30:])
    by = {line["by"]: line for line in _lines(out)}
    assert by["table"]["line"] == "abc  3"  # tabulate, from .esm-build/TableFunction
    assert by["count"]["line"] == "1,234,567"  # humanize, from .esm-build/CountFunction
    assert by["table"]["only_table"] == "yes" and by["count"]["only_table"] is None
    assert by["table"]["pid"] != by["count"]["pid"]


def test_inline_code_template_runs(endpoint, sqs, unique, run_daemon, tmp_path):  # type: ignore[no-untyped-def]
    url, arn = _queue(sqs, f"inline-{unique}")
    out = tmp_path / "handled.txt"
    config = tmp_path / "esm.toml"
    assert (
        main(
            [
                "import",
                str(TEMPLATES / "inline_sqs.yaml"),
                "--param",
                f"JobsQueueArn={arn}",
                "--param",
                f"OutFile={out}",
                "--endpoint-url",
                endpoint,
                "--region",
                "us-east-1",
                "-o",
                str(config),
            ]
        )  # fmt: skip
        == 0
    )
    assert (tmp_path / "inline" / "InlineFunction" / "index.py").is_file()
    loaded = load_config(config)
    loaded = dataclasses.replace(loaded, daemon=dataclasses.replace(loaded.daemon, http_port=0))
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"job-{i}")
    run_daemon(loaded)
    # The set of jobs handled: a message may be handed out twice (SQS is at-least-once).
    wait_until(
        lambda: out.exists() and set(out.read_text().splitlines()) == {"job-0", "job-1", "job-2"}
    )
