"""Figure 6, SQS scaling over time: concurrency against messages waiting on a deep queue.

A real `SqsMapping` drains a deep queue on bench.fake_sqs whose function (`hold`, async)
takes a second per batch of 10, so batches in flight are what the mapping's scaling gives
it. Sampled every 0.25 s: receivers, batches in flight, and the queue's
ApproximateNumberOfMessages. Two runs in one: Lambda's standard mode (5 at start, up to
300 more a minute) and provisioned mode (`provisioned_poller_config`, 3x as fast).
The plot (matplotlib, the bench extras) goes to bench/results/sqs-ramp-<commit>.png.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from bench.endpoints import ACCOUNT, REGION, Endpoint, boto3_client, start_fake_sqs
from bench.harness import esm_config, handlers, quiet_esm_logging

Log = Callable[[str], None]
SAMPLE_EVERY = 0.25


def _fill(endpoint: Endpoint, url: str, count: int) -> None:
    import json
    import urllib.request

    request = urllib.request.Request(
        endpoint.url + "/",
        data=json.dumps({"QueueUrl": url, "Count": count, "MessageBody": '{"n": 1}'}).encode(),
        method="POST",
        headers={
            "X-Amz-Target": "AmazonSQS.BenchFill",
            "Content-Type": "application/x-amz-json-1.0",
        },
    )
    with urllib.request.urlopen(request, timeout=60):
        pass


async def _ramp(
    endpoint: Endpoint, queue: str, seconds: float, provisioned: Any
) -> list[tuple[float, int, int, int]]:
    from esm.aws import AwsClients
    from esm.invokers import create_functions
    from esm.observability import MappingMetrics, Metrics
    from esm.sources.sqs import SqsMapping

    config = esm_config(
        [
            {
                "name": f"ramp-{queue}",
                "function": "bench",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{queue}",
                "batch_size": 10,
            }
        ],
        endpoint=endpoint.url,
        handler="esm_bench_handlers.hold",
    )
    h = handlers()
    metrics = Metrics()
    function = create_functions(config.functions, metrics)["bench"]
    samples: list[tuple[float, int, int, int]] = []
    async with AwsClients(config.daemon, metrics) as aws:
        mapping = SqsMapping(
            config.mappings[0],
            function,
            aws,
            MappingMetrics(metrics, config.mappings[0].name),
            None,
            provisioned=provisioned,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping.run)
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < seconds:
                waiting = -1
                if mapping.queue_url:
                    attributes = await mapping._call(
                        "GetQueueAttributes",
                        {"QueueUrl": mapping.queue_url, "AttributeNames": ["All"]},
                    )
                    waiting = int(attributes["Attributes"]["ApproximateNumberOfMessages"])
                samples.append((elapsed, mapping._receivers, h.IN_FLIGHT, waiting))
                await anyio.sleep(SAMPLE_EVERY)
            mapping.stop()
    return samples


def run(seconds: float, messages: int, log: Log = print, out: Path | None = None) -> dict[str, Any]:
    """Both modes' ramps on one fake_sqs; a PNG in `out` when matplotlib is installed."""
    from esm.sources.sqs.scaling import ProvisionedPollers

    modes: dict[str, Any] = {
        "standard": None,
        "provisioned": ProvisionedPollers(minimum_pollers=10, maximum_pollers=2000),
    }
    results: dict[str, Any] = {}
    with quiet_esm_logging(), start_fake_sqs() as endpoint:
        client = boto3_client("sqs", endpoint)
        for mode, provisioned in modes.items():
            queue = f"bench-ramp-{mode}-{int(time.time())}"
            url = client.create_queue(QueueName=queue, Attributes={"VisibilityTimeout": "60"})[
                "QueueUrl"
            ]
            _fill(endpoint, url, messages)
            handlers().reset()
            samples = anyio.run(_ramp, endpoint, queue, seconds, provisioned)
            last = samples[-1]
            start = next((s for s in samples if s[1] > 0), samples[0])  # receivers started
            per_minute = 60 * (last[1] - start[1]) / max(last[0] - start[0], 1e-9)
            results[mode] = {
                "samples": samples,
                "config": provisioned.__dict__ if provisioned else {},
                "final_in_flight": last[2],
                "final_receivers": last[1],
                "added_per_minute": per_minute,
            }
            log(
                f"  {mode:11}: {last[1]} receivers, {last[2]} batches in flight after "
                f"{last[0]:.0f} s (receivers added at {per_minute:,.0f} a minute); "
                f"{last[3]:,} messages waiting"
            )
    path = plot(results, out) if out is not None else None
    return {"seconds": seconds, "messages": messages, "modes": results, "plot": path}


def plot(results: dict[str, Any], out: Path, name: str = "sqs-ramp") -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from bench.run import git_commit

    fig, left = plt.subplots(figsize=(8, 4.5))
    right = left.twinx()
    for (mode, result), color in zip(results.items(), ("tab:blue", "tab:orange"), strict=False):
        t = [s[0] for s in result["samples"]]
        left.plot(t, [s[2] for s in result["samples"]], color=color, label=f"{mode}: in flight")
        known = [s for s in result["samples"] if s[3] >= 0]  # -1: queue not resolved yet
        right.plot(
            [s[0] for s in known],
            [s[3] for s in known],
            color=color,
            linestyle="--",
            label=f"{mode}: waiting",
        )
    left.set_xlabel("seconds since the mapping started")
    left.set_ylabel("batches in flight (concurrency)")
    right.set_ylabel("messages waiting (dashed)")
    left.legend(loc="upper left")
    right.legend(loc="lower right")
    left.set_title("esm SQS scaling on a deep queue: standard vs provisioned mode")
    fig.tight_layout()
    path = out / f"{name}-{git_commit()[0]}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
