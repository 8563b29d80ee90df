"""Network faults and throttling storms between esm and the endpoint, through a fault proxy.

esm must recover by itself and lose nothing; during a long outage /readyz says not ready,
and ready again after; under throttling it backs off (bounded request rate) and completes.
"""

from __future__ import annotations

import json
import time
from urllib.parse import urlparse

import boto3
import pytest
from conftest import HANDLERS, wait_until
from fault_proxy import FaultProxy

from esm.config import parse_config


@pytest.fixture
def proxy(endpoint: str):  # type: ignore[no-untyped-def]
    upstream = urlparse(endpoint)
    p = FaultProxy(upstream.hostname or "127.0.0.1", upstream.port or 80, seed=7).start()
    yield p
    p.stop()


def setup_sources(
    endpoint: str, unique: str, messages: int, records: int
) -> tuple[str, str, set[str]]:
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    kinesis = boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")
    url = sqs.create_queue(QueueName=f"net-{unique}", Attributes={"VisibilityTimeout": "3"})[
        "QueueUrl"
    ]
    queue_arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bodies = [f"s{i}" for i in range(messages)]
    for start in range(0, messages, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])
            ],
        )
    kinesis.create_stream(StreamName=f"net-{unique}", ShardCount=1)
    stream_arn = kinesis.describe_stream(StreamName=f"net-{unique}")["StreamDescription"][
        "StreamARN"
    ]
    datas = [f"k{i}" for i in range(records)]
    kinesis.put_records(
        StreamName=f"net-{unique}", Records=[{"PartitionKey": d, "Data": d.encode()} for d in datas]
    )
    return queue_arn, stream_arn, set(bodies) | set(datas)


def config_for(proxy_url: str, tmp_path, queue_arn: str, stream_arn: str):  # type: ignore[no-untyped-def]
    record_path = tmp_path / "handled.txt"
    return record_path, parse_config(
        {
            "daemon": {"endpoint_url": proxy_url, "http_address": "127.0.0.1:0"},
            "state": {"path": str(tmp_path / "state.sqlite3")},
            "functions": {
                "w": {
                    "handler": "fault_handlers.write_ids",
                    "code_path": str(HANDLERS),
                    "timeout": 2,
                    "environment": {"RECORD_PATH": str(record_path)},
                }
            },
            "mappings": [
                {"name": "q", "function": "w", "event_source_arn": queue_arn, "batch_size": 10},
                {
                    "name": "k",
                    "function": "w",
                    "event_source_arn": stream_arn,
                    "starting_position": "TRIM_HORIZON",
                    "batch_size": 20,
                },
            ],
        }
    )


def handled(path) -> set[str]:  # type: ignore[no-untyped-def]
    return set(path.read_text().split()) if path.exists() else set()


def test_resets_stalls_latency_and_half_open_connections_lose_nothing(
    endpoint, proxy, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    queue_arn, stream_arn, everything = setup_sources(endpoint, unique, messages=60, records=200)
    record_path, config = config_for(proxy.url, tmp_path, queue_arn, stream_arn)
    daemon = run_daemon(config)
    for mode, seconds in [
        ("reset", 2),
        ("pass", 1),
        ("latency", 3),
        ("stall", 2),
        ("pass", 1),
        ("half_open", 2),
        ("reset", 1),
    ]:
        proxy.mode = mode
        time.sleep(seconds)
    proxy.mode = "pass"
    wait_until(lambda: everything <= handled(record_path), timeout=90)
    assert daemon.get("/healthz")[0] == 200


def test_long_outage_turns_not_ready_then_ready_again(
    endpoint, proxy, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    queue_arn, stream_arn, everything = setup_sources(endpoint, unique, messages=10, records=10)
    record_path, config = config_for(proxy.url, tmp_path, queue_arn, stream_arn)
    daemon = run_daemon(config)
    wait_until(lambda: everything <= handled(record_path), timeout=30)
    proxy.mode = "reset"
    status, body = wait_until(lambda: (r := daemon.get("/readyz"))[0] == 503 and r, timeout=90)
    assert '"ready":false' in body
    proxy.mode = "pass"
    wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=60)


def test_throttling_storm_backs_off_and_completes(endpoint, proxy, unique, tmp_path, run_daemon):  # type: ignore[no-untyped-def]
    queue_arn, stream_arn, everything = setup_sources(endpoint, unique, messages=50, records=300)
    record_path, config = config_for(proxy.url, tmp_path, queue_arn, stream_arn)
    proxy.mode = "throttle"
    proxy.throttle_share = 0.6
    daemon = run_daemon(config)
    wait_until(lambda: everything <= handled(record_path), timeout=120)
    busiest = max(proxy.requests.values())
    print("throttle storm:", {"requests": proxy.total_requests(), "busiest_second": busiest})
    # Backoff, not a tight loop: two mappings never approach hundreds of calls a second.
    assert busiest < 100, proxy.requests
    _, metrics = daemon.get("/metrics")
    assert "esm_aws_call_retries_total" in metrics


def test_credentials_that_stop_working_turn_mappings_not_ready_until_they_work_again(
    endpoint, proxy, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    queue_arn, stream_arn, everything = setup_sources(endpoint, unique, messages=5, records=5)
    record_path, config = config_for(proxy.url, tmp_path, queue_arn, stream_arn)
    daemon = run_daemon(config)
    wait_until(lambda: everything <= handled(record_path), timeout=30)
    proxy.mode = "deny"

    def both_not_ready() -> bool:
        """/readyz and the gauge, read in one go: a receive that began before the denial
        may still end well and mark the queue ready for a moment between two reads."""
        status, body = daemon.get("/readyz")
        _, metrics = daemon.get("/metrics")
        return (
            status == 503
            and set(json.loads(body)["not_ready"]) == {"q", "k"}
            and 'esm_mapping_ready{mapping="q"} 0.0' in metrics
            and 'esm_mapping_ready{mapping="k"} 0.0' in metrics
        )

    wait_until(both_not_ready, timeout=90)
    assert daemon.get("/healthz")[0] == 200  # the daemon itself lives on
    proxy.mode = "pass"
    wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=60)
