"""The Kafka family under network faults and a rebalance mid-batch, against a real broker.

A byte-level fault proxy (tests/faults/fault_proxy.py) sits between esm and a Tansu broker
whose advertised listener is the proxy's address, so every connection a client opens after
the bootstrap one (metadata tells it where the brokers are) goes through it too. The proxy
resets, cuts and blackholes connections at seeded random moments while esm drains a topic.
What must hold: nothing lost, per-partition order of first deliveries, a record delivered
again only when it was not committed yet (an in-flight batch), nothing committed before it
was handled, and the mapping recovers, ready again, when the network returns.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import kafka_handlers
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka_fixtures import KafkaTopic, create_topic, free_port, start_tansu

from esm.config import FunctionConfig, _Table
from esm.invokers import Function
from esm.invokers.python import PythonInvoker
from esm.observability import Metrics
from esm.sources.kafka.config import KafkaMappingConfig, parse_kafka_mapping
from esm.sources.kafka.runtime import KafkaRuntime

sys.path.insert(0, str(Path(__file__).parent.parent / "faults"))
from fault_proxy import TcpFaultProxy  # noqa: E402

pytest_plugins = ["kafka_fixtures"]

pytestmark = pytest.mark.anyio
HERE = Path(__file__).parent
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300}
"""Tansu's shortest session (6 s): a rebalance or a rejoin after a fault takes seconds."""


@dataclass
class ProxiedBroker:
    proxy: TcpFaultProxy
    bootstrap: str
    """The proxy's address: what esm is configured with and the broker advertises."""


@pytest.fixture
def proxied() -> Iterator[ProxiedBroker]:
    """A Tansu broker of its own, reached only through a TcpFaultProxy."""
    real = free_port()
    proxy = TcpFaultProxy("127.0.0.1", real).start()
    broker = start_tansu(real, advertised=proxy.address)
    try:
        yield ProxiedBroker(proxy, proxy.address)
    finally:
        broker.kill()
        broker.wait(timeout=10)
        proxy.stop()


def mapping(bootstrap: str, topic: str, group: str, **raw: Any) -> KafkaMappingConfig:
    problems: list[str] = []
    table = {
        "name": f"m-{topic}",
        "function": "f",
        "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
        "topics": [topic],
        "starting_position": "TRIM_HORIZON",
        "self_managed_kafka_event_source_config": {"consumer_group_id": group},
        "maximum_batching_window_in_seconds": 0.05,
        **raw,
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    return config


@asynccontextmanager
async def running(config: KafkaMappingConfig, handler: str) -> AsyncIterator[KafkaRuntime]:
    metrics = Metrics()
    function_config = FunctionConfig(
        name="f", kind="python", handler=handler, code_path=HERE, timeout=5
    )
    invoked = Function(PythonInvoker(function_config), metrics)
    runtime = KafkaRuntime(config, invoked, metrics, client_options=FAST_GROUP)
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        yield runtime
        runtime.stop()


async def produce(bootstrap: str, topic: str, values: list[tuple[int, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending = [await producer.send(topic, v, partition=p) for p, v in values]
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def poll_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


def batches(topic: str) -> list[tuple[int, list[int]]]:
    """(partition, offsets) of every invocation, in invocation order."""
    out = []
    for event in kafka_handlers.events_for(topic):
        for records in event["records"].values():
            out.append((records[0]["partition"], [r["offset"] for r in records]))
    return out


@dataclass
class CommitWatch:
    """Samples what the runtime has committed (acknowledged by the broker) per partition,
    with how many invocations had started then: a later redelivery must start at or after
    it, and every offset below it must have been delivered already."""

    runtime: KafkaRuntime
    topic: str
    samples: list[tuple[int, dict[int, int]]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            committed = {
                lane.tp.partition: lane.committed
                for lane in list(self.runtime.lanes.values())
                if lane.committed is not None
            }
            seen = batches(self.topic)  # read after the commits: handled-before-committed
            delivered: dict[int, set[int]] = {}
            for p, offsets in seen:
                delivered.setdefault(p, set()).update(offsets)
            for p, upto in committed.items():
                missing = set(range(upto)) - delivered.get(p, set())
                if missing:
                    self.violations.append(f"partition {p} committed {upto}, {min(missing)} unseen")
            self.samples.append((len(seen), committed))
            await anyio.sleep(0.02)


def check_redeliveries(seen: list[tuple[int, list[int]]], watch: CommitWatch) -> dict[str, int]:
    """Per partition: first deliveries in offset order, and every invocation that delivers
    offsets again starts where a batch started and no lower than what was committed before
    it began (only an in-flight, uncommitted batch is delivered again)."""
    highest: dict[int, int] = {}
    starts: dict[int, set[int]] = {}
    duplicates = rewinds = 0
    for index, (p, offsets) in enumerate(seen):
        first = offsets[0]
        assert offsets == list(range(first, first + len(offsets))), (p, offsets)
        top = highest.get(p, -1)
        if first <= top:
            rewinds += 1
            duplicates += min(top, offsets[-1]) - first + 1
            assert first in starts[p], f"partition {p}: redelivery from {first}, not a batch start"
            floor = max(
                (c.get(p, 0) for n, c in watch.samples if n <= index),
                default=0,
            )
            assert first >= floor, f"partition {p}: redelivered {first} after committing {floor}"
        else:
            assert first == top + 1, f"partition {p}: {top + 1}..{first - 1} skipped"
        starts.setdefault(p, set()).add(first)
        highest[p] = max(top, offsets[-1])
    return {"invocations": len(seen), "rewinds": rewinds, "duplicates": duplicates}


async def inject_faults(
    proxy: TcpFaultProxy, rng: random.Random, done: Callable[[], bool]
) -> list[str]:
    """Seeded faults at random moments until `done()`: resets, clean cuts, short blackholes,
    a broker refusing connections, and one blackhole past the 6 s session (the group drops
    the member, which rejoins afterwards); the network always comes back."""
    plan = [rng.choice(["reset", "cut", "blackhole", "refuse"]) for _ in range(10)]
    plan.insert(rng.randrange(1, 4), "long blackhole")
    injected: list[str] = []
    for fault in plan:
        if done():
            break
        await anyio.sleep(rng.uniform(0.2, 0.8))
        if fault == "reset":
            proxy.reset_all()
            injected.append("reset")
        elif fault == "cut":
            proxy.cut_all()
            injected.append("cut")
        else:
            seconds = 7.5 if fault == "long blackhole" else rng.uniform(0.5, 2.5)
            proxy.set_mode(fault.split()[-1])
            await anyio.sleep(seconds)
            proxy.set_mode("pass")
            injected.append(f"{fault} {seconds:.1f}s")
    return injected


async def test_resets_cuts_and_blackholes_during_a_drain_lose_nothing(
    proxied: ProxiedBroker,
) -> None:
    topic, n = "net-faults", 3000
    await create_topic(proxied.bootstrap, topic, 3)
    await produce(proxied.bootstrap, topic, [(i % 3, f"v{i}".encode()) for i in range(n)])
    # The drain outlasts the faults by construction, not by its speed: 1,000 records a
    # partition in batches of 4 at 50 ms each (record_slowly) is 12.5 s of handler time,
    # while seed 15's 4th fault lands 9.3 s after the first (a 7.5 s blackhole among them,
    # which stalls the drain further). With batches of 10 it was 5 s, and the faults landed
    # only while commits made each batch wait a round trip.
    config = mapping(proxied.bootstrap, topic, "g-net", batch_size=4)
    wanted = {f"v{i}" for i in range(n)}

    def all_delivered() -> bool:
        import base64

        got = {
            base64.b64decode(r["value"]).decode()
            for event in kafka_handlers.events_for(topic)
            for records in event["records"].values()
            for r in records
        }
        return wanted <= got

    async with running(config, "kafka_handlers.record_slowly") as runtime:
        watch = CommitWatch(runtime, topic)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch.run)
            await poll_until(lambda: len(batches(topic)) >= 3)
            injected = await inject_faults(proxied.proxy, random.Random(15), all_delivered)
            await poll_until(all_delivered, timeout=90)
            await poll_until(lambda: runtime.ready, timeout=30)
            # recovered: a record produced now is delivered too
            await produce(proxied.bootstrap, topic, [(0, b"after")])
            await poll_until(
                lambda: any(p == 0 and n // 3 in o for p, o in batches(topic)), timeout=30
            )
            tg.cancel_scope.cancel()
    seen = batches(topic)
    counts = check_redeliveries(seen, watch)
    print(
        "kafka network faults:",
        {"faults": injected, **counts, "connections": proxied.proxy.accepted},
    )
    assert not watch.violations, watch.violations[:5]
    assert len(injected) >= 4  # the faults really landed during the drain


async def test_an_unreachable_broker_turns_the_mapping_not_ready_until_it_returns(
    proxied: ProxiedBroker,
) -> None:
    topic = "ready-faults"
    await create_topic(proxied.bootstrap, topic, 3)
    config = mapping(proxied.bootstrap, topic, "g-ready", batch_size=10)
    async with running(config, "kafka_handlers.record") as runtime:
        await poll_until(lambda: runtime.ready, timeout=30)
        for mode in ("blackhole", "refuse"):
            proxied.proxy.set_mode(mode)
            await poll_until(lambda: not runtime.ready, timeout=30)
            reason = runtime.not_ready_reason
            assert reason is not None and proxied.bootstrap in reason, reason
            proxied.proxy.set_mode("pass")
            await poll_until(lambda: runtime.ready, timeout=30)
            assert runtime.not_ready_reason is None
        await produce(proxied.bootstrap, topic, [(1, b"back")])
        await poll_until(lambda: len(batches(topic)) == 1, timeout=30)


def _handled(path: Path) -> list[tuple[int, int]]:
    """(partition, offset) per record a worker handled, in order."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(int(p), int(o)) for p, o, _ in (line.split(" ", 2) for line in lines if line)]


async def _start_worker(
    bootstrap: str, topic: str, group: str, out: Path, log: Path, **settings: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "KAFKA_RECORD_FILE": str(out),
        "KAFKA_RECORD_DELAY": "0.03",
        **settings,
    }
    return subprocess.Popen(
        [sys.executable, str(HERE / "kafka_child.py"), bootstrap, topic, group],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


async def _committed(bootstrap: str, topic: str, group: str, partitions: int) -> list[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return [
            (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)
        ]
    finally:
        await consumer.stop()


async def test_a_worker_stopped_mid_batch_past_its_session_commits_nothing_unfinished(
    kafka_topic: KafkaTopic, tmp_path: Path
) -> None:
    """Two workers (processes) in one group; A is SIGSTOPped in the middle of a batch for
    longer than the session timeout, the group gives its partitions to B, then A resumes.
    Sampled all along from the broker: no committed offset ever passes a record that no
    worker handled, and in the end every record was handled (nothing skipped)."""
    n, group = 300, "g-stopped"
    topic, bootstrap = kafka_topic.name, kafka_topic.bootstrap
    await produce(bootstrap, topic, [(i % 3, f"s{i}".encode()) for i in range(n)])
    out_a, out_b = tmp_path / "a.txt", tmp_path / "b.txt"
    a = await _start_worker(bootstrap, topic, group, out_a, tmp_path / "a.log")
    b = await _start_worker(bootstrap, topic, group, out_b, tmp_path / "b.log")
    violations: list[str] = []

    async def check_commits() -> list[int]:
        committed = await _committed(bootstrap, topic, group, 3)
        handled = set(_handled(out_a)) | set(_handled(out_b))  # read after the commits
        for p, upto in enumerate(committed):
            missing = [o for o in range(upto) if (p, o) not in handled]
            if missing:
                violations.append(f"partition {p} committed {upto}, offset {missing[0]} unhandled")
        return committed

    try:
        await poll_until(lambda: bool(_handled(out_a)) and bool(_handled(out_b)), timeout=60)
        # Stop A in the middle of a batch: its last handled record is not a batch's last.
        for _ in range(50):
            a.send_signal(signal.SIGSTOP)
            last_p, last_o = _handled(out_a)[-1]
            if (last_o + 1) % 10 and last_o + 1 < n // 3:
                break
            a.send_signal(signal.SIGCONT)
            await anyio.sleep(0.05)
        else:
            pytest.fail("worker A was never caught in the middle of a batch")
        unfinished = last_o - last_o % 10 + 10  # the first offset of A's batch not handled
        # B takes A's partitions once A's session (6 s) times out, and reads past the batch.
        with anyio.fail_after(60):
            while not any(p == last_p and o >= unfinished for p, o in _handled(out_b)):
                committed = await check_commits()
                # while nobody handled it, nothing is committed past A's unfinished batch
                if not any(p == last_p and o == last_o + 1 for p, o in _handled(out_b)):
                    assert committed[last_p] <= last_o - last_o % 10, committed
                await anyio.sleep(0.1)
        at_resume = await check_commits()
        before_resume = _handled(out_a)
        a.send_signal(signal.SIGCONT)
        with anyio.fail_after(60):
            while await check_commits() != [n // 3] * 3:
                await anyio.sleep(0.1)
        await anyio.sleep(1.0)  # A's last moves after resuming, then the commits again
        assert await check_commits() == [n // 3] * 3
    finally:
        for worker in (a, b):
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait()
    assert not violations, violations[:5]
    handled = set(_handled(out_a)) | set(_handled(out_b))
    assert handled == {(i % 3, i // 3) for i in range(n)}  # nothing skipped
    # Duplicates only from in-flight batches: after resuming, A handles the rest of each
    # batch it had started, and then only what the group gives it again (from the committed
    # offset): never a new batch of what it fetched before the group moved on.
    in_flight_end = {p: o - o % 10 + 10 for p, o in before_resume}
    after = _handled(out_a)[len(before_resume) :]
    stale = [(p, o) for p, o in after if not (o < in_flight_end.get(p, 0) or o >= at_resume[p])]
    print(
        "kafka rebalance under SIGSTOP:",
        {
            "a_handled_after_resume": len(after),
            "stale": len(stale),
            "b_handled": len(_handled(out_b)),
            "duplicates": len(_handled(out_a)) + len(_handled(out_b)) - n,
        },
    )
    assert not stale, (stale[:5], in_flight_end, at_resume)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError:
        return 0, ""


async def test_esm_run_and_esm_status_name_an_unreachable_broker(
    proxied: ProxiedBroker, tmp_path: Path
) -> None:
    """Under `esm run`, a broker that stops answering turns /readyz 503 naming the mapping
    and the error; `esm status` shows the topic as unreachable (exit 0); both recover."""
    topic = "daemon-faults"
    await create_topic(proxied.bootstrap, topic, 3)
    port = free_port()
    handled = tmp_path / "handled.txt"
    config = tmp_path / "esm.toml"
    config.write_text(
        f"""
[daemon]
http_address = "127.0.0.1:{port}"
region = "us-east-1"

[functions.recorder]
handler = "recorder.kafka_write_to_file"
code_path = "{HERE.parent / "handlers"}"
environment = {{ RECORD_PATH = "{handled}" }}

[[mappings]]
name = "orders"
function = "recorder"
self_managed_event_source.endpoints.KAFKA_BOOTSTRAP_SERVERS = ["{proxied.bootstrap}"]
topics = ["{topic}"]
self_managed_kafka_event_source_config = {{ consumer_group_id = "g-daemon" }}
starting_position = "LATEST"
batch_size = 10
maximum_batching_window_in_seconds = 0.1
"""
    )
    log = (tmp_path / "esm.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "esm", "run", "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )

    def status() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "esm", "status", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    try:
        await poll_until(lambda: _get(port, "/readyz")[0] == 200, timeout=60)
        proxied.proxy.set_mode("refuse")
        await poll_until(lambda: _get(port, "/readyz")[0] == 503, timeout=30)
        answer = json.loads(_get(port, "/readyz")[1])
        assert answer["not_ready"] == ["orders"], answer
        assert proxied.bootstrap in answer["reasons"]["orders"], answer
        assert "unreachable" in answer["reasons"]["orders"], answer
        shown = await anyio.to_thread.run_sync(status)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        row = next(line for line in shown.stdout.splitlines() if line.startswith("orders"))
        assert "unreachable" in row and proxied.bootstrap in row, shown.stdout
        proxied.proxy.set_mode("pass")
        await poll_until(lambda: _get(port, "/readyz")[0] == 200, timeout=60)
        await produce(proxied.bootstrap, topic, [(2, b"after-outage")])
        await poll_until(lambda: handled.exists() and "after-outage" in handled.read_text())
        proc.send_signal(signal.SIGTERM)
        assert await anyio.to_thread.run_sync(lambda: proc.wait(timeout=30)) == 0
    finally:
        proc.kill()
        proc.wait()


async def test_a_worker_paused_while_gathering_a_batch_invokes_nothing_after_resuming(
    kafka_topic: KafkaTopic, tmp_path: Path
) -> None:
    """A worker stopped (SIGSTOP) while its partitions' next batches wait for the batching
    window, for longer than the session: the group gives the partitions to B, which handles
    the records. When A resumes, its windows have passed; it must not invoke what it
    gathered before (B has it), only what the group assigns it again."""
    group, topic, bootstrap = "g-paused", kafka_topic.name, kafka_topic.bootstrap
    out_a, out_b = tmp_path / "a.txt", tmp_path / "b.txt"
    settings = {"KAFKA_BATCH_SIZE": "100", "KAFKA_BATCHING_WINDOW": "2"}
    a = await _start_worker(bootstrap, topic, group, out_a, tmp_path / "a.log", **settings)
    b = await _start_worker(bootstrap, topic, group, out_b, tmp_path / "b.log", **settings)
    try:
        await produce(bootstrap, topic, [(p, f"warm{p}".encode()) for p in range(3)])
        # both members hold partitions and have handled their first window
        await poll_until(lambda: len(_handled(out_a)) + len(_handled(out_b)) == 3, timeout=60)
        await poll_until(lambda: bool(_handled(out_a)) and bool(_handled(out_b)), timeout=60)
        owned_by_a = {p for p, _ in _handled(out_a)}
        await produce(bootstrap, topic, [(p, f"held{p}".encode()) for p in range(3)])
        await anyio.sleep(0.8)  # A fetched its records and waits for the 2 s window
        a.send_signal(signal.SIGSTOP)
        # B takes A's partitions when A's session (6 s) times out, and handles their records
        await poll_until(lambda: {p for p, o in _handled(out_b) if o == 1} == {0, 1, 2}, timeout=60)
        at_resume = await _committed(bootstrap, topic, group, 3)
        before_resume = len(_handled(out_a))
        a.send_signal(signal.SIGCONT)
        await produce(bootstrap, topic, [(p, f"later{p}".encode()) for p in range(3)])
        with anyio.fail_after(60):
            while await _committed(bootstrap, topic, group, 3) != [3, 3, 3]:
                await anyio.sleep(0.1)
    finally:
        for worker in (a, b):
            worker.send_signal(signal.SIGCONT)
            worker.kill()
            worker.wait()
    after = _handled(out_a)[before_resume:]
    stale = [(p, o) for p, o in after if o < at_resume[p]]
    print("kafka pause while gathering:", {"a_partitions": sorted(owned_by_a), "stale": stale})
    assert not stale, (stale, at_resume)
