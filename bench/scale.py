"""Figure 5, scale: idle sources in one esm process, measured from outside.

esm runs as its real CLI (`python -m esm run -c esm.toml`) in its own process, so the figures
are that process alone: RSS (/proc/PID/statm) sampled every second and CPU (utime + stime
from /proc/PID/stat) over the window, after a warm-up in which every shard poller has
started (read from the daemon's /metrics: `esm_pollers`). The endpoint's own CPU over the
same window is reported beside it, since the two share the machine's cores. For Kinesis the
warm-up starts once every shard is caught up (`esm_caught_up_shards`): until then shards
are read several times a second each, which on kinesalite lasts tens of seconds.

Kinesis: one mapping on one stream of N shards (1,000 by default), starting at LATEST,
nothing written, every shard read at least once a second (esm's default, as Lambda reads
them) or under the opt-in shared budget; on bench.fake_kinesis (which counts the GetRecords
calls it serves, so the figure also gives esm's CPU per poll) and on kinesalite (its shard
limit raised). kinesalite needs most of a core to answer 1,000 shards polled once a second,
so there the poll rate is partly the endpoint's. SQS: 100 mappings on 100 empty
queues (moto), each polled by Lambda's five long-polling receivers.

`plot_lambda_pace` draws esm's CPU against the shard count at Lambda's pace (every idle
shard read once a second) from a sweep of runs, with a straight line through the origin at
the measured cost per read for reference.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.endpoints import ACCOUNT, REGION, Endpoint, boto3_client, endpoint_calls, free_port
from bench.harness import BENCH_DIR, HANDLERS_DIR, proc_cpu_seconds, proc_rss_bytes

Log = Callable[[str], None]


def _toml(
    endpoint: Endpoint,
    http_port: int,
    state: Path,
    mappings: list[dict[str, Any]],
    daemon: dict[str, Any] | None = None,
) -> str:
    lines = [
        "[daemon]",
        *(f"{key} = {value!r}" for key, value in (daemon or {}).items()),
        f'endpoint_url = "{endpoint.url}"',
        f'http_address = "127.0.0.1:{http_port}"',
        f'region = "{REGION}"',
        'log_format = "json"',
        'log_level = "info"',
        "",
        "[state]",
        f'path = "{state}"',
        "",
        "[functions.bench]",
        'handler = "esm_bench_handlers.count"',
        f'code_path = "{HANDLERS_DIR}"',
        "",
    ]
    for mapping in mappings:
        lines.append("[[mappings]]")
        for key, value in mapping.items():
            lines.append(f"{key} = {value!r}".replace("'", '"'))
        lines.append("")
    return "\n".join(lines)


def _metric(http_port: int, prefix: str) -> float:
    """The sum of the series starting with `prefix` on esm's /metrics (-1 if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return -1
    total = 0.0
    for line in text.splitlines():
        if line.startswith(prefix):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _pollers(http_port: int) -> float:
    return _metric(http_port, "esm_pollers{")


def _observe(
    endpoint: Endpoint,
    mappings: list[dict[str, Any]],
    expect_pollers: int,
    warmup: float,
    window: float,
    log: Log,
    esm_command: list[str] | None = None,
    daemon: dict[str, Any] | None = None,
    family: str = "kinesis",
) -> dict[str, Any]:
    """`esm_command` replaces `python -m esm` (e.g. to try a change); "-c CONFIG" is appended.
    `daemon` adds keys to the config's [daemon] table."""
    with tempfile.TemporaryDirectory(prefix="esm-bench-scale-") as tmp:
        http_port = free_port()
        config = Path(tmp) / "esm.toml"
        config.write_text(_toml(endpoint, http_port, Path(tmp) / "state.sqlite3", mappings, daemon))
        stderr = open(Path(tmp) / "esm.log", "wb")  # noqa: SIM115 - closed below
        command = esm_command or [sys.executable, "-m", "esm", "run"]
        proc = subprocess.Popen(
            [*command, "-c", str(config)],
            cwd=str(BENCH_DIR.parent),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            started = time.monotonic()
            pollers = -1.0
            while time.monotonic() - started < 120:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"esm exited with {proc.returncode}: see {config.parent}/esm.log"
                    )
                pollers = _pollers(http_port)
                if pollers >= expect_pollers:
                    break
                time.sleep(0.5)
            startup_s = time.monotonic() - started
            if family == "kinesis":
                # Every shard's first reads (0.25 s .. 1 s apart) must be over, or the
                # window measures start-up: on kinesalite they take tens of seconds.
                while time.monotonic() - started < 180:
                    if _metric(http_port, "esm_caught_up_shards ") >= expect_pollers:
                        break
                    time.sleep(0.5)
            caught_up_s = time.monotonic() - started
            time.sleep(warmup)
            rss: list[int] = []
            calls0 = endpoint_calls(endpoint)
            cpu0, ep_cpu0, t0 = (
                proc_cpu_seconds(proc.pid),
                proc_cpu_seconds(endpoint.pid),
                time.monotonic(),
            )
            while time.monotonic() - t0 < window:
                rss.append(proc_rss_bytes(proc.pid))
                time.sleep(min(1.0, max(0.0, window - (time.monotonic() - t0))))
            elapsed = time.monotonic() - t0
            cpu = proc_cpu_seconds(proc.pid) - cpu0
            ep_cpu = proc_cpu_seconds(endpoint.pid) - ep_cpu0
            calls1 = endpoint_calls(endpoint)
            rss.append(proc_rss_bytes(proc.pid))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            stderr.close()
    reads = None
    if calls0 is not None and calls1 is not None:
        reads = calls1.get("GetRecords", 0) - calls0.get("GetRecords", 0)
    return {
        "get_records_per_s": reads / elapsed if reads is not None else None,
        "cpu_us_per_get_records": 1e6 * cpu / reads if reads else None,
        "pollers": pollers,
        "startup_s": startup_s,
        "caught_up_s": caught_up_s,
        "window_s": elapsed,
        "rss_mb_max": max(rss) / 2**20,
        "rss_mb_last": rss[-1] / 2**20,
        "cpu_percent": 100 * cpu / elapsed,
        "endpoint_cpu_percent": 100 * ep_cpu / elapsed,
    }


def run_kinesis(
    endpoint: Endpoint,
    shards: int,
    warmup: float = 10,
    window: float = 60,
    log: Log = print,
    esm_command: list[str] | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """esm's default reads every idle shard at least once a second, as Lambda does;
    `budget` sets the opt-in `[daemon] idle_shard_reads_per_second` instead."""
    client = boto3_client("kinesis", endpoint)
    stream = f"bench-idle-{int(time.time())}"
    client.create_stream(StreamName=stream, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=stream, WaiterConfig={"Delay": 0.5, "MaxAttempts": 240}
    )
    mappings = [
        {
            "name": "idle-shards",
            "function": "bench",
            "event_source_arn": f"arn:aws:kinesis:{REGION}:{ACCOUNT}:stream/{stream}",
            "starting_position": "LATEST",
        }
    ]
    daemon = {"idle_shard_reads_per_second": budget} if budget is not None else None
    result = _observe(endpoint, mappings, shards, warmup, window, log, esm_command, daemon) | {
        "shards": shards,
        "endpoint": endpoint.name,
        "pace": "lambda" if budget is None else "budget",
        "budget": budget,
    }
    reads = ""
    if result["get_records_per_s"] is not None:
        reads = (
            f", {result['get_records_per_s']:,.0f} GetRecords/s at "
            f"{result['cpu_us_per_get_records'] or float('nan'):.0f} us of esm CPU each"
        )
    log(
        f"  {shards:,} idle shards on {endpoint.name}, "
        f"{'Lambda pace' if budget is None else f'budget {budget:g} reads/s'}:"
        f" RSS {result['rss_mb_max']:.0f} MB, "
        f"CPU {result['cpu_percent']:.1f}% of a core "
        f"(endpoint {result['endpoint_cpu_percent']:.0f}%), "
        f"{result['pollers']:.0f} pollers up after {result['startup_s']:.1f} s, "
        f"all caught up after {result['caught_up_s']:.1f} s{reads}"
    )
    return result


def run_sqs(
    endpoint: Endpoint, queues: int, warmup: float = 10, window: float = 60, log: Log = print
) -> dict[str, Any]:
    client = boto3_client("sqs", endpoint)
    prefix = f"bench-idle-{int(time.time())}"
    mappings = []
    for i in range(queues):
        name = f"{prefix}-{i}"
        client.create_queue(QueueName=name, Attributes={"VisibilityTimeout": "60"})
        mappings.append(
            {
                "name": name,
                "function": "bench",
                "event_source_arn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}",
            }
        )
    result = _observe(endpoint, mappings, queues, warmup, window, log, family="sqs") | {
        "queues": queues,
        "endpoint": endpoint.name,
    }
    log(
        f"  {queues:,} idle queues on {endpoint.name}: RSS {result['rss_mb_max']:.0f} MB, "
        f"CPU {result['cpu_percent']:.1f}% of a core "
        f"(endpoint {result['endpoint_cpu_percent']:.0f}%)"
    )
    return result


def plot_lambda_pace(runs: list[dict[str, Any]], out: Path) -> str | None:
    """CPU (% of a core) against idle shards at Lambda's pace; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from bench.run import git_commit

    runs = sorted(runs, key=lambda r: r["shards"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["shards"] for r in runs], [r["cpu_percent"] for r in runs], "o-", label="esm CPU")
    ax.axhline(10, color="grey", linestyle=":", label="target: 10% of a core at 1,000 shards")
    ax.set_xlabel("idle shards, each read once a second (Lambda's pace)")
    ax.set_ylabel("esm CPU, % of one core")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper left")
    ax.set_title("Idle shards at Lambda's pace (bench.fake_kinesis)")
    fig.tight_layout()
    path = out / f"idle-shards-cpu-{git_commit()[0]}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)
