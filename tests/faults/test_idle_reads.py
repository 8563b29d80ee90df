"""Caught-up shards share one read budget (`[daemon] idle_shard_reads_per_second`).

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


def test_idle_shards_share_the_read_budget_and_still_deliver(
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
        daemon = run_daemon(
            parse_config(
                {
                    "daemon": {
                        "endpoint_url": proxy.url,
                        "http_address": "127.0.0.1:0",
                        "idle_shard_reads_per_second": BUDGET,
                    },
                    "state": {"path": str(tmp_path / "state.sqlite3")},
                    "functions": {
                        "w": {
                            "handler": "fault_handlers.write_ids",
                            "code_path": str(HANDLERS),
                            "environment": {"RECORD_PATH": str(record_path)},
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
        )
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
