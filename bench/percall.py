"""Figure 0, the fixed cost of one AWS call: esm CPU per call on a kept-alive connection.

Each call goes through esm's own code for it, against bench's in-memory endpoints (their
CPU is theirs, in another process):

- `get_records_idle`: `KinesisSource.read` of a caught-up shard (an empty GetRecords), what
  every idle shard pays once a read;
- `receive_empty`: `SqsMapping._call("ReceiveMessage")` on an empty queue, WaitTimeSeconds 0;
- `receive_10`: the same with 10 messages waiting (the body parsed, Lambda records built
  and sized as a receive's are);
- `delete_10`: `SqsMapping._delete` of those 10 (one DeleteMessageBatch).

Calls run one after another; the figure is process CPU (user + system) over the calls
divided by their count, so it holds the event loop, aiohttp, signing, JSON and timers, with
the garbage collector tuned as the daemon tunes it (esm.daemon.tune_garbage_collector).
`--profile` adds a CPU-time profile of each figure (`CpuProfiles`).
Every figure is measured for each HTTP client of esm.aws_json (aiohttp, the old path, and
esm.http1 on httptools) under each event loop available (asyncio's own, then uvloop), in
this run, so each part's share is read off side by side.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from bench.endpoints import (
    ACCOUNT,
    REGION,
    Endpoint,
    boto3_client,
    start_fake_kinesis,
    start_fake_sqs,
    use_local_credentials,
)
from bench.harness import esm_config, quiet_esm_logging

Log = Callable[[str], None]
TARGET_US = 100


def loops() -> list[str]:
    """The event loops to measure: asyncio's, and uvloop's where it is installed."""
    names = ["asyncio"]
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return names
    return [*names, "uvloop"]


def _run(loop: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one cell under `loop` with the collector tuned as `esm run` tunes it, so the
    figure is the daemon's: under CPython's default thresholds, receive_10 (whose records
    the delete_10 figure needs, so they stay alive) paid ~30 us a call in collections."""
    from esm.daemon import tune_garbage_collector

    gc.collect()  # start from a clean heap: no earlier cell's garbage to collect here
    tune_garbage_collector()
    options = {"use_uvloop": loop == "uvloop"}
    return anyio.run(fn, *args, backend="asyncio", backend_options=options)


class CpuProfiles:
    """pyinstrument profiles of each figure's timed calls, sampled on process CPU time
    (`time.process_time`), not wall-clock: a call's wait for its answer costs no CPU and
    so takes no share, and what is left is where esm's CPU per call goes. Started after
    the warm-up calls and stopped before the figure's own arithmetic."""

    def __init__(self, out: Path, label: str, interval: float = 0.0001) -> None:
        self.out = out
        self.label = label
        self.interval = interval
        self.paths: dict[str, str] = {}

    def profiler(self) -> Any:
        from pyinstrument import Profiler
        from pyinstrument.stack_sampler import get_stack_sampler

        get_stack_sampler().timer_func = time.process_time
        return Profiler(interval=self.interval, async_mode="disabled")

    def write(self, figure: str, profiler: Any, calls: int) -> None:
        from pyinstrument.stack_sampler import get_stack_sampler

        get_stack_sampler().timer_func = None
        name = figure.replace("_", "-")
        path = self.out / f"profile-{name}.txt"
        header = (
            f"# {figure}: {calls:,} calls, {self.label}; sampled on process CPU time "
            f"(time.process_time) every {1e6 * self.interval:.0f} us of CPU\n"
            "# (the sampler's own cost inflates the total; the shares are what to read)\n"
        )
        text = profiler.output_text(unicode=False, color=False, show_all=False)
        path.write_text(header + text)
        self.paths[figure] = str(path)


async def _cpu_per_call(
    calls: int, call: Callable[[], Any], figure: str = "", profiles: CpuProfiles | None = None
) -> float:
    """Microseconds of process CPU per awaited call (after a few warm-up calls); with
    `profiles`, a CPU-time profile of the timed calls instead (the figure is then the
    profiled one, higher by the sampler's cost)."""
    for _ in range(min(20, calls)):
        await call()
    profiler = profiles.profiler() if profiles is not None else None
    if profiler is not None:
        profiler.start()
    cpu0 = time.process_time()
    for _ in range(calls):
        await call()
    cpu = time.process_time() - cpu0
    if profiler is not None:
        profiler.stop()
        assert profiles is not None
        profiles.write(figure, profiler, calls)
    return 1e6 * cpu / calls


async def _kinesis(
    endpoint: Endpoint, stream: str, calls: int, profiles: CpuProfiles | None = None
) -> dict[str, float]:
    from esm.aws import AwsClients
    from esm.config import DaemonConfig
    from esm.sources.registry import parse_source_arn
    from esm.sources.streams import Position
    from esm.sources.streams.kinesis import KinesisSource

    source_arn = parse_source_arn(f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{stream}")
    async with AwsClients(DaemonConfig(region=REGION, endpoint_url=endpoint.url)) as aws:
        source = KinesisSource(source_arn, aws)
        try:
            shard = (await source.list_shards())[0].shard_id
            iterator = await source.iterator_at(shard, Position("LATEST"))

            async def read() -> None:
                nonlocal iterator
                result = await source.read(shard, iterator)
                assert not result.records, "the shard must stay caught up"
                iterator = result.next_iterator or iterator

            figure = "get_records_idle"
            return {figure: await _cpu_per_call(calls, read, figure, profiles)}
        finally:
            await source.aclose()


async def _sqs(
    endpoint: Endpoint, queue: str, url: str, calls: int, profiles: CpuProfiles | None = None
) -> dict[str, float]:
    from esm.aws import AwsClients
    from esm.batching import BatchBudget
    from esm.invokers import create_functions
    from esm.observability import MappingMetrics, Metrics
    from esm.sources.sqs.runtime import Record, SqsMapping, add_fitting

    config = esm_config(
        [{"name": "percall", "function": "bench", "event_source_arn": _queue_arn(queue)}],
        endpoint=endpoint.url,
    )
    metrics = Metrics()
    function = create_functions(config.functions, metrics)["bench"]
    async with AwsClients(config.daemon, metrics) as aws:
        mapping = SqsMapping(
            config.mappings[0],
            function,
            aws,
            MappingMetrics(metrics, config.mappings[0].name),
            None,
        )
        try:
            await mapping._resolve_queue()
            receive = {
                "QueueUrl": mapping.queue_url,
                "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": 0,
                "MessageSystemAttributeNames": ["All"],
                "MessageAttributeNames": ["All"],
            }

            async def receive_empty() -> None:
                assert not (await mapping._call("ReceiveMessage", receive)).get("Messages")

            figures = {
                "receive_empty": await _cpu_per_call(
                    calls, receive_empty, "receive_empty", profiles
                )
            }
            load = boto3_client("sqs", endpoint)
            received: list[list[Record]] = []
            for _ in range(calls + 20):
                load.send_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "MessageBody": f'{{"n": {i}}}'} for i in range(10)],
                )

            async def receive_10() -> None:
                messages = (await mapping._call("ReceiveMessage", receive))["Messages"]
                assert len(messages) == 10
                records = mapping._records(messages)
                add_fitting(BatchBudget(10), records)  # sized as a receive's records are
                received.append(records)

            async def delete_10() -> None:
                await mapping._delete(received.pop())

            figures["receive_10"] = await _cpu_per_call(calls, receive_10, "receive_10", profiles)
            figures["delete_10"] = await _cpu_per_call(calls, delete_10, "delete_10", profiles)
            return figures
        finally:
            await mapping._api.aclose()


def _queue_arn(queue: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"


def run(calls: int = 2_000, log: Log = print, profile_dir: Path | None = None) -> dict[str, Any]:
    """Every per-call figure for every HTTP client under every available event loop, keyed
    "client+loop"; `profile_dir` adds CPU-time profiles (`CpuProfiles`) of every figure's
    calls on esm's own path (esm.http1 under the last loop, uvloop where installed), in
    runs of their own after the measured ones, so the figures are unprofiled."""
    from esm.aws_json import HTTP_CLIENT_ENV, HTTP_CLIENTS

    use_local_credentials()
    results: dict[str, dict[str, float]] = {}
    profiles: dict[str, str] = {}
    saved = os.environ.get(HTTP_CLIENT_ENV)
    with quiet_esm_logging(), start_fake_kinesis() as kinesis, start_fake_sqs() as sqs:
        stream = f"bench-percall-{int(time.time())}"
        boto3_client("kinesis", kinesis).create_stream(StreamName=stream, ShardCount=1)
        queue = stream
        url = boto3_client("sqs", sqs).create_queue(QueueName=queue)["QueueUrl"]
        try:
            for client in reversed(HTTP_CLIENTS):  # the old path first
                os.environ[HTTP_CLIENT_ENV] = client
                for loop in loops():
                    figures = _run(loop, _kinesis, kinesis, stream, calls)
                    figures |= _run(loop, _sqs, sqs, queue, url, calls)
                    results[f"{client}+{loop}"] = figures
                    log(
                        f"  per call ({client} + {loop}): "
                        + ", ".join(f"{name} {us:.0f} us" for name, us in figures.items())
                    )
            if profile_dir is not None:
                profiles = _profile(kinesis, stream, sqs, queue, url, calls, profile_dir, log)
        finally:
            if saved is None:
                os.environ.pop(HTTP_CLIENT_ENV, None)
            else:
                os.environ[HTTP_CLIENT_ENV] = saved
    result: dict[str, Any] = {"calls": calls, "cells": results, "target_us": TARGET_US}
    if profiles:
        result["profiles"] = profiles
    return result


def _profile(
    kinesis: Endpoint,
    stream: str,
    sqs: Endpoint,
    queue: str,
    url: str,
    calls: int,
    out: Path,
    log: Log,
) -> dict[str, str]:
    """CPU-time profiles of the four figures on esm.http1 under the best loop."""
    from esm.aws_json import HTTP_CLIENT_ENV

    try:
        import pyinstrument  # noqa: F401
    except ImportError:
        log("  --profile needs pyinstrument (the bench extras)")
        return {}
    os.environ[HTTP_CLIENT_ENV] = "httptools"
    loop = loops()[-1]
    profiles = CpuProfiles(out, f"httptools+{loop}")
    figures = _run(loop, _kinesis, kinesis, stream, calls, profiles)
    figures |= _run(loop, _sqs, sqs, queue, url, calls, profiles)
    for figure, path in profiles.paths.items():
        us = figures[figure]
        log(f"  CPU profile of {figure} (httptools + {loop}, {us:.0f} us profiled): {path}")
    return profiles.paths
