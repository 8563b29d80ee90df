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
divided by their count, so it holds the event loop, aiohttp, signing, JSON and timers.
Every figure is measured for each HTTP client of esm.aws_json (aiohttp, the old path, and
esm.http1 on httptools) under each event loop available (asyncio's own, then uvloop), in
this run, so each part's share is read off side by side.
"""

from __future__ import annotations

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
    options = {"use_uvloop": loop == "uvloop"}
    return anyio.run(fn, *args, backend="asyncio", backend_options=options)


async def _cpu_per_call(calls: int, call: Callable[[], Any]) -> float:
    """Microseconds of process CPU per awaited call (after a few warm-up calls)."""
    for _ in range(min(20, calls)):
        await call()
    cpu0 = time.process_time()
    for _ in range(calls):
        await call()
    return 1e6 * (time.process_time() - cpu0) / calls


async def _kinesis(endpoint: Endpoint, stream: str, calls: int) -> dict[str, float]:
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

            return {"get_records_idle": await _cpu_per_call(calls, read)}
        finally:
            await source.aclose()


async def _sqs(endpoint: Endpoint, queue: str, url: str, calls: int) -> dict[str, float]:
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

            figures = {"receive_empty": await _cpu_per_call(calls, receive_empty)}
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

            figures["receive_10"] = await _cpu_per_call(calls, receive_10)
            figures["delete_10"] = await _cpu_per_call(calls, delete_10)
            return figures
        finally:
            await mapping._api.aclose()


def _queue_arn(queue: str) -> str:
    return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}"


def run(calls: int = 2_000, log: Log = print, profile_dir: Path | None = None) -> dict[str, Any]:
    """Every per-call figure for every HTTP client under every available event loop, keyed
    "client+loop"; `profile_dir` adds pyinstrument profiles of the idle GetRecords loop."""
    from esm.aws_json import HTTP_CLIENT_ENV, HTTP_CLIENTS

    use_local_credentials()
    results: dict[str, dict[str, float]] = {}
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
                        _profile(f"{client}-{loop}", loop, kinesis, stream, calls, profile_dir, log)
        finally:
            if saved is None:
                os.environ.pop(HTTP_CLIENT_ENV, None)
            else:
                os.environ[HTTP_CLIENT_ENV] = saved
    return {"calls": calls, "cells": results, "target_us": TARGET_US}


def _profile(
    name: str, loop: str, endpoint: Endpoint, stream: str, calls: int, out: Path, log: Log
) -> None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        log("  --profile needs pyinstrument (the bench extras)")
        return
    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    _run(loop, _kinesis, endpoint, stream, calls)
    profiler.stop()
    path = out / f"profile-get-records-idle-{name}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False, show_all=False))
    log(f"  profile of idle GetRecords ({name}): {path}")
