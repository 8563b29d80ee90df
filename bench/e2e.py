"""Figures 2 and 3, end to end: esm's daemon vs a naive single-loop boto3 consumer, both
draining the same data from the same local endpoint in the same run.

Streams: a 4-shard Kinesis stream preloaded once; both sides read it from TRIM_HORIZON
(reading does not consume), so they see the same records. The naive consumer is one
loop: GetRecords (Limit 10,000) -> handler -> next iterator, round robin over the shards.

SQS: a queue is loaded, drained by one side, loaded again with the same bodies, drained by
the other. The naive consumer is one loop: ReceiveMessage (10, long poll) -> handler ->
DeleteMessageBatch. esm runs with `maximum_concurrency` 10.

esm runs as its real daemon (`esm.daemon.Daemon`, aiobotocore, in-process Python handler)
in this process; the clock starts when the daemon starts (its start is part of a drain, as
the naive loop's client creation is part of its own) and stops when the handler finished
the batch that completed the count (`esm_bench_handlers.LAST_AT`, not when the waiting loop
next looks). The handler is the same counting no-op on both sides.

On bench.fake_kinesis each esm drain also gets its timeline from the server's trace
(`drain_timeline`): when the first call, each shard's first and last GetRecords arrived,
and the shortest span of 6 reads of one shard (AWS allows 5 a second: >= 1 s, less what the
server's one loop delayed the first of them on its way in).

`python -m bench.e2e --repeats N` runs only the fake_kinesis streams drain, N times per
batch size, interleaved, and prints each drain's timeline (the profile of figure 2's floor).
"""

from __future__ import annotations

import concurrent.futures
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson

from bench.endpoints import ACCOUNT, REGION, Endpoint, boto3_client
from bench.harness import esm_config, handlers, measure, proc_cpu_seconds, quiet_esm_logging

Log = Callable[[str], None]


def with_endpoint_cpu(endpoint: Endpoint, drain: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one side's drain and note the endpoint's CPU meanwhile (in % of one core): a side
    that finds the endpoint near 100% is measuring the endpoint, not itself."""
    cpu0, wall0 = proc_cpu_seconds(endpoint.pid), time.perf_counter()
    result = drain()
    wall = time.perf_counter() - wall0
    used = proc_cpu_seconds(endpoint.pid) - cpu0
    result["endpoint_cpu_percent"] = 100 * used / wall if wall > 0 else float("nan")
    result["cpu_percent"] = 100 * result["cpu_s"] / wall if wall > 0 else float("nan")
    return result


def body(i: int) -> bytes:
    return orjson.dumps({"type": "order", "id": i, "amount": 12.5})


# --- esm side ------------------------------------------------------------------------------


async def _daemon_until(config: Any, expected: int, timeout: float) -> dict[str, Any]:
    from esm.daemon import Daemon

    h = handlers()
    h.reset()
    daemon = Daemon(config)
    started_monotonic = time.monotonic()
    with measure() as span:
        async with anyio.create_task_group() as tg:
            tg.start_soon(daemon.run)
            with anyio.move_on_after(timeout):
                while expected > h.RECORDS:
                    await anyio.sleep(0.005)
            drained_wall = h.LAST_AT - span.started if expected <= h.RECORDS else None
            daemon.request_stop()
    return {
        "seconds": drained_wall if drained_wall is not None else float("nan"),
        "started_monotonic": started_monotonic,
        "delivered": h.RECORDS,
        "invocations": h.BATCHES,
        "cpu_s": span.cpu,
        "timed_out": drained_wall is None,
    }


# --- streams -------------------------------------------------------------------------------


def prepare_stream(endpoint: Endpoint, name: str, shards: int, records: int, log: Log) -> float:
    """Create the stream and load it with `records` small records from 4 writer threads."""
    client = boto3_client("kinesis", endpoint)
    client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 150}
    )
    started = time.perf_counter()
    chunks = [range(s, min(s + 500, records)) for s in range(0, records, 500)]
    writers = 1 if endpoint.name == "moto" else 4  # moto loses records under concurrent writes

    def write(part: list[range]) -> int:
        c = boto3_client("kinesis", endpoint)
        written = 0
        for chunk in part:
            entries = [{"Data": body(i), "PartitionKey": f"pk-{i}"} for i in chunk]
            for _ in range(10):
                response = c.put_records(StreamName=name, Records=entries)
                if not response.get("FailedRecordCount"):
                    break
                entries = [
                    e for e, r in zip(entries, response["Records"], strict=True) if "ErrorCode" in r
                ]
            written += len(chunk)
        return written

    with concurrent.futures.ThreadPoolExecutor(writers) as pool:
        written = sum(pool.map(write, [chunks[w::writers] for w in range(writers)]))
    seconds = time.perf_counter() - started
    log(
        f"  loaded {written:,} records into {shards} shards of {name} on {endpoint.name} "
        f"in {seconds:.1f} s"
    )
    return seconds


def naive_kinesis_drain(
    endpoint: Endpoint, name: str, expected: int, timeout: float
) -> dict[str, Any]:
    """One loop, round robin over the shards: GetRecords -> handler -> next iterator."""
    h = handlers()
    h.reset()
    with measure() as span:
        client = boto3_client("kinesis", endpoint)
        deadline = time.monotonic() + timeout
        shards = client.list_shards(StreamName=name)["Shards"]
        iterators = {
            s["ShardId"]: client.get_shard_iterator(
                StreamName=name, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            for s in shards
        }
        while expected > h.RECORDS and iterators and time.monotonic() < deadline:
            for shard_id, iterator in list(iterators.items()):
                response = client.get_records(ShardIterator=iterator, Limit=10_000)
                if response["Records"]:
                    h.count({"Records": response["Records"]}, None)
                if response.get("NextShardIterator"):
                    iterators[shard_id] = response["NextShardIterator"]
                else:
                    del iterators[shard_id]
    done = expected <= h.RECORDS
    return {
        "seconds": span.wall if done else float("nan"),
        "delivered": h.RECORDS,
        "invocations": h.BATCHES,
        "cpu_s": span.cpu,
        "timed_out": not done,
    }


def esm_kinesis_drain(
    endpoint: Endpoint, name: str, expected: int, batch_size: int, timeout: float
) -> dict[str, Any]:
    if endpoint.name == "fake_kinesis":
        endpoint_trace(endpoint, reset=True)
    result = _esm_kinesis_drain(endpoint, name, expected, batch_size, timeout)
    if endpoint.name == "fake_kinesis" and not result["timed_out"]:
        trace = endpoint_trace(endpoint, reset=True)
        result["timeline"] = drain_timeline(trace, result["started_monotonic"], result["seconds"])
    return result


def endpoint_trace(endpoint: Endpoint, reset: bool = False) -> dict[str, Any]:
    """bench.fake_kinesis's `BenchTrace`: the calls it served since the last reset."""
    import urllib.request

    request = urllib.request.Request(
        endpoint.url + "/",
        data=orjson.dumps({"Reset": reset}),
        method="POST",
        headers={
            "X-Amz-Target": "Kinesis_20131202.BenchTrace",
            "Content-Type": "application/x-amz-json-1.1",
        },
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return dict(orjson.loads(response.read()))


def drain_timeline(trace: dict[str, Any], started: float, seconds: float) -> dict[str, Any]:
    """Where a drain's time went, in ms from the daemon's start (the same monotonic clock
    as the server's): its first call, each shard's first and last GetRecords (arrival), the
    span between them (Kinesis's limit makes it >= 1 s for a 6-page shard), the last page's
    answer, and the end (the handler finished the last batch)."""
    ms = [
        (op, shard, 1000 * (arrived - started), 1000 * (answered - started), served)
        for op, shard, arrived, answered, served in trace["Calls"]
    ]
    shards: dict[str, dict[str, Any]] = {}
    for op, shard, arrived, answered, served in ms:
        if op == "GetShardIterator":
            shards.setdefault(shard, {"iterator_ms": arrived, "reads": []})
        elif op == "GetRecords" and served and shard in shards:
            shards[shard]["reads"].append((arrived, answered, served))
    summary = {
        shard: {
            "iterator_ms": round(s["iterator_ms"], 1),
            "reads_with_records": len(s["reads"]),
            "first_read_ms": round(s["reads"][0][0], 1),
            "last_read_ms": round(s["reads"][-1][0], 1),
            "last_read_answered_ms": round(s["reads"][-1][1], 1),
            "first_to_last_read_ms": round(s["reads"][-1][0] - s["reads"][0][0], 1),
        }
        for shard, s in sorted(shards.items())
        if s["reads"]
    }
    return {
        "first_call_ms": round(ms[0][2], 1) if ms else float("nan"),
        "first_call": ms[0][0] if ms else "",
        "shards": summary,
        "end_ms": round(1000 * seconds, 1),
        "most_reads_in_one_second": trace["MostReadsInOneSecond"],
        "shortest_six_read_span_ms": (
            None if trace["ShortestSixReadSpan"] is None else 1000 * trace["ShortestSixReadSpan"]
        ),
    }


def _esm_kinesis_drain(
    endpoint: Endpoint, name: str, expected: int, batch_size: int, timeout: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="esm-bench-") as state_dir:
        config = esm_config(
            [
                {
                    "name": f"drain-{batch_size}",
                    "function": "bench",
                    "event_source_arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{name}",
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": batch_size,
                }
            ],
            endpoint=endpoint.url,
            state_path=Path(state_dir) / "state.sqlite3",
        )
        return anyio.run(_daemon_until, config, expected, timeout)


def run_streams(
    endpoint: Endpoint,
    records: int,
    shards: int = 4,
    batch_sizes: tuple[int, ...] = (10_000, 100),
    timeout: float = 120,
    log: Log = print,
) -> dict[str, Any]:
    name = f"bench-drain-{int(time.time())}"
    load_s = prepare_stream(endpoint, name, shards, records, log)
    naive = with_endpoint_cpu(
        endpoint, lambda: naive_kinesis_drain(endpoint, name, records, timeout)
    )
    log(f"  naive boto3 loop: {_rate(naive, records)}")
    esm_runs = {}
    with quiet_esm_logging():
        for batch_size in batch_sizes:
            result = with_endpoint_cpu(
                endpoint,
                lambda b=batch_size: esm_kinesis_drain(endpoint, name, records, b, timeout),  # type: ignore[misc]
            )
            esm_runs[str(batch_size)] = result
            log(
                f"  esm batch_size {batch_size}: {_rate(result, records)}  "
                f"({_ratio(naive, result):.2f}x naive)"
            )
    limit = read_limit(endpoint, name, records)
    log(
        f"  the limit: {limit['limit_s']:.2f} s at 5 reads/s/shard x 10,000 records "
        f"(largest shard {limit['largest_shard']:,} records: {limit['reads_needed']} reads, "
        f"the last {limit['last_read_at_s']:.1f} s after the first)"
    )
    return {
        "endpoint": endpoint.name,
        "shards": shards,
        "records": records,
        "load_s": load_s,
        "naive": naive,
        "esm": esm_runs,
        "ratio": {k: _ratio(naive, v) for k, v in esm_runs.items()},
        "limit": limit,
        "of_limit": {k: limit["limit_s"] / v["seconds"] for k, v in esm_runs.items()},
    }


def read_limit(endpoint: Endpoint, name: str, records: int) -> dict[str, Any]:
    """What Kinesis's per-shard read limit allows for this drain, whatever the consumer:
    5 GetRecords a second per shard, 10,000 records each, so `records` spread over the
    shards take at least records / (shards x 50,000) seconds. Keys hash unevenly (MD5 of
    the partition key into each shard's hash key range, computed here as Kinesis does), so
    the largest shard's reads are also given: its last read cannot start earlier than
    (reads - 1) / 5 s after its first."""
    import hashlib
    import math

    shards = boto3_client("kinesis", endpoint).list_shards(StreamName=name)["Shards"]
    ranges = sorted(
        (int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]))
        for s in shards
    )
    counts = [0] * len(ranges)
    starts = [low for low, _ in ranges]
    for i in range(records):
        key = int.from_bytes(hashlib.md5(f"pk-{i}".encode()).digest(), "big")
        counts[_shard_of(starts, key)] += 1
    largest = max(counts)
    reads = math.ceil(largest / 10_000)
    return {
        "limit_s": records / (len(shards) * 5 * 10_000),
        "records_per_shard": counts,
        "largest_shard": largest,
        "reads_needed": reads,
        "last_read_at_s": (reads - 1) / 5,
    }


def _shard_of(starts: list[int], key: int) -> int:
    import bisect

    return bisect.bisect_right(starts, key) - 1


# --- SQS -----------------------------------------------------------------------------------


def load_queue(endpoint: Endpoint, url: str, count: int) -> float:
    client = boto3_client("sqs", endpoint)
    started = time.perf_counter()
    for start in range(0, count, 10):
        entries = [
            {"Id": str(i), "MessageBody": body(start + i).decode()}
            for i in range(min(10, count - start))
        ]
        client.send_message_batch(QueueUrl=url, Entries=entries)
    return time.perf_counter() - started


def naive_sqs_drain(endpoint: Endpoint, url: str, expected: int, timeout: float) -> dict[str, Any]:
    """One loop: ReceiveMessage -> handler -> DeleteMessageBatch."""
    h = handlers()
    h.reset()
    with measure() as span:
        client = boto3_client("sqs", endpoint)
        deadline = time.monotonic() + timeout
        while expected > h.RECORDS and time.monotonic() < deadline:
            messages = (
                client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                    "Messages"
                )
                or []
            )
            if not messages:
                continue
            h.count({"Records": messages}, None)
            client.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )
    done = expected <= h.RECORDS
    return {
        "seconds": span.wall if done else float("nan"),
        "delivered": h.RECORDS,
        "invocations": h.BATCHES,
        "cpu_s": span.cpu,
        "timed_out": not done,
    }


def esm_sqs_drain(
    endpoint: Endpoint, queue: str, expected: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    config = esm_config(
        [
            {
                "name": "drain-sqs",
                "function": "bench",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
                "batch_size": 10,
                "scaling_config": {"maximum_concurrency": concurrency},
            }
        ],
        endpoint=endpoint.url,
    )
    return anyio.run(_daemon_until, config, expected, timeout)


def run_sqs(
    endpoint: Endpoint, messages: int, concurrency: int = 10, timeout: float = 180, log: Log = print
) -> dict[str, Any]:
    client = boto3_client("sqs", endpoint)
    queue = f"bench-drain-{int(time.time())}"
    url = client.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "120"})["QueueUrl"]
    load_s = load_queue(endpoint, url, messages)
    log(f"  loaded {messages:,} messages into {queue} on {endpoint.name} in {load_s:.1f} s")
    naive = with_endpoint_cpu(endpoint, lambda: naive_sqs_drain(endpoint, url, messages, timeout))
    log(f"  naive boto3 loop: {_rate(naive, messages)}")
    client.purge_queue(QueueUrl=url)
    load_queue(endpoint, url, messages)
    with quiet_esm_logging():
        esm = with_endpoint_cpu(
            endpoint, lambda: esm_sqs_drain(endpoint, queue, messages, concurrency, timeout)
        )
    ratio = _ratio(naive, esm)
    log(f"  esm maximum_concurrency {concurrency}: {_rate(esm, messages)}  ({ratio:.2f}x naive)")
    return {
        "endpoint": endpoint.name,
        "messages": messages,
        "maximum_concurrency": concurrency,
        "load_s": load_s,
        "naive": naive,
        "esm": esm,
        "ratio": ratio,
    }


def _rate(result: dict[str, Any], records: int) -> str:
    if result["timed_out"]:
        return f"TIMED OUT after delivering {result['delivered']:,}"
    result["records_per_s"] = records / result["seconds"]
    return (
        f"{result['seconds']:.2f} s, {result['records_per_s']:,.0f} records/s "
        f"(consumer CPU {result['cpu_percent']:.0f}%, "
        f"endpoint CPU {result['endpoint_cpu_percent']:.0f}% of a core)"
    )


def _ratio(naive: dict[str, Any], esm: dict[str, Any]) -> float:
    if naive["timed_out"] or esm["timed_out"]:
        return float("nan")
    return float(naive["seconds"] / esm["seconds"])


def main(argv: list[str] | None = None) -> int:
    """Only figure 2's fake_kinesis drain, repeated: each drain's time and timeline."""
    import argparse
    import json
    import statistics

    from bench import endpoints

    parser = argparse.ArgumentParser(description="figure 2's streams drain on bench.fake_kinesis")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch-sizes", default="10000,100")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="drains run first and not counted (in `python -m bench` the kinesalite drains "
        "before these have imported everything a daemon imports when it starts)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the runs as JSON here")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="then profile one more drain (first batch size) with pyinstrument, written here",
    )
    args = parser.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    endpoints.use_local_credentials()
    runs: dict[str, list[dict[str, Any]]] = {str(b): [] for b in batch_sizes}
    with endpoints.start_fake_kinesis() as endpoint, quiet_esm_logging():
        name = f"bench-drain-{int(time.time())}"
        prepare_stream(endpoint, name, 4, args.records, print)
        for _ in range(args.warmup):
            esm_kinesis_drain(endpoint, name, args.records, batch_sizes[0], 60)
        for repeat in range(args.repeats):
            for batch_size in batch_sizes:
                result = esm_kinesis_drain(endpoint, name, args.records, batch_size, 60)
                runs[str(batch_size)].append(result)
                line = _timeline_line(result.get("timeline"))
                print(f"  #{repeat} batch {batch_size}: {result['seconds']:.3f} s  {line}")
        limit = read_limit(endpoint, name, args.records)
        if args.profile is not None:
            _profile_drain(endpoint, name, args.records, batch_sizes[0], args.profile)
    for batch_size, results in runs.items():
        seconds = [r["seconds"] for r in results]
        median = statistics.median(seconds)
        print(
            f"batch {batch_size}: median {median:.3f} s of {len(seconds)} "
            f"({', '.join(f'{s:.3f}' for s in seconds)}) = "
            f"{100 * limit['limit_s'] / median:.1f}% of the {limit['limit_s']:.2f} s limit"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"runs": runs, "limit": limit}, indent=1))
    return 0


def _profile_drain(endpoint: Endpoint, name: str, records: int, batch_size: int, out: Path) -> None:
    """One drain under pyinstrument (wall-clock samples of this process's main thread, every
    0.5 ms, from the daemon's start to the handler's last batch), and its timeline."""
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005, async_mode="disabled")
    profiler.start()
    result = esm_kinesis_drain(endpoint, name, records, batch_size, 60)
    profiler.stop()
    header = (
        f"drain of {records:,} records, batch {batch_size:,}: {result['seconds']:.3f} s "
        f"(under the profiler)\n{_timeline_line(result.get('timeline'))}\n\n"
    )
    out.write_text(header + profiler.output_text(unicode=False, show_all=False))


def _timeline_line(timeline: dict[str, Any] | None) -> str:
    if not timeline:
        return ""
    shards = timeline["shards"].values()
    first = min(s["first_read_ms"] for s in shards)
    worst = max(shards, key=lambda s: s["last_read_answered_ms"])
    return (
        f"first call {timeline['first_call_ms']:.0f} ms, first read {first:.0f} ms, "
        f"critical shard: iterator {worst['iterator_ms']:.0f}, first read "
        f"{worst['first_read_ms']:.0f}, last read {worst['last_read_ms']:.0f} "
        f"(+{worst['first_to_last_read_ms']:.0f}), answered {worst['last_read_answered_ms']:.0f}, "
        f"end {timeline['end_ms']:.0f} ms; shortest 6-read span "
        f"{timeline['shortest_six_read_span_ms'] or 0:.1f} ms"
    )


if __name__ == "__main__":
    raise SystemExit(main())
