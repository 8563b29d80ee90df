"""Real Lambda applications run unchanged (issue #13 items 1-3): each function runs its own
code, gets Lambda's environment, and its SDK calls reach the AWS esm polls (moto server).

The applications are in tests/handlers/lambda_apps: `sam init`'s layout (app.py +
utils.py per function), a module-level boto3 resource, a failing import.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
from conftest import HANDLERS, free_port, wait_for_http, wait_until
from test_sqs_mapping import make_queue, mapping, queue_depth

from esm.config import ConfigError, DaemonConfig, FunctionConfig, parse_config
from esm.invokers import InvocationResult, create_invoker

APPS = HANDLERS / "lambda_apps"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def function(name: str, app: str, kind: str = "python", **settings: Any) -> dict[str, Any]:
    return {"kind": kind, "handler": "app.lambda_handler", "code_path": str(APPS / app), **settings}


def functions(sections: dict[str, Any], **daemon: Any) -> dict[str, FunctionConfig]:
    return dict(parse_config({"daemon": daemon, "functions": sections}).functions)


async def invoke_each(
    configs: dict[str, FunctionConfig], daemon: DaemonConfig | None = None, times: int = 1
) -> dict[str, list[InvocationResult]]:
    """Build every invoker first (as the daemon does), then invoke each `times` times."""
    invokers = {name: create_invoker(config, daemon) for name, config in configs.items()}
    try:
        results: dict[str, list[InvocationResult]] = {}
        for name, invoker in invokers.items():
            results[name] = [await invoker.invoke({"Records": []}) for _ in range(times)]
        return results
    finally:
        for invoker in invokers.values():
            await invoker.aclose()


# --- 1. function isolation ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["python", "process"])
@pytest.mark.anyio
async def test_same_module_names_in_two_code_paths_each_run_their_own_code(kind: str) -> None:
    """`sam init` gives every function app.lambda_handler; each must run its own app.py and
    the utils.py beside it (in-process, the second used to run the first one's module)."""
    configs = functions(
        {"orders": function("orders", "orders", kind), "payments": function("p", "payments", kind)}
    )
    results = await invoke_each(configs)
    for name in ("orders", "payments"):
        (result,) = results[name]
        assert result.failure is None, result.failure
        assert result.response["app"] == name
        assert result.response["utils"] == f"{name}-utils"
        assert Path(result.response["file"]) == (APPS / name / "app.py").resolve()


def test_validate_refuses_in_process_functions_whose_environments_disagree() -> None:
    sections = {
        "orders": function("orders", "orders", environment={"TABLE_NAME": "orders", "STAGE": "x"}),
        "payments": function("p", "payments", environment={"TABLE_NAME": "payments", "STAGE": "x"}),
    }
    with pytest.raises(ConfigError) as raised:
        parse_config({"functions": sections})
    assert raised.value.problems == [
        "functions.orders and functions.payments: environment.TABLE_NAME differs, but"
        ' in-process functions share one environment; use kind = "process" for one of them'
    ]
    # As processes each has its own environment, as on Lambda.
    sections["payments"]["kind"] = "process"
    assert parse_config({"functions": sections}).functions["payments"].kind == "process"


def test_esm_validate_prints_the_disagreement_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "esm.toml"
    path.write_text(
        f'[functions.a]\nhandler = "app.lambda_handler"\ncode_path = "{APPS / "orders"}"\n'
        'environment = { TABLE_NAME = "a" }\n'
        f'[functions.b]\nhandler = "app.lambda_handler"\ncode_path = "{APPS / "payments"}"\n'
        'environment = { TABLE_NAME = "b" }\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "esm", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "functions.a and functions.b: environment.TABLE_NAME differs, but in-process"
        ' functions share one environment; use kind = "process" for one of them'
    ]


# --- 2. the Lambda environment ---------------------------------------------------------


def environment_function(kind: str, **settings: Any) -> dict[str, Any]:
    return function(
        "env",
        "sdk_app",
        kind,
        handler="app.environment",
        memory_size=256,
        environment={"TABLE_NAME": "unused", **settings.pop("environment", {})},
        **settings,
    )


@pytest.mark.parametrize("kind", ["python", "process"])
@pytest.mark.anyio
async def test_every_kind_gets_lambdas_environment(
    kind: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    daemon = DaemonConfig(region="eu-west-2", endpoint_url=endpoint)
    configs = functions({"env": environment_function(kind)})
    (first, second) = (await invoke_each(configs, daemon, times=2))["env"]
    assert first.failure is None, first.failure
    seen = first.response["now"]
    code_path = str((APPS / "sdk_app").resolve())
    assert seen["AWS_REGION"] == seen["AWS_DEFAULT_REGION"] == "eu-west-2"
    assert seen["AWS_LAMBDA_FUNCTION_NAME"] == "env"
    assert seen["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert seen["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert seen["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/env"
    assert seen["AWS_LAMBDA_LOG_STREAM_NAME"].startswith("esm/")
    assert seen["_HANDLER"] == "app.environment"
    assert seen["LAMBDA_TASK_ROOT"] == code_path
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert seen["AWS_EXECUTION_ENV"] == f"AWS_Lambda_python{python}"
    assert seen["AWS_ENDPOINT_URL"] == endpoint
    assert seen["AWS_ACCESS_KEY_ID"] == "esm-local"  # loopback endpoint, no credentials
    assert seen["_X_AMZN_TRACE_ID"].startswith("Root=1-")
    assert second.response["now"]["_X_AMZN_TRACE_ID"] != seen["_X_AMZN_TRACE_ID"]
    # The module's init (import) already saw the environment, as on Lambda.
    assert first.response["init"]["AWS_LAMBDA_FUNCTION_NAME"] == "env"
    assert first.response["init"]["AWS_REGION"] == "eu-west-2"


@pytest.mark.parametrize("kind", ["python", "process"])
@pytest.mark.anyio
async def test_the_functions_own_environment_and_the_opt_out_win(
    kind: str, endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    own = functions(
        {"env": environment_function(kind, environment={"AWS_ENDPOINT_URL": "http://elsewhere"})}
    )
    (result,) = (await invoke_each(own, DaemonConfig(endpoint_url=endpoint)))["env"]
    assert result.response["now"]["AWS_ENDPOINT_URL"] == "http://elsewhere"

    plain = functions({"env": environment_function(kind)})
    opted_out = DaemonConfig(endpoint_url=endpoint, functions_use_endpoint_url=False)
    (result,) = (await invoke_each(plain, opted_out))["env"]
    assert result.response["now"]["AWS_ENDPOINT_URL"] is None


def test_functions_use_endpoint_url_is_a_daemon_boolean() -> None:
    assert parse_config({}).daemon.functions_use_endpoint_url is True
    with pytest.raises(ConfigError) as raised:
        parse_config({"daemon": {"functions_use_endpoint_url": "yes"}})
    assert raised.value.problems[0].startswith("daemon.functions_use_endpoint_url:")


# --- 2 + 3. module-level SDK clients against the endpoint esm polls -----------------------


@pytest.mark.parametrize("kind", ["python", "process"])
def test_module_level_client_puts_items_in_the_moto_table(  # type: ignore[no-untyped-def]
    kind, endpoint, unique, monkeypatch, run_daemon
) -> None:
    """(monkeypatch before run_daemon: the daemon, and the environment it restores when its
    last in-process function closes, are torn down before monkeypatch restores the test's.)

    Only `[daemon] region` and endpoint_url are configured: boto3.resource("dynamodb")
    at import time finds its region, and put_item lands in the table on moto (in-process
    this used to stop the daemon with "You must specify a region"; as a process the call
    went to real AWS because AWS_ENDPOINT_URL was dropped)."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    region = "eu-west-2"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=region)
    table = f"orders-{unique}"
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    url, arn = make_queue(sqs, f"sdk-{unique}")
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"order-{i}"} for i in range(3)]
    )
    config = parse_config(
        {
            "daemon": {"region": region, "endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            # timeout 30: the first put_item loads botocore's DynamoDB model, which on a loaded
            # CI machine can outlast Lambda's 3 s default; this test is about where calls land.
            "functions": {
                "f": function("f", "sdk_app", kind, timeout=30, environment={"TABLE_NAME": table})
            },
            "mappings": [mapping(arn)],
        }
    )
    run_daemon(config)
    items = wait_until(
        lambda: len(ddb.scan(TableName=table)["Items"]) == 3 and ddb.scan(TableName=table)["Items"]
    )
    assert sorted(i["body"]["S"] for i in items) == ["order-0", "order-1", "order-2"]
    wait_until(lambda: queue_depth(sqs, url) == 0)


@pytest.mark.parametrize("renamed", [False, True], ids=["changed", "renamed"])
def test_a_reload_that_changes_a_functions_environment_runs_its_init_again(  # type: ignore[no-untyped-def]
    renamed, endpoint, unique, monkeypatch, run_daemon, tmp_path
) -> None:
    """On Lambda a configuration change means new execution environments: the module-level
    client of sdk_app is created again, with the new TABLE_NAME; so is a renamed copy's
    (created while the old name drains). A function the reload leaves unchanged keeps its
    instance: its init does not run again."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    region = "eu-west-2"
    ddb = boto3.client("dynamodb", endpoint_url=endpoint, region_name=region)
    tables = [f"before-{unique}", f"after-{unique}"]
    for table in tables:
        ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=region)
    # The reload also moves the mapping to a second queue: a long poll cancelled by the
    # reload may still take a message from the first one on the server side (it would come
    # back only after the visibility timeout).
    queues = [make_queue(sqs, f"reinit-{i}-{unique}", VisibilityTimeout="30") for i in (0, 1)]
    inits = tmp_path / "inits.txt"
    (tmp_path / f"kept_{unique}.py").write_text(
        f"with open({str(inits)!r}, 'a') as f:\n    f.write('init\\n')\n\n"
        "def handler(event, context):\n    return {}\n"
    )
    kept = {"handler": f"kept_{unique}.handler", "code_path": str(tmp_path)}

    def config(table: str, arn: str, name: str = "f") -> Any:
        return parse_config(
            {
                "daemon": {
                    "region": region,
                    "endpoint_url": endpoint,
                    "http_address": "127.0.0.1:0",
                },
                "functions": {
                    # timeout 30: botocore loads its DynamoDB model on the first put_item
                    name: function(name, "sdk_app", timeout=30, environment={"TABLE_NAME": table}),
                    "kept": kept,
                },
                "mappings": [mapping(arn, function=name, name="reinit")],
            }
        )

    def bodies(table: str) -> list[str]:
        return sorted(i["body"]["S"] for i in ddb.scan(TableName=table)["Items"])

    daemon = run_daemon(config(tables[0], queues[0][1]))
    sqs.send_message(QueueUrl=queues[0][0], MessageBody="first")
    wait_until(lambda: bodies(tables[0]) == ["first"])

    new = config(tables[1], queues[1][1], "g" if renamed else "f")
    result = daemon.portal.call(daemon.daemon.reload, new)
    assert result.restarted == ["reinit"]
    sqs.send_message(QueueUrl=queues[1][0], MessageBody="second")
    # The old code kept the first instance's module, and its client: tables[0].
    wait_until(lambda: bodies(tables[1]) == ["second"])
    assert bodies(tables[0]) == ["first"]
    wait_until(lambda: queue_depth(sqs, queues[1][0]) == 0)
    assert inits.read_text() == "init\n"  # the unchanged function was not initialised again


def test_a_failing_import_is_the_functions_init_error_not_the_daemons(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, run_daemon
) -> None:
    url, arn = make_queue(sqs, f"broken-{unique}", VisibilityTimeout="1")
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "functions": {"f": function("f", "broken_app", timeout=1)},
            "mappings": [mapping(arn)],
        }
    )
    daemon = run_daemon(config)  # used to raise HandlerLoadError before polling anything
    errors = 'esm_function_errors_total{function="f"}'
    wait_until(lambda: _metric(daemon, errors) >= 2)  # every invocation retries the init
    assert daemon.get("/readyz")[0] == 200
    assert queue_depth(sqs, url) == 1  # never deleted
    result = anyio.run(_invoke_once, config.functions["f"])
    assert result.failure is not None
    assert result.failure.error_type == "Runtime.ImportModuleError"
    assert result.failure.error_message == (
        "Unable to import module 'app': No module named 'no_such_dependency_esm_test'"
    )


async def _invoke_once(config: FunctionConfig) -> InvocationResult:
    invoker = create_invoker(config)
    try:
        return await invoker.invoke({"Records": []})
    finally:
        await invoker.aclose()


def _metric(daemon: Any, sample: str) -> float:
    for line in daemon.get("/metrics")[1].splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


# --- 3. kind = "lambda" through [daemon] endpoint_url -------------------------------------


@pytest.fixture
def moto_lambda() -> Iterator[str]:
    """A moto server of its own whose Lambda runs without Docker (its "simple" backend
    answers every Invoke with the event), so the shared server's settings stay untouched."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/")
        import urllib.request

        request = urllib.request.Request(
            f"{url}/moto-api/config", data=b'{"lambda": {"use_docker": false}}', method="POST"
        )
        urllib.request.urlopen(request, timeout=10).close()
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_lambda_kind_without_endpoint_url_invokes_through_the_daemon_endpoint(  # type: ignore[no-untyped-def]
    moto_lambda, unique, run_daemon
) -> None:
    import io
    import zipfile

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("app.py", "def handler(event, context):\n    return {}\n")
    iam = boto3.client("iam", endpoint_url=moto_lambda, region_name="us-east-1")
    role = iam.create_role(RoleName=f"r-{unique}", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    lam = boto3.client("lambda", endpoint_url=moto_lambda, region_name="us-east-1")
    lam.create_function(
        FunctionName=f"orders-{unique}",
        Runtime="python3.12",
        Role=role,
        Handler="app.handler",
        Code={"ZipFile": archive.getvalue()},
    )
    sqs = boto3.client("sqs", endpoint_url=moto_lambda, region_name="us-east-1")
    url, arn = make_queue(sqs, f"lam-{unique}", VisibilityTimeout="1")
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(4)]
    )
    config = parse_config(
        {
            "daemon": {"endpoint_url": moto_lambda, "http_address": "127.0.0.1:0"},
            "functions": {
                "f": {"kind": "lambda", "function_name": f"orders-{unique}", "timeout": 1}
            },
            "mappings": [mapping(arn)],
        }
    )
    daemon = run_daemon(config)
    wait_until(lambda: queue_depth(sqs, url) == 0)  # invoked on moto, succeeded, deleted
    assert _metric(daemon, 'esm_function_invocations_total{function="f"}') >= 1
    assert _metric(daemon, 'esm_function_throttles_total{function="f"}') == 0


@pytest.mark.anyio
async def test_the_documented_limit_an_import_at_invocation_time_is_shared() -> None:
    """README "kind = python": a name first imported at invocation time is looked up on the
    one sys.path (the code_path of the function loaded last comes first), then is in the one
    sys.modules for every function. The process kind gives each its own."""

    def lazy(app: str, kind: str) -> dict[str, Any]:
        return function(app, app, kind, handler="lazy_app.lambda_handler")

    def both(kind: str) -> dict[str, FunctionConfig]:
        return functions({"a": lazy("lazy_a", kind), "b": lazy("lazy_b", kind)})

    shared = await invoke_each(both("python"))
    assert [shared[n][0].response["helper"] for n in ("a", "b")] == ["lazy_b", "lazy_b"]
    own = await invoke_each(both("process"))
    assert [own[n][0].response["helper"] for n in ("a", "b")] == ["lazy_a", "lazy_b"]


@pytest.mark.anyio
async def test_after_an_init_error_the_next_invocation_runs_the_init_again(tmp_path: Path) -> None:
    """As on Lambda, a failed init is retried by the next invocation (here: once the missing
    dependency exists), without a restart."""
    (tmp_path / "late_app.py").write_text(
        "import late_dependency\n\ndef handler(event, context):\n    return late_dependency.VALUE\n"
    )
    config = functions({"late": {"handler": "late_app.handler", "code_path": str(tmp_path)}})[
        "late"
    ]
    invoker = create_invoker(config)
    try:
        failed = await invoker.invoke({})
        assert failed.failure is not None
        assert failed.failure.error_type == "Runtime.ImportModuleError"
        (tmp_path / "late_dependency.py").write_text("VALUE = 'ready'\n")
        result = await invoker.invoke({})
        assert result.failure is None and result.response == "ready"
    finally:
        await invoker.aclose()


@pytest.mark.anyio
async def test_a_function_loaded_through_a_plain_import_first_still_isolates_the_next() -> None:
    """Function A's app and utils are already in sys.modules under their plain names (the
    first to load a name keeps it); function B's init must still get B's own utils."""
    first = create_invoker(functions({"first": function("first", "orders")})["first"])
    try:  # kept open: orders' app/utils hold the plain names meanwhile
        assert (await first.invoke({"Records": []})).response["utils"] == "orders-utils"
        both = functions(
            {"orders": function("orders", "orders"), "payments": function("p", "payments")}
        )
        results = await invoke_each(both)
    finally:
        await first.aclose()
    assert results["payments"][0].response == {
        "app": "payments",
        "utils": "payments-utils",
        "file": str((APPS / "payments" / "app.py").resolve()),
    }
    assert results["orders"][0].response["utils"] == "orders-utils"


def _token_app(tmp_path: Path, module: str) -> dict[str, Any]:
    """A module whose init (import) draws a token: equal tokens, one module instance."""
    (tmp_path / f"{module}.py").write_text(
        "import uuid\n\nTOKEN = uuid.uuid4().hex\n\n"
        "def handler(event, context):\n    return TOKEN\n"
    )
    return {"handler": f"{module}.handler", "code_path": str(tmp_path)}


async def _token(invoker: Any) -> str:
    result = await invoker.invoke({})
    assert result.failure is None, result.failure
    return str(result.response)


@pytest.mark.anyio
async def test_functions_open_together_share_a_module_and_the_next_instance_inits_afresh(
    tmp_path: Path, unique: str
) -> None:
    """A module lives as long as some function instance using its code_path is open; the
    next instance after the last one closed is a cold start: its init runs again, and the
    code_path esm put on sys.path is taken off."""
    app = _token_app(tmp_path, f"token_{unique}")
    configs = functions({"a": app, "b": app})
    a, b = create_invoker(configs["a"]), create_invoker(configs["b"])
    first = await _token(a)
    assert await _token(b) == first  # the documented sharing
    await a.aclose()
    assert await _token(b) == first  # b still open: its module stays
    await b.aclose()
    assert f"token_{unique}" not in sys.modules
    assert str(tmp_path.resolve()) not in sys.path
    again = create_invoker(configs["a"])
    try:
        assert await _token(again) != first
    finally:
        await again.aclose()


@pytest.mark.anyio
async def test_a_module_the_host_imported_itself_outlives_the_function(
    tmp_path: Path, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """esm takes out only what its functions' inits imported: a module the embedding
    program (here the test) imported before is shared with the function and kept."""
    name = f"hosted_{unique}"
    config = functions({"f": _token_app(tmp_path, name)})["f"]
    monkeypatch.syspath_prepend(str(tmp_path.resolve()))
    hosted = importlib.import_module(name)
    try:
        invoker = create_invoker(config)
        try:
            assert await _token(invoker) == hosted.TOKEN
        finally:
            await invoker.aclose()
        assert sys.modules[name] is hosted
        assert str(tmp_path.resolve()) in sys.path  # not esm's to take off
    finally:
        sys.modules.pop(name, None)


@pytest.mark.anyio
async def test_a_retiring_functions_module_is_not_shared_with_functions_created_meanwhile(
    tmp_path: Path, unique: str
) -> None:
    """What a reload does (Daemon.reload retires what it replaces): a function created while
    a retiring one drains runs its own init; the ones created after it share that init."""
    app = _token_app(tmp_path, f"retire_{unique}")
    configs = functions({"old": app, "new": app, "other": app})
    old = create_invoker(configs["old"])
    invokers = [old]
    try:
        before = await _token(old)
        old.retire()  # type: ignore[attr-defined]
        new = create_invoker(configs["new"])
        invokers.append(new)
        after = await _token(new)
        assert after != before
        other = create_invoker(configs["other"])
        invokers.append(other)
        assert await _token(other) == after
        assert await _token(old) == before  # the draining one keeps its own
    finally:
        for invoker in invokers:
            await invoker.aclose()
