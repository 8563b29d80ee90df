"""Throw-away RabbitMQ and ActiveMQ nodes for the tests: real brokers from Debian's packages,
each on free loopback ports with its own temporary data directory, stopped at the end.

Used by tests/mq/conftest.py (session fixtures) and bench/mq.py. A broker the machine lacks
raises BrokerMissing, which the fixtures turn into a skip naming the package to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
ACTIVEMQ_HOME = Path("/usr/share/activemq")
START_TIMEOUT = 90.0


class BrokerMissing(Exception):
    """The broker's package is not installed; the message says which one."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A running broker process; `url` is what a mapping's *_BROKER_URLS entry holds."""

    url: str
    port: int
    workdir: Path
    processes: list[subprocess.Popen[bytes]]
    log: Path

    def stop(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the test process dies without its teardown (a
    killed run). That covers ActiveMQ's JVM and epmd; RabbitMQ's beam.smp is a grandchild
    (under the rabbitmq-server script) and can still outlive a killed run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _wait_for(check: object, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {START_TIMEOUT:g} s: {_tail(log)}")


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


def start_rabbitmq() -> Broker:
    """A single RabbitMQ node with its own epmd, as local-endpoints.md describes."""
    if not RABBITMQ_SERVER.exists() or shutil.which("epmd") is None:
        raise BrokerMissing("RabbitMQ is not installed (apt-get install rabbitmq-server)")
    work = Path(tempfile.mkdtemp(prefix="esm-rabbitmq-"))
    port, dist, epmd_port = free_port(), free_port(), free_port()
    log = work / "server.log"
    env = dict(
        os.environ,
        HOME=str(work),
        ERL_EPMD_PORT=str(epmd_port),
        ERL_EPMD_ADDRESS="127.0.0.1",
        RABBITMQ_NODE_PORT=str(port),
        RABBITMQ_DIST_PORT=str(dist),
        RABBITMQ_NODENAME=f"esmtest{port}@localhost",
        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
        RABBITMQ_MNESIA_BASE=str(work / "mnesia"),
        RABBITMQ_LOG_BASE=str(work / "log"),
        RABBITMQ_ENABLED_PLUGINS_FILE=str(work / "enabled_plugins"),
        RABBITMQ_CONFIG_FILE=str(work / "rabbitmq"),
    )
    (work / "enabled_plugins").write_text("[].\n")
    (work / "rabbitmq.conf").write_text("loopback_users = none\n")
    out = log.open("wb")
    epmd = subprocess.Popen(
        ["epmd", "-port", str(epmd_port), "-address", "127.0.0.1"],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    server = subprocess.Popen(
        [str(RABBITMQ_SERVER)],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=work,
        preexec_fn=_die_with_parent,
    )
    broker = Broker(f"amqp://127.0.0.1:{port}", port, work, [epmd, server], log)
    try:
        _wait_for(lambda: _amqp_ready(port), server, log, "rabbitmq-server")
    except BaseException:
        broker.stop()
        raise
    return broker


def _amqp_ready(port: int) -> bool:
    """The node accepts AMQP once it answers the protocol header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            return len(s.recv(7)) == 7
    except OSError:
        return False


ACTIVEMQ_XML = """<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans
    http://www.springframework.org/schema/beans/spring-beans.xsd
    http://activemq.apache.org/schema/core
    http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="esmtest{port}"
          dataDirectory="{data}" useJmx="false" persistent="true">
    <plugins>
      <simpleAuthenticationPlugin anonymousAccessAllowed="false">
        <users>
          <authenticationUser username="{user}" password="{password}" groups="admins,users"/>
        </users>
      </simpleAuthenticationPlugin>
    </plugins>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:{port}"/>
    </transportConnectors>
  </broker>
</beans>
"""
ACTIVEMQ_USER = ("esm", "esm-secret")


def start_activemq() -> Broker:
    """An ActiveMQ Classic broker serving STOMP, with SimpleAuthenticationPlugin (the only
    authentication Lambda supports for ActiveMQ) and the user ACTIVEMQ_USER."""
    jar = ACTIVEMQ_HOME / "bin" / "activemq.jar"
    if not jar.exists() or shutil.which("java") is None:
        raise BrokerMissing("ActiveMQ is not installed (apt-get install activemq)")
    work = Path(tempfile.mkdtemp(prefix="esm-activemq-"))
    port = free_port()
    (work / "conf").mkdir()
    (work / "data").mkdir()
    (work / "conf" / "activemq.xml").write_text(
        ACTIVEMQ_XML.format(
            port=port, data=work / "data", user=ACTIVEMQ_USER[0], password=ACTIVEMQ_USER[1]
        )
    )
    log = work / "server.log"
    command = [
        "java",
        "-Xmx256M",
        "-XX:TieredStopAtLevel=1",
        f"-Dactivemq.base={work}",
        f"-Dactivemq.conf={work / 'conf'}",
        f"-Dactivemq.data={work / 'data'}",
        f"-Dactivemq.home={ACTIVEMQ_HOME}",
        "-jar",
        str(jar),
        "start",
        f"xbean:file:{work / 'conf' / 'activemq.xml'}",
    ]
    server = subprocess.Popen(
        command,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=work,
        preexec_fn=_die_with_parent,
    )
    broker = Broker(f"stomp://127.0.0.1:{port}", port, work, [server], log)
    try:
        _wait_for(lambda: _stomp_ready(port), server, log, "activemq")
    except BaseException:
        broker.stop()
        raise
    return broker


def _stomp_ready(port: int) -> bool:
    frame = (
        f"CONNECT\naccept-version:1.2\nhost:localhost\nlogin:{ACTIVEMQ_USER[0]}\n"
        f"passcode:{ACTIVEMQ_USER[1]}\n\n\x00"
    ).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(frame)
            return s.recv(9).startswith(b"CONNECTED")
    except OSError:
        return False
