"""Timeline of one esm Kafka drain: each fetch aiokafka sends, each getmany, each lane's wait.

    python -m bench.kafka_trace                  # pipelined (esm's default)
    python -m bench.kafka_trace --unpipelined    # aiokafka's own pacing: one fetch at a time

Fills a 6-partition topic on a throw-away Tansu broker as `bench.kafka` does and drains it
once with esm's KafkaRuntime (no-op handler, batch 1,000), printing in milliseconds from the
first event: `fetch` (a FetchRequest sent -> answered, the partitions it asked for), `getmany`
(esm's fetch loop: the partitions asked for, records handed out per partition) and `wait`
(a lane waiting more than 5 ms for records). It wraps aiokafka's `AIOKafkaClient.send`, the
consumer's getmany and esm's `_Lane._wait_for_records` to observe them (not the fetcher,
whose parts esm's pipeline checks before it installs); a diagnosis, not a benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench import kafka as bench_kafka

Event = tuple[str, float, float, str]


def _instrument(events: list[Event]) -> None:
    from aiokafka.client import AIOKafkaClient

    from esm.sources.kafka import runtime

    send = AIOKafkaClient.send

    async def traced_send(self: Any, node_id: int, request: Any, *args: Any, **kw: Any) -> Any:
        if not type(request).__name__.startswith("FetchRequest"):
            return await send(self, node_id, request, *args, **kw)
        start = time.perf_counter()
        asked = sorted(p for _, partitions in request.topics for p, _, _ in partitions)
        try:
            return await send(self, node_id, request, *args, **kw)
        finally:
            events.append(("fetch", start, time.perf_counter(), f"asked {asked}"))

    wait = runtime._Lane._wait_for_records

    async def traced_wait(self: Any, deadline: float) -> None:
        start = time.perf_counter()
        await wait(self, deadline)
        if time.perf_counter() - start > 0.005:
            events.append(("wait", start, time.perf_counter(), f"partition {self.tp.partition}"))

    getmany = runtime.AIOKafkaConsumer.getmany

    async def traced_getmany(self: Any, *partitions: Any, **options: Any) -> Any:
        start = time.perf_counter()
        result = await getmany(self, *partitions, **options)
        if result:
            got = sorted((tp.partition, len(records)) for tp, records in result.items())
            asked = sorted(tp.partition for tp in partitions)
            events.append(("getmany", start, time.perf_counter(), f"asked {asked} got {got}"))
        return result

    AIOKafkaClient.send = traced_send
    runtime._Lane._wait_for_records = traced_wait
    runtime.AIOKafkaConsumer.getmany = traced_getmany


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=204_000)
    parser.add_argument("--unpipelined", action="store_true", help="aiokafka's own fetch pacing")
    args = parser.parse_args(argv)
    from esm.daemon import tune_garbage_collector
    from esm.sources.kafka.runtime import keep_freed_memory

    tune_garbage_collector()
    keep_freed_memory()
    events: list[Event] = []
    _instrument(events)
    with bench_kafka.tansu() as broker:
        clock = bench_kafka.Clock(broker.pid)
        asyncio.run(bench_kafka.fill_topic(broker.bootstrap, "trace", args.records, 1024))
        figure = bench_kafka.measure(
            "esm",
            lambda c: asyncio.run(
                bench_kafka.drain_esm(
                    broker.bootstrap, "trace", args.records, 1000, c, pipelined=not args.unpipelined
                )
            ),
            clock,
        )
    print(f"esm drained {figure.records:,} records at {figure.records_per_s:,.0f} rec/s")
    origin = min(start for _, start, _, _ in events)
    for kind, start, end, what in sorted(events, key=lambda e: e[1]):
        print(
            f"  {kind:8} {1000 * (start - origin):8.1f} -> {1000 * (end - origin):8.1f} ms "
            f"({1000 * (end - start):6.1f}) {what}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
