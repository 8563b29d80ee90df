"""Fixtures: a real moto server on loopback, AWS clients for setup, and daemon runners."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HANDLERS = Path(__file__).parent / "handlers"
sys.path.insert(0, str(HANDLERS))
# Helpers of the integration tests (make_queue, put, ...) serve the fault suite too.
sys.path.insert(0, str(Path(__file__).parent / "integration"))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


# Scheduling under pytest-xdist (`./dev test` runs two workers per CPU, `--dist loadgroup`).
# Each worker is its own process with its own session fixtures (moto server, Tansu, brokers),
# all on free loopback ports with their own temporary directories, so tests may run on any
# worker. Two kinds of tests are placed:
# - tests/mq/ starts a RabbitMQ node and an ActiveMQ JVM per session, seconds of CPU each: its
#   files form one work unit, so one worker starts them, not every worker. The scheduler below
#   does it from the node id: pytest 9.2 ignores the `@group` suffix that xdist's own
#   `xdist_group` marks add to node ids (pytest-dev/pytest-xdist#1386), so those marks do not
#   group here. A test that must not run beside others goes in SERIAL_GROUPS the same way.
# - Tests that mostly wait on a clock (AWS's smallest MaximumRecordAgeInSeconds is 60 s) or on
#   many process starts are collected first, so their waits overlap the rest of the suite
#   instead of trailing it. A scheduling hint only: each still runs exactly as written.
SERIAL_GROUPS = ("tests/mq/",)
LONG_WAITS = (
    "test_records_older_than_maximum_record_age_are_given_up",
    "test_quick_bench_writes_table_and_json",
    "test_sigkill_at_random_moments_loses_nothing",
)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist; absent under `-p no:xdist`
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SerialGroups(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            group = next((g for g in SERIAL_GROUPS if nodeid.startswith(g)), None)
            return group if group is not None else str(super()._split_scope(nodeid))

    return SerialGroups(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.name.split("[")[0] not in LONG_WAITS)  # stable sort


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _moto_server(*command: str) -> Iterator[str]:
    """A moto server process on a free loopback port (`command` + moto's -H/-p arguments)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *command, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/moto-api/")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """moto in server mode, as its own process, for the whole test session."""
    yield from _moto_server("-m", "moto.server")


@pytest.fixture
def sqs(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture(scope="session")
def fifo_endpoint() -> Iterator[str]:
    """moto's server with FIFO receive selection serialised (why: tests/fifo_moto_server.py).

    FIFO tests use this one: plain moto can hand b-1 to one receiver while b-0 is in flight
    with another, which real SQS never does, so per-group order could not be asserted.
    """
    yield from _moto_server(str(Path(__file__).parent / "fifo_moto_server.py"))


@pytest.fixture
def fifo_sqs(fifo_endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("sqs", endpoint_url=fifo_endpoint, region_name="us-east-1")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


class RunningDaemon:
    """A Daemon running in its own event loop thread; `stop()` drains it like SIGTERM."""

    def __init__(self, daemon, portal, future, port):  # type: ignore[no-untyped-def]
        self.daemon = daemon
        self.portal = portal
        self.future = future
        self.port = port

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self, timeout: float = 60) -> None:
        self.portal.call(self.daemon.request_stop)
        self.future.result(timeout=timeout)


def build_config(endpoint: str, functions: dict, mappings: list, **daemon):  # type: ignore[no-untyped-def]
    from esm.config import parse_config

    raw = {
        "daemon": {"endpoint_url": endpoint, "http_address": "127.0.0.1:0", **daemon},
        "functions": {name: {"code_path": str(HANDLERS), **f} for name, f in functions.items()},
        "mappings": mappings,
    }
    return parse_config(raw)


@pytest.fixture
def run_daemon():  # type: ignore[no-untyped-def]
    """Start daemons in-process; every one still running is stopped at the end of the test."""
    from anyio.from_thread import start_blocking_portal

    from esm.daemon import Daemon

    running: list[RunningDaemon] = []
    portals = []

    def start(config):  # type: ignore[no-untyped-def]
        daemon = Daemon(config)
        cm = start_blocking_portal()
        portal = cm.__enter__()
        portals.append(cm)
        future, port = portal.start_task(daemon.run)
        rd = RunningDaemon(daemon, portal, future, port)
        running.append(rd)
        return rd

    yield start
    for rd in running:
        if not rd.future.done():
            rd.stop()
    for cm in portals:
        cm.__exit__(None, None, None)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its value or fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def queue_counts(sqs, url: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(visible, in flight) messages of an SQS queue, as SQS approximates them."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(
        attrs["ApproximateNumberOfMessagesNotVisible"]
    )


def assert_deleted_after_success(sqs, url: str, receive_counts: list[str], left: int) -> None:  # type: ignore[no-untyped-def]
    """A message the function handled was deleted: the queue ends holding only the `left`
    messages that keep failing, and each delivery of the message came from a receive of its
    own (its ApproximateReceiveCount values all differ).

    Why not "delivered exactly once": a standard queue may hand a message out twice (SQS is
    at-least-once) and moto does when two receivers' receives interleave, two copies with
    receive counts 1 and 2; esm invoking one received copy twice would repeat a count. What
    this cannot tell from a copy is a message received again because its delete was lost:
    tests that are about deletion itself (test_sqs_mapping) keep their exact counts."""
    assert receive_counts, "the message was never delivered"
    assert len(set(receive_counts)) == len(receive_counts), receive_counts
    wait_until(lambda: sum(queue_counts(sqs, url)) == left)


def stored_checkpoint(path: Path) -> str | None:
    """The only stored checkpoint of a sqlite state file, or None while there is none yet
    (read-only, so a test never creates the file before the daemon does)."""
    import sqlite3

    if not path.exists():
        return None
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT sequence_number FROM checkpoints").fetchall()
        except sqlite3.OperationalError:  # the daemon has not created its table yet
            return None
    return rows[0][0] if rows else None


def stop_process(proc: subprocess.Popen, timeout: float) -> None:  # type: ignore[type-arg]
    """SIGTERM a daemon subprocess if it still runs; SIGKILL it when it outlives `timeout`."""
    import signal

    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def make_table_with_stream(
    ddb, name: str, key: str = "id", key_type: str = "S", view: str = "NEW_IMAGE"
) -> str:  # type: ignore[no-untyped-def]
    """An on-demand table keyed by `key`, with a stream of `view`; returns the stream ARN."""
    return str(
        ddb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": key, "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": key, "AttributeType": key_type}],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": view},
        )["TableDescription"]["LatestStreamArn"]
    )
