"""FilterCriteria and tumbling windows through real mappings on a moto server."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import recorder
from conftest import build_config, queue_counts, stored_checkpoint, wait_until
from test_kinesis_mapping import config_with_state, make_stream, put, stream_mapping
from test_sqs_mapping import make_queue, mapping


@pytest.fixture
def kinesis(endpoint: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


COUNTED = ("polled", "filtered_out", "invoked", "deleted")


def sample(metrics: str, counter: str, mapping: str) -> float:
    """One mapping's `esm_<counter>_events_total` in a /metrics text (0 while absent)."""
    found = re.search(
        rf'^esm_{counter}_events_total{{mapping="{re.escape(mapping)}"}} (\S+)$', metrics, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_sqs_filtered_out_messages_are_deleted_and_counted(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"filter-{unique}")
    bodies = [json.dumps({"kind": "order", "n": i}) for i in range(5)]
    bodies += [json.dumps({"kind": "refund", "n": i}) for i in range(3)] + ["not json"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    pattern = json.dumps({"body": {"kind": ["order"], "n": [{"numeric": [">=", 1]}]}})
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.record"}},
        [mapping(arn, filter_criteria={"filters": [{"pattern": pattern}]})],
    )
    daemon = run_daemon(config)
    name = f"m-filter-{unique}"
    matching = set(bodies[1:5])  # the orders with n >= 1

    def settled() -> dict[str, float] | None:
        """The counters once every message is gone and every copy received was accounted
        for: five receivers start on this full queue, and a standard queue may hand a message
        to two of them (SQS is at-least-once; moto does it when receives interleave), so the
        counts are per copy received, 9 only when no copy came twice."""
        metrics = daemon.get("/metrics")[1]
        counts = {k: sample(metrics, k, name) for k in COUNTED}
        handled = recorder.bodies_for(arn)
        done = (
            counts["deleted"] == counts["polled"] == counts["filtered_out"] + counts["invoked"]
            and counts["invoked"] == len(handled)
            and set(handled) == matching
            and queue_counts(sqs, url) == (0, 0)
        )
        return counts if done else None

    counts = wait_until(settled)
    # Only the four matching orders reached the function; the other five (and any copy of
    # them) were deleted as filtered out, never invoked.
    assert counts["polled"] >= 9 and counts["filtered_out"] >= 5


def test_kinesis_filter_matches_decoded_data_and_checkpoints_skipped_records(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"kfilter-{unique}"
    arn = make_stream(kinesis, name)
    items = [
        ("k", json.dumps({"city": "Seattle" if i % 3 == 0 else "Oslo", "i": i})) for i in range(30)
    ]
    seqs = put(kinesis, name, items)
    pattern = json.dumps({"data": {"city": ["Seattle"]}})
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.record"}},
        [stream_mapping(arn, filter_criteria={"filters": [{"pattern": pattern}]})],
    )
    run_daemon(config)

    def checkpoint() -> str | None:
        return stored_checkpoint(tmp_path / "state.sqlite3")

    # The last record is filtered out, yet the checkpoint passes it: skipped counts as done.
    wait_until(lambda: checkpoint() == seqs[-1])
    handled = [
        json.loads(base64.b64decode(r["kinesis"]["data"]))["i"]
        for e in recorder.events_for(arn)
        for r in e["Records"]
    ]
    assert handled == list(range(0, 30, 3))


def test_invalid_filter_pattern_is_a_config_error_naming_the_filter() -> None:
    from esm.config import parse_config
    from esm.errors import ConfigError

    raw = {
        "functions": {"f": {"handler": "recorder.record"}},
        "mappings": [
            {
                "function": "f",
                "event_source_arn": "arn:aws:sqs:us-east-1:123456789012:q",
                "filter_criteria": {
                    "filters": [
                        {"pattern": '{"body": {"a": ["x"]}}'},
                        {"pattern": '{"body": {"n": [{"numeric": [">"]}]}}'},
                    ]
                },
            }
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(raw)
    assert caught.value.problems == [
        'mappings[0].filter_criteria.filters[1].pattern: body.n: "numeric"'
        ' needs a list of operator/number pairs, like [">", 0, "<=", 5]'
    ]


def test_tumbling_window_carries_state_and_ends_with_a_final_invoke(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"window-{unique}"
    arn = make_stream(kinesis, name, shards=2)
    put(kinesis, name, [(f"key-{i % 4}", f"a{i}") for i in range(40)])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.count_per_key_in_window"}},
        [stream_mapping(arn, batch_size=5, tumbling_window_in_seconds=2)],
    )
    run_daemon(config)
    # Each shard's window ends (wall clock past its end, shard caught up) with a final invoke.
    finals = lambda: [e for e in recorder.window_events_for(arn) if e["isFinalInvokeForWindow"]]  # noqa: E731
    wait_until(lambda: sum(sum(f["state"].values()) for f in finals()) >= 40, timeout=30)
    events = recorder.window_events_for(arn)
    for final in finals():
        assert final["Records"] == []
        assert final["isWindowTerminatedEarly"] is False
        start = final["window"]["start"]
        same_window = [
            e for e in events if e["shardId"] == final["shardId"] and e["window"]["start"] == start
        ]
        aggregates = [e for e in same_window if not e["isFinalInvokeForWindow"]]
        # State is carried from one invocation to the next, starting empty.
        assert aggregates[0]["state"] == {}
        expected: dict[str, int] = {}
        for event in aggregates:
            assert event["state"] == expected
            for r in event["Records"]:
                expected[r["kinesis"]["partitionKey"]] = (
                    expected.get(r["kinesis"]["partitionKey"], 0) + 1
                )
        assert final["state"] == expected
    first = events[0]
    assert set(first) == {
        "Records",
        "window",
        "state",
        "shardId",
        "eventSourceARN",
        "isFinalInvokeForWindow",
        "isWindowTerminatedEarly",
    }
    assert first["eventSourceARN"] == arn
    start = time.mktime(time.strptime(first["window"]["start"], "%Y-%m-%dT%H:%M:%SZ"))
    end = time.mktime(time.strptime(first["window"]["end"], "%Y-%m-%dT%H:%M:%SZ"))
    assert end - start == 2 and start % 2 == 0


def test_a_record_written_just_before_a_quiet_shards_window_ends_joins_that_window(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    """With an idle read budget of 1 read/s shared by 8 caught-up shards, each is read about
    every 8 s. A window must not close until a read sent after its end came back empty, or a
    record that arrived between the last read and the end would open the window again."""
    from conftest import HANDLERS

    from esm.config import parse_config

    name = f"quiet-window-{unique}"
    arn = make_stream(kinesis, name, shards=8)
    window = 12
    config = parse_config(
        {
            "daemon": {
                "endpoint_url": endpoint,
                "http_address": "127.0.0.1:0",
                "idle_shard_reads_per_second": 1,
            },
            "state": {"path": str(tmp_path / "state.sqlite3")},
            "functions": {
                "f": {"handler": "recorder.count_per_key_in_window", "code_path": str(HANDLERS)}
            },
            "mappings": [stream_mapping(arn, tumbling_window_in_seconds=window)],
        }
    )
    daemon = run_daemon(config)
    wait_until(lambda: daemon.get("/readyz")[0] == 200, timeout=30)
    # One record early in a window, the shard goes quiet (its reads ~8 s apart once the
    # record was read, at most ~10.5 s into the window), then one more 1 s before the end.
    time.sleep(window - time.time() % window + 0.5)
    put(kinesis, name, [("k", "early")])
    time.sleep(window - time.time() % window - 1.0)
    put(kinesis, name, [("k", "late")])
    finals = lambda: [e for e in recorder.window_events_for(arn) if e["isFinalInvokeForWindow"]]  # noqa: E731
    wait_until(lambda: sum(sum(f["state"].values()) for f in finals()) >= 2, timeout=30)
    time.sleep(2)  # a wrongly reopened window would end with a second final invoke by now
    assert [(f["window"]["start"], f["state"]) for f in finals()] == [
        (finals()[0]["window"]["start"], {"k": 2})
    ]


def test_tumbling_window_response_without_state_is_a_failure(
    endpoint, kinesis, unique, tmp_path, run_daemon
):  # type: ignore[no-untyped-def]
    name = f"nostate-{unique}"
    arn = make_stream(kinesis, name)
    put(kinesis, name, [("k", "x")])
    config = config_with_state(
        endpoint,
        tmp_path,
        {"f": {"handler": "recorder.window_without_state"}},
        [stream_mapping(arn, tumbling_window_in_seconds=60, maximum_retry_attempts=1)],
    )
    daemon = run_daemon(config)
    wait_until(
        lambda: f'esm_dropped_events_total{{mapping="k-{name}"}} 1.0' in daemon.get("/metrics")[1]
    )
    assert len(recorder.window_events_for(arn)) == 2  # the first try and one retry
