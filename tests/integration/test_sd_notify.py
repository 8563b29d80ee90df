"""systemd's notify protocol, checked on a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from conftest import HANDLERS, free_port, wait_for_http
from test_sqs_mapping import make_queue

from esm.sd_notify import Notifier


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + address[1:].encode() if address.startswith("@") else address)

    def receive(self, timeout: float = 15.0) -> list[str]:
        """The assignments of the next datagram."""
        self.sock.settimeout(timeout)
        return self.sock.recv(4096).decode().split("\n")

    def receive_until(self, assignment: str, timeout: float = 30.0) -> list[list[str]]:
        """Every datagram up to and including the first that carries `assignment`."""
        deadline = time.monotonic() + timeout
        seen: list[list[str]] = []
        while True:
            message = self.receive(max(0.1, deadline - time.monotonic()))
            seen.append(message)
            if assignment in message:
                return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    # A short directory: a unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    directory = tempfile.mkdtemp(prefix="esm-notify-", dir="/tmp")
    fake = FakeSystemd(os.path.join(directory, "notify.sock"))
    try:
        yield fake
    finally:
        fake.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_ready_stopping_and_watchdog_are_datagrams_of_assignments(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address)
    assert notifier.ready(status="polling 2 mappings")
    assert systemd.receive() == ["READY=1", "STATUS=polling 2 mappings"]
    assert notifier.stopping(extend_timeout=35)
    assert systemd.receive() == ["STOPPING=1", "EXTEND_TIMEOUT_USEC=35000000"]
    assert notifier.watchdog()
    assert systemd.receive() == ["WATCHDOG=1"]


def test_abstract_socket_address_starting_with_at() -> None:
    fake = FakeSystemd(f"@esm-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        assert Notifier(fake.address).ready()
        assert fake.receive() == ["READY=1"]
    finally:
        fake.close()


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready() and not notifier.stopping() and not notifier.watchdog()
    assert notifier.watchdog_interval is None


def test_a_socket_nobody_listens_on_is_logged_not_raised(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone.sock")).ready() is False


def test_environment_is_read_then_unset_so_handler_processes_cannot_notify() -> None:
    env = {
        "NOTIFY_SOCKET": "/run/esm.sock",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": "42",
        "PATH": "/bin",
    }
    notifier = Notifier.from_environment(env, pid=42)
    assert notifier.address == "/run/esm.sock"
    assert notifier.watchdog_interval == 15.0
    assert env == {"PATH": "/bin"}


def test_watchdog_for_another_pid_is_not_ours() -> None:
    env = {"NOTIFY_SOCKET": "/run/esm.sock", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}
    assert Notifier.from_environment(env, pid=43).watchdog_interval is None
    no_pid = {"NOTIFY_SOCKET": "/run/esm.sock", "WATCHDOG_USEC": "2000000"}
    assert Notifier.from_environment(no_pid).watchdog_interval == 1.0


def test_keep_alive_pings_until_cancelled(systemd: FakeSystemd) -> None:
    notifier = Notifier(systemd.address, watchdog_usec=20_000)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(notifier.keep_alive)
            pings = [await anyio.to_thread.run_sync(systemd.receive) for _ in range(3)]
            tg.cancel_scope.cancel()
        assert pings == [["WATCHDOG=1"]] * 3

    anyio.run(main)


def test_keep_alive_without_watchdog_returns_at_once(systemd: FakeSystemd) -> None:
    anyio.run(Notifier(systemd.address).keep_alive)


def test_esm_run_says_ready_when_mappings_poll_pings_and_says_stopping_on_sigterm(  # type: ignore[no-untyped-def]
    endpoint, sqs, unique, tmp_path, systemd
):
    _, arn = make_queue(sqs, f"notify-{unique}")
    port = free_port()
    config = tmp_path / "esm.toml"
    config.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
http_address = "127.0.0.1:{port}"

[functions.f]
handler = "recorder.record"
code_path = "{HANDLERS}"

[[mappings]]
name = "notify"
function = "f"
event_source_arn = "{arn}"
"""
    )
    env = {**os.environ, "NOTIFY_SOCKET": systemd.address, "WATCHDOG_USEC": "200000"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        before_ready = systemd.receive_until("READY=1")
        wait_for_http(f"http://127.0.0.1:{port}/readyz")  # 200: the mapping polls, as READY=1 said
        assert ["WATCHDOG=1"] in systemd.receive_until("WATCHDOG=1")
        proc.send_signal(signal.SIGTERM)
        after = systemd.receive_until("STOPPING=1")
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, stderr
    assert all("STOPPING=1" not in m for m in before_ready)
    assert all("READY=1" not in m for m in after), "READY=1 is sent once"
    stopping = after[-1]
    assert stopping[0] == "STOPPING=1"
    assert any(a.startswith("EXTEND_TIMEOUT_USEC=") for a in stopping)
