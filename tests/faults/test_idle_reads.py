"""Caught-up shards are read about once a second each, as Lambda reads them, unless they
are told to share one read budget (`[daemon] idle_shard_reads_per_second`, opt-in).

The fault proxy runs in pass mode here: it only counts the requests esm sends.
"""

from __future__ import annotations

import time
from urllib.parse import urlparse

import boto3
from conftest import HANDLERS, wait_until
from fault_proxy import FaultProxy
from test_network import handled

from esm.config import parse_config
from esm.idle_pacing import JITTER, TICK

SHARDS = 12
BUDGET = 2
WINDOW_S = 8.0
MANY_SHARDS = 40
"""More caught-up shards than the old default budget of 30 reads a second."""


def _idle_config(proxy: FaultProxy, tmp_path, arn: str, budget: float | None):  # type: ignore[no-untyped-def]
    daemon: dict[str, object] = {"endpoint_url": proxy.url, "http_address": "127.0.0.1:0"}
    if budget is not None:
        daemon["idle_shard_reads_per_second"] = budget
    return parse_config(
        {
            "daemon": daemon,
            "state": {"path": str(tmp_path / "state.sqlite3")},
            "functions": {
                "w": {
                    "handler": "fault_handlers.write_ids",
                    "code_path": str(HANDLERS),
                    "environment": {"RECORD_PATH": str(tmp_path / "handled.txt")},
                }
            },
            "mappings": [
                {
                    "name": "idle",
                    "function": "w",
                    "event_source_arn": arn,
                    "starting_position": "TRIM_HORIZON",
                }
            ],
        }
    )


def test_by_default_every_idle_shard_is_read_about_once_a_second(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """Lambda's pace with no budget configured: 40 caught-up shards are read ~40 times a
    second (the old default shared 30), and the gauge says no shard waits over 1 s (with
    the old default it said 40/30 s, +10% and a tick: 2.47 s)."""
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"idle-lambda-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=MANY_SHARDS)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    upstream = urlparse(endpoint)
    proxy = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80).start()
    try:
        daemon = run_daemon(_idle_config(proxy, tmp_path, arn, None))
        wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
        wait_until(
            lambda: f"esm_caught_up_shards {float(MANY_SHARDS)}" in daemon.get("/metrics")[1],
            timeout=30,
        )
        time.sleep(2)  # every shard's first backoff (0.25 s .. 1 s) is over
        before = proxy.total_requests()
        time.sleep(WINDOW_S)
        reads = proxy.total_requests() - before
        print("idle reads:", {"requests": reads, "window_s": WINDOW_S, "shards": MANY_SHARDS})
        # About once a second each: at most every 0.9 s (plus one read straddling the
        # window's edge), never the 5 a second a busy shard may take; the lower bound is
        # loose (a loaded machine slows moto's answers, not esm's pacing).
        assert MANY_SHARDS * WINDOW_S / 2 <= reads <= MANY_SHARDS * (WINDOW_S / 0.9 + 1)
        _, metrics = daemon.get("/metrics")
        assert "esm_idle_shard_read_interval_seconds 1.0" in metrics
        kinesis.put_record(StreamName=name, PartitionKey="late", Data=b"late-record")
        wait_until(lambda: "late-record" in handled(tmp_path / "handled.txt"), timeout=30)
    finally:
        proxy.stop()


def test_idle_shards_share_the_opt_in_read_budget_and_still_deliver(
    endpoint, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    name = f"idle-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=SHARDS)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    upstream = urlparse(endpoint)
    proxy = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80).start()
    try:
        record_path = tmp_path / "handled.txt"
        daemon = run_daemon(_idle_config(proxy, tmp_path, arn, BUDGET))
        wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
        time.sleep(4)  # every shard's first backoff (0.25 s .. 1 s) is over
        before = proxy.total_requests()
        time.sleep(WINDOW_S)
        reads = proxy.total_requests() - before
        print("idle reads:", {"requests": reads, "window_s": WINDOW_S, "shards": SHARDS})
        # Lambda's pace would be SHARDS reads a second (~96 here). The budget allows
        # BUDGET a second; each shard may also straddle the window's edges once.
        assert reads <= BUDGET * WINDOW_S + 2 * SHARDS, proxy.requests
        _, metrics = daemon.get("/metrics")
        assert f"esm_caught_up_shards {float(SHARDS)}" in metrics
        # The longest pause between two reads of a shard: the shared interval (SHARDS /
        # BUDGET), its jitter, and up to one tick to end on a whole second.
        longest = SHARDS / BUDGET * (1 + JITTER) + TICK
        assert f"esm_idle_shard_read_interval_seconds {longest}" in metrics
        # A quiet shard is still read: a record written now is delivered.
        kinesis.put_record(StreamName=name, PartitionKey="late", Data=b"late-record")
        wait_until(lambda: "late-record" in handled(record_path), timeout=60)
    finally:
        proxy.stop()
