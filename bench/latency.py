"""Figure 4, latency: from just before SendMessage / PutRecord is called to the moment the
handler starts, per event, at maximum_batching_window_in_seconds 0.

The producer is a thread of this process sending one event at a time (each carries the
wall-clock time taken just before its call); esm's daemon runs in this process's event
loop with the `stamp` handler, which notes the time it started. SQS: batch_size 10, the
mapping's receivers long-poll. Kinesis: a 1-shard stream read from TRIM_HORIZON,
batch_size 100, so the figure includes esm's poll interval.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import orjson

from bench.endpoints import ACCOUNT, REGION, Endpoint, boto3_client
from bench.harness import esm_config, handlers, percentile, quiet_esm_logging

Log = Callable[[str], None]


def _producer(
    send: Callable[[bytes], None], events: int, gap: float, stop: threading.Event
) -> None:
    for i in range(events):
        if stop.is_set():
            return
        send(orjson.dumps({"i": i, "t": time.time()}))
        if gap:
            time.sleep(gap)


async def _measure(
    config: Any, send: Callable[[bytes], None], events: int, gap: float, timeout: float
) -> dict[str, Any]:
    from esm.daemon import Daemon

    h = handlers()
    h.reset()
    daemon = Daemon(config)
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.move_on_after(30):
            while not daemon.runtimes or daemon.not_ready():
                await anyio.sleep(0.02)
        await anyio.sleep(1.0)  # let the first long poll / shard read start
        producer = threading.Thread(target=_producer, args=(send, events, gap, stop), daemon=True)
        producer.start()
        with anyio.move_on_after(timeout):
            while sum(len(records) for _, records in list(h.STAMPS)) < events:
                await anyio.sleep(0.02)
        stop.set()
        daemon.request_stop()
    producer.join(timeout=10)
    return {"stamps": list(h.STAMPS)}


def _summary(latencies: list[float], events: int) -> dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {
        "events": events,
        "received": len(ms),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


def run_sqs(
    endpoint: Endpoint, events: int, gap: float = 0.005, timeout: float = 120, log: Log = print
) -> dict[str, Any]:
    client = boto3_client("sqs", endpoint)
    queue = f"bench-latency-{int(time.time())}"
    url = client.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "60"})["QueueUrl"]
    config = esm_config(
        [
            {
                "name": "latency-sqs",
                "function": "bench",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
                "batch_size": 10,
                "maximum_batching_window_in_seconds": 0,
            }
        ],
        endpoint=endpoint.url,
        handler="esm_bench_handlers.stamp",
    )

    def send(data: bytes) -> None:
        client.send_message(QueueUrl=url, MessageBody=data.decode())

    with quiet_esm_logging():
        result = anyio.run(_measure, config, send, events, gap, timeout)
    latencies = [
        started - orjson.loads(record["body"])["t"]
        for started, records in result["stamps"]
        for record in records
    ]
    summary = _summary(latencies, events) | {"endpoint": endpoint.name}
    log(_line("SQS", summary))
    return summary


def run_kinesis(
    endpoint: Endpoint, events: int, gap: float = 0.005, timeout: float = 120, log: Log = print
) -> dict[str, Any]:
    import tempfile

    client = boto3_client("kinesis", endpoint)
    stream = f"bench-latency-{int(time.time())}"
    client.create_stream(StreamName=stream, ShardCount=1)
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
    )

    def send(data: bytes) -> None:
        client.put_record(StreamName=stream, Data=data, PartitionKey="k")

    with tempfile.TemporaryDirectory(prefix="esm-bench-") as state_dir:
        config = _stream_config(endpoint, stream, "latency-kinesis", "TRIM_HORIZON", state_dir)
        with quiet_esm_logging():
            result = anyio.run(_measure, config, send, events, gap, timeout)
    latencies = [
        started - orjson.loads(base64.b64decode(record["kinesis"]["data"]))["t"]
        for started, records in result["stamps"]
        for record in records
    ]
    summary = _summary(latencies, events) | {"endpoint": endpoint.name}
    log(_line("Kinesis", summary))
    return summary


async def _measure_quiet(
    config: Any,
    send: Callable[[bytes], None],
    shards: int,
    events: int,
    gap: float,
    warmup: float,
    timeout: float,
) -> dict[str, Any]:
    """Like `_measure`, but the producer starts only once every shard is caught up (its
    last read was empty) and `warmup` seconds more have passed, so each event lands on a
    shard that has been quiet for a while: the case the idle read pacing decides."""
    from esm.daemon import Daemon

    h = handlers()
    h.reset()
    daemon = Daemon(config)
    stop = threading.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(daemon.run)
        with anyio.move_on_after(120):
            while daemon.idle_pacer.caught_up < shards:
                await anyio.sleep(0.1)
        await anyio.sleep(warmup)
        producer = threading.Thread(target=_producer, args=(send, events, gap, stop), daemon=True)
        producer.start()
        with anyio.move_on_after(timeout):
            while sum(len(records) for _, records in list(h.STAMPS)) < events:
                await anyio.sleep(0.05)
        stop.set()
        daemon.request_stop()
    producer.join(timeout=10)
    return {"stamps": list(h.STAMPS)}


def run_quiet_shards(
    endpoint: Endpoint,
    shards: int,
    events: int,
    budget: float | None = None,
    gap: float = 0.05,
    warmup: float = 5.0,
    timeout: float = 120,
    log: Log = print,
) -> dict[str, Any]:
    """Latency of records written one at a time to random quiet shards of a stream of
    `shards` idle shards (random partition keys), from LATEST, batch_size 100, window 0:
    Lambda's pace (every caught-up shard read at least once a second) when `budget` is
    None, else the opt-in shared budget of `budget` reads a second. Run in this process,
    with the producer thread, as the other latency rows are."""
    import random
    import tempfile
    from dataclasses import replace

    client = boto3_client("kinesis", endpoint)
    stream = f"bench-quiet-{int(time.time())}-{budget or 0:g}"
    client.create_stream(StreamName=stream, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240}
    )
    keys = random.Random(18)

    def send(data: bytes) -> None:
        client.put_record(StreamName=stream, Data=data, PartitionKey=f"k{keys.random()}")

    with tempfile.TemporaryDirectory(prefix="esm-bench-") as state_dir:
        config = _stream_config(endpoint, stream, "latency-quiet", "LATEST", state_dir)
        config = replace(config, daemon=replace(config.daemon, idle_shard_reads_per_second=budget))
        with quiet_esm_logging():
            result = anyio.run(_measure_quiet, config, send, shards, events, gap, warmup, timeout)
    latencies = [
        started - orjson.loads(base64.b64decode(record["kinesis"]["data"]))["t"]
        for started, records in result["stamps"]
        for record in records
    ]
    summary = _summary(latencies, events) | {
        "endpoint": endpoint.name,
        "shards": shards,
        "budget": budget,
    }
    pace = "Lambda's pace" if budget is None else f"budget {budget:g} reads/s"
    log(_line(f"Kinesis, {shards:,} quiet shards, {pace},", summary))
    return summary


def _line(what: str, s: dict[str, Any]) -> str:
    return (
        f"  latency {what:7} on {s['endpoint']}: "
        f"p50 {s['p50_ms']:.1f} ms, p95 {s['p95_ms']:.1f} ms, "
        f"p99 {s['p99_ms']:.1f} ms ({s['received']:,}/{s['events']:,} events)"
    )


def _stream_config(
    endpoint: Endpoint, stream: str, name: str, starting_position: str, state_dir: str
) -> Any:
    """One Kinesis mapping, batch 100 and no batching window, calling the stamping handler."""
    from pathlib import Path

    return esm_config(
        [
            {
                "name": name,
                "function": "bench",
                "event_source_arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{stream}",
                "starting_position": starting_position,
                "batch_size": 100,
                "maximum_batching_window_in_seconds": 0,
            }
        ],
        endpoint=endpoint.url,
        state_path=Path(state_dir) / "state.sqlite3",
        handler="esm_bench_handlers.stamp",
    )
