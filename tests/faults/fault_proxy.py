"""Fault proxies on loopback: `FaultProxy` (HTTP/1.1) between esm and the local AWS endpoint,
`TcpFaultProxy` (bytes) between esm and a broker (Kafka, RabbitMQ, ActiveMQ).

`FaultProxy` reads each request whole, then, by its current `mode`, forwards it on a fresh upstream
connection or misbehaves: resets the connection, stalls, adds latency, goes silent
(half-open), answers a share of requests with a throttling error in the protocol of the
service asked (AWS JSON `__type`, or a bare 503), or rejects every request's credentials
as AWS does when a key is revoked (moto itself accepts any credentials). It counts requests
per second so a test can check that esm backs off instead of looping.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

THROTTLE_ERRORS = (
    (
        400,
        b'{"__type": "ProvisionedThroughputExceededException",'
        b' "message": "Rate exceeded for shard"}',
    ),
    (400, b'{"__type": "com.amazonaws.sqs#ThrottlingException", "message": "Rate exceeded"}'),
    (400, b'{"__type": "ThrottlingException", "message": "Rate exceeded"}'),
    (503, b'{"__type": "ServiceUnavailable", "message": "Service unavailable"}'),
)


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    seed: int = 0
    mode: str = "pass"
    """pass | reset | stall | latency | half_open | throttle | deny (credentials rejected)"""
    throttle_share: float = 0.5
    latency_s: float = 2.0
    requests: Counter[int] = field(default_factory=Counter)
    """Requests seen per whole second (monotonic clock)."""
    port: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def total_requests(self) -> int:
        return sum(self.requests.values())

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                self.requests[int(time.monotonic())] += 1
                if not await self._answer(request, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if not writer.is_closing():
                writer.close()

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        """Handle one request; False when the client connection is gone."""
        while self.mode == "stall":
            await asyncio.sleep(0.05)
        mode = self.mode
        if mode == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if mode == "half_open":
            while self.mode == "half_open":
                await asyncio.sleep(0.05)
            writer.transport.abort()  # the peer "comes back" having forgotten the connection
            return False
        if mode == "latency":
            await asyncio.sleep(self.latency_s)
        if mode == "throttle" and self._random.random() < self.throttle_share:
            status, body = self._random.choice(THROTTLE_ERRORS)
            reason = b"Bad Request" if status == 400 else b"Service Unavailable"
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/x-amz-json-1.1\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(body), body)
            )
            await writer.drain()
            return True
        if mode == "deny":
            body = (
                b'{"__type": "UnrecognizedClientException", "message": "The'
                b' security token included in the request is invalid."}'
            )
            writer.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            return True
        writer.write(await self._forward(request))
        await writer.drain()
        return True

    async def _forward(self, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            head, _, body = request.partition(b"\r\n\r\n")
            lines = [
                line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")
            ]
            writer.write(b"\r\n".join(lines) + b"\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            response = await reader.read()
        finally:
            writer.close()
        rhead, _, rbody = response.partition(b"\r\n\r\n")
        rlines = [
            line for line in rhead.split(b"\r\n") if not line.lower().startswith(b"connection:")
        ]
        framing = (b"content-length:", b"transfer-encoding:")
        if not any(line.lower().startswith(framing) for line in rlines):
            rlines.append(b"Content-Length: %d" % len(rbody))
        return b"\r\n".join(rlines) + b"\r\n\r\n" + rbody


async def _read_request(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


@dataclass
class TcpFaultProxy:
    """A byte-level TCP proxy on loopback for the broker protocols (Kafka, AMQP, STOMP),
    whose framing the HTTP proxy above cannot read.

    Bytes are forwarded as they come, on one upstream connection per client connection.
    Faults, from the test's thread at any moment:
    - `reset_all()`: every open connection is reset (RST, both sides), as a crashed
      middlebox or a broker host rebooting does; `cut_all()` closes them cleanly (FIN).
    - `mode = "blackhole"`: nothing moves in either direction and new connections hang
      unanswered, as when a route or a firewall drops packets; the bytes sent meanwhile
      wait (TCP would retransmit them) and flow on when `mode = "pass"` again.
    - `mode = "refuse"`: new connections are reset at once (a broker that is down); open
      ones are reset too.
    - `reset_when(match, times)`: the next `times` chunks from a client that `match`
      accepts (an ack frame, say) are dropped and their connection reset: the client
      believes it sent them, the broker never reads them.
    """

    upstream_host: str
    upstream_port: int
    mode: str = "pass"
    """pass | blackhole | refuse"""
    port: int = 0
    accepted: int = 0
    """Client connections accepted so far (a test reads how often the client reconnected)."""
    faults: int = 0
    """Faults injected: each reset_all / cut_all, and each switch to blackhole or refuse."""
    dropped: list[bytes] = field(default_factory=list)
    """The client chunks dropped by `reset_when`, in order."""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._match: Callable[[bytes], bool] | None = None
        self._match_times = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpFaultProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._call(self._close_all, True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_mode(self, mode: str) -> None:
        """Switch mode; `refuse` also resets what is open."""
        if mode != "pass" and mode != self.mode:
            self.faults += 1
        self.mode = mode
        if mode == "refuse":
            self._call(self._close_all, True)

    def reset_all(self) -> None:
        self.faults += 1
        self._call(self._close_all, True)

    def cut_all(self) -> None:
        self.faults += 1
        self._call(self._close_all, False)

    def reset_when(self, match: Callable[[bytes], bool], times: int = 1) -> None:
        self._match, self._match_times = match, times

    def armed(self) -> int:
        """How many `reset_when` resets are still to come."""
        return self._match_times

    def open_connections(self) -> int:
        return len(self._pairs)

    def _call(self, fn: object, *args: object) -> None:
        """Run fn(*args) on the proxy's loop and wait for it (no-op once stopped)."""
        if not self._loop.is_running():
            return
        done = threading.Event()

        def run() -> None:
            try:
                fn(*args)  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _close_all(self, reset: bool) -> None:
        for pair in list(self._pairs):
            for writer in pair:
                _close(writer, reset)
        self._pairs.clear()

    async def _passable(self) -> None:
        while self.mode == "blackhole":
            await asyncio.sleep(0.02)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await self._passable()
        if self.mode == "refuse":
            _close(writer, True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            _close(writer, True)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_writer, pair), self._pump(up_reader, writer, None)
            )
        finally:
            self._pairs.discard(pair)
            for w in pair:
                _close(w, False)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter] | None,
    ) -> None:
        """Forward one direction; `pair` is set for the client-to-broker one (`reset_when`)."""
        try:
            while data := await reader.read(65536):
                await self._passable()
                if writer.is_closing():
                    return
                match = self._match if pair is not None and self._match_times else None
                if match is not None and pair is not None and match(data):
                    self._match_times -= 1
                    self.faults += 1
                    self.dropped.append(data)
                    for w in pair:
                        _close(w, True)
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            _close(writer, False)


def _close(writer: asyncio.StreamWriter, reset: bool) -> None:
    """Close one side: with RST (SO_LINGER 0, then abort) or with FIN."""
    if writer.is_closing() and not reset:
        return
    try:
        if reset:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
    except OSError:
        pass
