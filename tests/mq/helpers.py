"""Run a broker-queue mapping in a background event loop, as the daemon would, and talk to
the brokers with real clients (aio-pika for RabbitMQ, stompman for ActiveMQ)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aio_pika
import stompman
from anyio.from_thread import start_blocking_portal
from conftest import wait_until as wait_until  # re-exported: one poll-until for every suite

from esm.aws import AwsClients
from esm.config import DaemonConfig, FunctionConfig
from esm.filtering import FilterSet
from esm.invokers import Function, create_invoker
from esm.observability import MappingMetrics, Metrics
from esm.sources.mq import MqMapping
from esm.sources.mq.config import parse_mq_table

HERE = Path(__file__).parent


def rabbit_mapping(url: str, queue: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"m-{uuid.uuid4().hex[:8]}",
        "function": "fn",
        "self_managed_event_source": {"endpoints": {"RABBITMQ_BROKER_URLS": [url]}},
        "queues": [queue],
        **extra,
    }


def activemq_mapping(url: str, queue: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": f"m-{uuid.uuid4().hex[:8]}",
        "function": "fn",
        "self_managed_event_source": {"endpoints": {"ACTIVEMQ_BROKER_URLS": [url]}},
        "queues": [queue],
        "source_access_configurations": [{"type": "BASIC_AUTH", "uri": "env:ESM_TEST_AMQ"}],
        **extra,
    }


class RunningMapping:
    """An MqMapping running in its own event-loop thread until `stop()`."""

    def __init__(
        self, table: Mapping[str, Any], endpoint: str | None = None, handler: str = "record"
    ) -> None:
        self.config = parse_mq_table(table, "mappings[0]", {"fn"})
        self.metrics = Metrics()
        self._stack = ExitStack()
        self.portal = self._stack.enter_context(start_blocking_portal())
        function_config = FunctionConfig(
            name="fn",
            kind="python",
            handler=f"mq_handlers.{handler}",
            code_path=HERE,
            timeout=10,
        )
        function = Function(create_invoker(function_config), self.metrics)
        self._invoker = function.invoker
        self.aws: AwsClients | None = None
        if endpoint is not None:
            daemon = DaemonConfig(endpoint_url=endpoint)
            self.aws = self.portal.call(_open_aws, daemon, self.metrics)
        patterns = self.config.filter_patterns
        filters = FilterSet.compile(patterns) if patterns else None
        bound = MappingMetrics(self.metrics, self.config.name)
        self.mapping = self.portal.call(MqMapping, self.config, function, self.aws, bound, filters)
        self.future = self.portal.start_task_soon(self.mapping.run)

    @property
    def arn(self) -> str:
        return self.config.event_source_arn

    def metric(self, name: str) -> float:
        value = self.metrics.registry.get_sample_value(name, {"mapping": self.config.name})
        return value or 0.0

    def stop(self, timeout: float = 30) -> None:
        try:
            if not self.future.done():
                self.portal.call(self.mapping.stop)
                self.future.result(timeout=timeout)
            if self.aws is not None:
                self.portal.call(self.aws.__aexit__, None, None, None)
        finally:
            # An in-process function left open keeps its variables in os.environ.
            self.portal.call(self._invoker.aclose)
            self._stack.close()


async def _open_aws(daemon: DaemonConfig, metrics: Metrics) -> AwsClients:
    aws = AwsClients(daemon, metrics)
    await aws.__aenter__()
    return aws


# --- RabbitMQ ------------------------------------------------------------------------------


def rabbit_call(url: str, fn: Callable[[aio_pika.abc.AbstractChannel], Any]) -> Any:
    """Run `await fn(channel)` on a fresh aio-pika connection (guest login, vhost /)."""

    async def run() -> Any:
        connection = await aio_pika.connect(url.replace("amqp://", "amqp://guest:guest@"))
        async with connection:
            channel = await connection.channel()
            return await fn(channel)

    with start_blocking_portal() as portal:
        return portal.call(run)


def declare(url: str, queue: str, arguments: dict[str, Any] | None = None) -> None:
    async def go(channel: aio_pika.abc.AbstractChannel) -> None:
        await channel.declare_queue(queue, durable=True, arguments=arguments)

    rabbit_call(url, go)


def publish(url: str, queue: str, bodies: Sequence[str | bytes], **properties: Any) -> None:
    async def go(channel: aio_pika.abc.AbstractChannel) -> None:
        for body in bodies:
            data = body.encode() if isinstance(body, str) else body
            await channel.default_exchange.publish(
                aio_pika.Message(data, **properties), routing_key=queue
            )

    rabbit_call(url, go)


def queue_counts(url: str, queue: str) -> tuple[int, int]:
    """(messages ready, consumers) from a passive declare."""

    async def go(channel: aio_pika.abc.AbstractChannel) -> tuple[int, int]:
        q = await channel.declare_queue(queue, passive=True)
        result = q.declaration_result
        return int(result.message_count or 0), int(result.consumer_count or 0)

    result: tuple[int, int] = rabbit_call(url, go)
    return result


def drain(url: str, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message now in the queue, acknowledged (basic.get until empty)."""

    async def go(channel: aio_pika.abc.AbstractChannel) -> list[Any]:
        q = await channel.declare_queue(queue, passive=True)
        got = []
        while (message := await q.get(fail=False)) is not None:
            await message.ack()
            got.append(message)
        return got

    result: list[aio_pika.abc.AbstractIncomingMessage] = rabbit_call(url, go)
    return result


# --- ActiveMQ ------------------------------------------------------------------------------


def stomp_params(port: int, login: tuple[str, str]) -> list[stompman.ConnectionParameters]:
    return [stompman.ConnectionParameters("127.0.0.1", port, login[0], login[1])]


def stomp_send_text(
    port: int,
    login: tuple[str, str],
    queue: str,
    body: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """SEND a JMS TextMessage: a frame without content-length, which ActiveMQ reads as
    text (stompman always sets content-length, which makes a BytesMessage)."""
    import socket

    def frame(command: str, head: Mapping[str, str], payload: str = "") -> bytes:
        lines = [command, *(f"{k}:{v}" for k, v in head.items()), "", payload]
        return ("\n".join(lines) + "\x00").encode()

    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            frame(
                "CONNECT",
                {
                    "accept-version": "1.2",
                    "host": "localhost",
                    "login": login[0],
                    "passcode": login[1],
                },
            )
        )
        assert s.recv(4096).startswith(b"CONNECTED")
        s.sendall(frame("SEND", {"destination": f"/queue/{queue}", **(headers or {})}, body))
        s.sendall(frame("DISCONNECT", {"receipt": "bye"}))
        reply = b""
        while b"RECEIPT" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk


def stomp_call(port: int, login: tuple[str, str], fn: Callable[[stompman.Client], Any]) -> Any:
    async def run() -> Any:
        async with stompman.Client(stomp_params(port, login), max_concurrent_handlers=None) as c:
            return await fn(c)

    with start_blocking_portal() as portal:
        return portal.call(run)


def stomp_send(
    port: int,
    login: tuple[str, str],
    queue: str,
    bodies: Sequence[bytes],
    headers: Mapping[str, str] | None = None,
) -> None:
    async def go(client: stompman.Client) -> None:
        for body in bodies:
            await client.send(body, f"/queue/{queue}", headers=dict(headers or {}))

    stomp_call(port, login, go)


def stomp_receive(
    port: int,
    login: tuple[str, str],
    queue: str,
    wanted: Callable[[bytes], bool],
    timeout: float = 20,
) -> list[bytes]:
    """Consume (and acknowledge) a queue until a message `wanted` arrives; the bodies seen."""
    import anyio

    async def go(client: stompman.Client) -> list[bytes]:
        seen: list[bytes] = []
        found = anyio.Event()

        async def handler(frame: stompman.MessageFrame) -> None:
            seen.append(frame.body)
            if wanted(frame.body):
                found.set()

        subscription = await client.subscribe(
            f"/queue/{queue}", handler, on_suppressed_exception=lambda e, f: None
        )
        with anyio.move_on_after(timeout):
            await found.wait()
        await subscription.unsubscribe()
        return seen

    result: list[bytes] = stomp_call(port, login, go)
    return result


# --- worker processes (SIGKILL tests) ------------------------------------------------------


def start_worker(table: dict[str, Any], handled: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MQ_HANDLED_FILE=str(handled))
    return subprocess.Popen(
        [sys.executable, str(HERE / "run_mapping.py"), json.dumps(table)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def handled_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
