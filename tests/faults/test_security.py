"""Security review, as tests: who can reach what, and what never reaches the logs.

- The daemon's /metrics /healthz /readyz /-/reload listen on loopback unless configured
  otherwise; the Runtime API of `kind = "process"` environments listens on loopback only.
- A full `esm run` at log level debug, with SQS, Kinesis and http-kind mappings whose
  records, function environment, bearer token and AWS credentials hold planted secrets,
  and whose batches fail (so every error path logs), prints none of the secrets.
- The http kind verifies TLS certificates unless told not to; credentials in its URL are
  never logged.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import boto3
import pytest
from aiohttp import web
from conftest import HANDLERS, free_port, stop_process, wait_for_http, wait_until
from fake_endpoints import self_signed_tls, serve

from esm.config import DaemonConfig, parse_config
from esm.errors import ConfigError
from esm.invokers import create_invoker
from esm.invokers.runtime_api import InvocationChannel, RuntimeApiEndpoint

SEED = 20261124
REPO = Path(__file__).resolve().parents[2]
LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


# --- who can reach what --------------------------------------------------------------------


def listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp{,6}) of sockets listening on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, _, port_hex = fields[1].partition(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback, if it has one (no packet is sent:
    connecting a UDP socket only picks the route)."""
    candidates: set[str] = set()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1
            candidates.add(s.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            candidates.add(str(info[4][0]))
    except OSError:
        pass
    usable = sorted(a for a in candidates if not a.startswith("127.") and a != "0.0.0.0")
    return usable[0] if usable else None


def refuses(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:
        return True


def test_http_address_defaults_to_loopback() -> None:
    config = parse_config({})
    assert config.daemon.http_host == "127.0.0.1"
    assert DaemonConfig().http_host == "127.0.0.1"


@pytest.fixture
def default_daemon(run_daemon):  # type: ignore[no-untyped-def]
    """A daemon on the default http_address host, with an ephemeral port instead of 9464."""
    config = parse_config({})
    config = replace(config, daemon=replace(config.daemon, http_port=0))
    return run_daemon(config)


def test_daemon_endpoints_listen_on_loopback_only(default_daemon) -> None:  # type: ignore[no-untyped-def]
    if not Path("/proc/net/tcp").exists():
        pytest.skip("no /proc/net/tcp on this host to read listening sockets from")
    assert default_daemon.get("/healthz") == (200, "ok\n")
    addresses = listening_addresses(default_daemon.port)
    assert addresses == [LOOPBACK_V4], addresses


def test_daemon_endpoints_refuse_connections_to_other_addresses(default_daemon) -> None:  # type: ignore[no-untyped-def]
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to try")
    assert default_daemon.get("/healthz")[0] == 200
    assert refuses(address, default_daemon.port), (
        f"{address}:{default_daemon.port} accepted a connection"
    )


def test_runtime_api_listens_on_loopback_only() -> None:
    other = non_loopback_address()

    async def check() -> tuple[str, list[str], bool | None]:
        endpoint = RuntimeApiEndpoint(InvocationChannel(), None)
        await endpoint.start()
        try:
            reachable_elsewhere = None if other is None else not refuses(other, endpoint.port)
            return endpoint.address, listening_addresses(endpoint.port), reachable_elsewhere
        finally:
            await endpoint.aclose()

    address, listening, reachable_elsewhere = anyio.run(check)
    assert address.startswith("127.0.0.1:")
    if Path("/proc/net/tcp").exists():
        assert listening == [LOOPBACK_V4], listening
    assert not reachable_elsewhere


def test_tls_verification_is_on_by_default_in_config() -> None:
    config = parse_config(
        {
            "functions": {
                "h": {"kind": "http", "url": "https://app.example/invoke"},
                "l": {"kind": "lambda", "function_name": "f"},
            }
        }
    )
    assert config.functions["h"].verify_tls is True
    assert config.functions["l"].verify_tls is True


@pytest.fixture
def self_signed_server(tmp_path: Path) -> Iterator[tuple[str, list[Any]]]:
    """An https endpoint with a self-signed certificate; yields its URL and the events it got."""
    context = self_signed_tls(tmp_path)
    events: list[Any] = []

    async def handle(request: web.Request) -> web.Response:
        events.append(await request.json())
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/invoke", handle)
    with serve(app, ssl_context=context) as base:
        yield f"{base}/invoke", events


def test_http_kind_refuses_an_untrusted_certificate_by_default(self_signed_server) -> None:  # type: ignore[no-untyped-def]
    url, events = self_signed_server
    config = parse_config({"functions": {"h": {"kind": "http", "url": url, "timeout": 2}}})

    async def call() -> Any:
        invoker = create_invoker(config.functions["h"])
        try:
            return await invoker.invoke({"Records": []})
        finally:
            await invoker.aclose()

    result = anyio.run(call)
    assert not result.ok
    assert events == [], "the event reached a server whose certificate is not trusted"


def test_credentials_in_an_http_function_url_are_refused_without_echoing_them() -> None:
    """A URL may not carry user:password (it would end up in logs); the problem line that
    says so must not repeat the password either."""
    secret = f"urlpass{random.Random(SEED).getrandbits(64):016x}"
    url = f"http://esm:{secret}@127.0.0.1:{free_port()}/invoke"
    with pytest.raises(ConfigError) as raised:
        parse_config({"functions": {"h": {"kind": "http", "url": url, "timeout": 1}}})
    assert raised.value.problems == [
        "functions.h.url: must not carry credentials (user:password@); use bearer_token_env"
    ]
    assert secret not in str(raised.value)


# --- planted secrets in a full run ---------------------------------------------------------


class Secrets:
    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.body = f"plantedbody{rng.getrandbits(64):016x}"
        self.attribute = f"plantedattr{rng.getrandbits(64):016x}"
        self.environment = f"plantedenv{rng.getrandbits(64):016x}"
        self.bearer = f"plantedbearer{rng.getrandbits(64):016x}"
        self.aws_secret_key = f"plantedaws{rng.getrandbits(64):016x}"
        self.aws_session_token = f"plantedsession{rng.getrandbits(64):016x}"

    def all(self) -> dict[str, str]:
        return dict(vars(self))


class Sidecar:
    """The http-kind function: fails batches holding a `fail-` record, checks the token."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/invoke", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        event = await request.json()
        labels = [r["body"].split("|", 1)[0] for r in event["Records"]]
        with self._lock:
            self.seen.extend((label, request.headers.get("Authorization", "")) for label in labels)
        if any(label.startswith("fail-") for label in labels):
            return web.Response(status=500, text="failed on purpose")
        return web.json_response({"batchItemFailures": []})

    def labels(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self.seen)


def forms(value: str) -> set[str]:
    """How a secret could show up in a log: as is, or base64 at any alignment (Kinesis data)."""
    out = {value}
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + value.encode()).decode()
        out.add(encoded[4 if pad else 0 : -4])
    return out


def test_no_planted_secret_in_the_logs_of_a_full_debug_run(endpoint, unique, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secrets = Secrets(SEED)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")

    def queue(name: str, **attributes: str) -> tuple[str, str]:
        url = sqs.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "2", **attributes})[
            "QueueUrl"
        ]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return url, arn

    dlq_url, dlq_arn = queue(f"sec-dlq-{unique}")
    redrive = {
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"})
    }
    py_url, py_arn = queue(f"sec-py-{unique}", **redrive)
    http_url, http_arn = queue(f"sec-http-{unique}", **redrive)
    dest_url, dest_arn = queue(f"sec-dest-{unique}")
    stream = f"sec-{unique}"
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    stream_arn = kinesis.describe_stream(StreamName=stream)["StreamDescription"]["StreamARN"]

    labels = ["ok-1", "ok-2", "partial-1", "fail-1", "ok-3"]
    for label in labels:
        for url in (py_url, http_url):
            sqs.send_message(
                QueueUrl=url,
                MessageBody=f"{label}|{secrets.body}",
                MessageAttributes={
                    "token": {"DataType": "String", "StringValue": secrets.attribute}
                },
            )
    kinesis.put_records(
        StreamName=stream,
        Records=[
            {"PartitionKey": label, "Data": f"{label}|{secrets.body}".encode()} for label in labels
        ],
    )

    sidecar = Sidecar()
    record_path = tmp_path / "records.txt"
    port = free_port()
    config = tmp_path / "esm.toml"
    with serve(sidecar.app()) as sidecar_base:
        config.write_text(
            f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
log_level = "debug"
log_format = "json"
[state]
path = "{tmp_path / "state.sqlite3"}"
[functions.py]
handler = "hostile_handlers.secret_aware"
code_path = "{HANDLERS}"
timeout = 2
environment = {{ RECORD_PATH = "{record_path}", ESM_PLANTED_TOKEN = "{secrets.environment}" }}
[functions.sidecar]
kind = "http"
url = "{sidecar_base}/invoke"
bearer_token_env = "ESM_PLANTED_BEARER"
timeout = 2
[[mappings]]
name = "sqs-python"
function = "py"
event_source_arn = "{py_arn}"
batch_size = 1
function_response_types = ["ReportBatchItemFailures"]
[[mappings]]
name = "sqs-http"
function = "sidecar"
event_source_arn = "{http_arn}"
batch_size = 1
function_response_types = ["ReportBatchItemFailures"]
[[mappings]]
name = "kinesis-python"
function = "py"
event_source_arn = "{stream_arn}"
starting_position = "TRIM_HORIZON"
batch_size = 1
maximum_retry_attempts = 0
function_response_types = ["ReportBatchItemFailures"]
destination_config = {{ on_failure = {{ destination = "{dest_arn}" }} }}
"""
        )
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID0000",
            "AWS_SECRET_ACCESS_KEY": secrets.aws_secret_key,
            "AWS_SESSION_TOKEN": secrets.aws_session_token,
            "ESM_PLANTED_BEARER": secrets.bearer,
        }
        log_path = tmp_path / "esm.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "esm", "run", "-c", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=tmp_path,
            )
            try:
                wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=20)

                def events() -> list[dict[str, Any]]:
                    out = []
                    for line in log_path.read_text().splitlines():
                        with contextlib.suppress(ValueError):
                            out.append(json.loads(line))
                    return out

                def dead_letters() -> int:
                    attrs = sqs.get_queue_attributes(
                        QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"]
                    )
                    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])

                def done() -> bool:
                    evs = events()
                    delivered = [e for e in evs if e.get("event") == "destination.delivered"]
                    handled = record_path.read_text().splitlines() if record_path.exists() else []
                    # python: every SQS and Kinesis label; sidecar: every label; the failed and
                    # partially failed messages of both queues dead-lettered; the failed and
                    # partial Kinesis batches given up to the destination.
                    return (
                        len(handled) >= 2 * len(labels)
                        and {label for label, _ in sidecar.labels()} == set(labels)
                        and dead_letters() >= 3
                        and len(delivered) >= 2
                    ) or proc.poll() is not None

                wait_until(done, timeout=40)
                assert proc.poll() is None, log_path.read_text()[-3000:]
            finally:
                stop_process(proc, timeout=30)
    output = log_path.read_text()

    # The run exercised what it should: debug on, every error path, env and token applied.
    logged = {e.get("event") for e in events()}
    assert {"batch.failed", "batch.error", "destination.delivered", "batch.succeeded"} <= logged, (
        logged
    )
    assert '"level": "debug"' in output
    digest = hashlib.sha256(secrets.environment.encode()).hexdigest()[:16]
    handled = record_path.read_text().splitlines()
    assert handled and all(line.endswith(digest) for line in handled), handled
    assert {auth for _, auth in sidecar.labels()} == {f"Bearer {secrets.bearer}"}

    leaks = {
        name: sorted(
            {line[:300] for line in output.splitlines() if any(f in line for f in forms(value))}
        )
        for name, value in secrets.all().items()
    }
    leaks = {name: lines for name, lines in leaks.items() if lines}
    assert not leaks, "planted secrets in the daemon's output:\n" + json.dumps(leaks, indent=2)


# --- a hostile process function ------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_process_function_cannot_read_the_daemons_environment_or_memory(  # type: ignore[no-untyped-def]
    endpoint, unique, tmp_path
):
    """The function greps /proc/<daemon>/environ and every readable region of
    /proc/<daemon>/mem for the http function's bearer token, as an attacker would: the
    daemon is non-dumpable (and a root environment has no capability). The token, moved
    out of the daemon's environment at start-up, still authenticates after a reload."""
    secrets = Secrets(SEED + 1)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    arns = {}
    urls = {}
    for name in ("snoop", "sidecar"):
        # A receive cut short by the reload may still take a message: back in 5 s.
        urls[name] = sqs.create_queue(
            QueueName=f"{name}-{unique}", Attributes={"VisibilityTimeout": "5"}
        )["QueueUrl"]
        arns[name] = sqs.get_queue_attributes(QueueUrl=urls[name], AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    record_path = tmp_path / "snoop.jsonl"
    port = free_port()
    config = tmp_path / "esm.toml"
    sidecar = Sidecar()

    def write_config(sidecar_base: str, sidecar_timeout: int) -> None:
        config.write_text(
            f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"
log_format = "json"
[state]
path = "{tmp_path / "state.sqlite3"}"
[functions.snoop]
kind = "process"
handler = "snooping_handlers.read_daemon_secrets"
code_path = "{HANDLERS}"
timeout = 5
environment = {{ RECORD_PATH = "{record_path}" }}
[functions.sidecar]
kind = "http"
url = "{sidecar_base}/invoke"
bearer_token_env = "ESM_PLANTED_BEARER"
timeout = {sidecar_timeout}
[[mappings]]
name = "snoop"
function = "snoop"
event_source_arn = "{arns["snoop"]}"
[[mappings]]
name = "sidecar"
function = "sidecar"
event_source_arn = "{arns["sidecar"]}"
"""
        )

    env = {**os.environ, "PYTHONPATH": str(REPO), "ESM_PLANTED_BEARER": secrets.bearer}
    log_path = tmp_path / "esm.log"
    with serve(sidecar.app()) as sidecar_base, log_path.open("wb") as log_file:
        write_config(sidecar_base, 2)
        proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=20)
            # The sidecar's invoker (and token) are in use while the function snoops.
            sqs.send_message(QueueUrl=urls["sidecar"], MessageBody="before-reload")
            wait_until(lambda: sidecar.labels() or proc.poll() is not None, timeout=20)
            sqs.send_message(QueueUrl=urls["snoop"], MessageBody="snoop")
            wait_until(lambda: read_records(record_path) or proc.poll() is not None, timeout=40)
            # A reload that rebuilds the sidecar function finds the token in memory.
            write_config(sidecar_base, 3)
            request = urllib.request.Request(f"http://127.0.0.1:{port}/-/reload", method="POST")
            urllib.request.urlopen(request, timeout=5).close()
            wait_until(lambda: '"daemon.reloaded"' in log_path.read_text(), timeout=20)
            sqs.send_message(QueueUrl=urls["sidecar"], MessageBody="after-reload")
            # after-reload itself, not any second label: before-reload may have come twice
            # (five receivers; moto, like SQS, may hand a message to two of them).
            wait_until(
                lambda: (
                    "after-reload" in {label for label, _ in sidecar.labels()}
                    or proc.poll() is not None
                ),
                timeout=30,
            )
            assert proc.poll() is None, log_path.read_text()[-3000:]
        finally:
            stop_process(proc, timeout=30)
    report = read_records(record_path)[0]
    assert report["daemon_pid"] == proc.pid
    assert report["hits"] == [], f"the function found the daemon's token: {report}"
    assert report["environ"] == "PermissionError", report
    assert report["maps"] == "PermissionError", report
    assert report["mem"] == "no maps" and report["mem_scanned"] == 0, report
    # Each label with the token, in the order sent (a copy of one counted once).
    assert list(dict.fromkeys(sidecar.labels())) == [
        ("before-reload", f"Bearer {secrets.bearer}"),
        ("after-reload", f"Bearer {secrets.bearer}"),
    ]
    assert '"restarted": ["sidecar"]' in log_path.read_text()


def test_a_process_function_cannot_take_another_functions_events(  # type: ignore[no-untyped-def]
    endpoint, unique, run_daemon, tmp_path
):
    """The thief finds the victim's Runtime API port listening in /proc/net/tcp, polls
    /invocation/next on it while the victim's events flow, and tries to poison it with an
    init error: every request is refused, and the victim handles every one of its events."""
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")

    def queue(name: str) -> tuple[str, str]:
        url = sqs.create_queue(
            QueueName=f"{name}-{unique}", Attributes={"VisibilityTimeout": "60"}
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        return url, arn

    victim_url, victim_arn = queue("victim")
    thief_url, thief_arn = queue("thief")
    victim_records = tmp_path / "victim.jsonl"
    thief_records = tmp_path / "thief.jsonl"
    config = parse_config(
        {
            "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0"},
            "functions": {
                "victim": {
                    "kind": "process",
                    "handler": "snooping_handlers.report_runtime_api",
                    "code_path": str(HANDLERS),
                    "reserved_concurrent_executions": 1,
                    "environment": {"RECORD_PATH": str(victim_records)},
                },
                "thief": {
                    "kind": "process",
                    "handler": "snooping_handlers.steal_events",
                    "code_path": str(HANDLERS),
                    "timeout": 30,
                    "environment": {
                        "RECORD_PATH": str(thief_records),
                        "RIVAL_RECORD_PATH": str(victim_records),
                    },
                },
            },
            "mappings": [
                {
                    "name": "victim",
                    "function": "victim",
                    "event_source_arn": victim_arn,
                    "batch_size": 1,
                },
                {"name": "thief", "function": "thief", "event_source_arn": thief_arn},
            ],
        }
    )
    run_daemon(config)
    sqs.send_message(QueueUrl=victim_url, MessageBody="v-0")
    wait_until(lambda: read_records(victim_records), timeout=30)  # the victim is warm
    sqs.send_message(QueueUrl=thief_url, MessageBody="attempts:40")
    bodies = [f"v-{i}" for i in range(1, 41)]
    for i in range(0, len(bodies), 10):
        sqs.send_message_batch(
            QueueUrl=victim_url,
            Entries=[{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i : i + 10])],
        )
    report = wait_until(lambda: read_records(thief_records), timeout=60)[0]
    handled = wait_until(
        lambda: (
            seen
            if len(seen := [b for r in read_records(victim_records) for b in r["bodies"]]) >= 41
            else None
        ),
        timeout=60,
    )
    assert report["victim_port_listed"] and report["own_port_listed"], report
    assert report["statuses"] == [403] * 40, report
    assert report["init_error_status"] == 403, report
    assert report["stolen"] == []
    assert sorted(handled) == sorted(["v-0", *bodies])
    assert len({r["api"] for r in read_records(victim_records)}) == 1, "the victim never restarted"
