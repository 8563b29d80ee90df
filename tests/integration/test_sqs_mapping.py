"""SQS mappings against a real moto server: Lambda's behaviour, message by message.

Tests that run several receivers wait for every message *seen* (a set), not for an exact
number of deliveries: a standard queue may hand a message out twice (SQS is at-least-once),
and moto does it when two receives interleave (its ReceiveMessage checks a message visible
and marks it received without a lock: seen under load, two copies with different receipt
handles and ApproximateReceiveCount 1 and 2)."""

from __future__ import annotations

import hashlib
import json

import recorder
from conftest import build_config, queue_counts, wait_until

ACCOUNT = "123456789012"


def make_queue(sqs, name: str, **attributes: str) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    attrs = {"VisibilityTimeout": "30", **attributes}
    url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def mapping(arn: str, function: str = "f", **extra):  # type: ignore[no-untyped-def]
    return {
        "name": f"m-{arn.rsplit(':', 1)[1]}",
        "function": function,
        "event_source_arn": arn,
        **extra,
    }


def queue_depth(sqs, url: str) -> int:  # type: ignore[no-untyped-def]
    return sum(queue_counts(sqs, url))


def test_event_has_every_key_of_a_lambda_sqs_record(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"shape-{unique}")
    sqs.send_message(
        QueueUrl=url,
        MessageBody='{"foo": "bar"}',
        MessageAttributes={
            "Author": {"DataType": "String", "StringValue": "John Grisham"},
            "Blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    sqs.send_message(QueueUrl=url, MessageBody="plain text")
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.record", "environment": {"ESM_TEST_ENV": "visible"}}},
        [mapping(arn)],
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(recorder.bodies_for(arn)) == 2)
    records = {r["body"]: r for e in recorder.events_for(arn) for r in e["Records"]}
    with_attrs = records['{"foo": "bar"}']
    assert list(with_attrs) == [
        "messageId",
        "receiptHandle",
        "body",
        "attributes",
        "messageAttributes",
        "md5OfMessageAttributes",
        "md5OfBody",
        "eventSource",
        "eventSourceARN",
        "awsRegion",
    ]
    assert list(with_attrs["attributes"])[:4] == [
        "ApproximateReceiveCount",
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ]
    assert with_attrs["attributes"]["ApproximateReceiveCount"] == "1"
    assert with_attrs["messageAttributes"] == {
        "Author": {
            "stringValue": "John Grisham",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "String",
        },
        "Blob": {
            "binaryValue": "AAE=",
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": "Binary",
        },
    }
    assert isinstance(with_attrs["md5OfMessageAttributes"], str)
    assert with_attrs["md5OfBody"] == hashlib.md5(b'{"foo": "bar"}').hexdigest()
    assert with_attrs["eventSource"] == "aws:sqs"
    assert with_attrs["eventSourceARN"] == arn
    assert with_attrs["awsRegion"] == "us-east-1"
    plain = records["plain text"]
    assert plain["md5OfMessageAttributes"] is None
    assert plain["messageAttributes"] == {}
    context = recorder.CONTEXTS[-1]
    assert context["function_name"] == "f"
    assert context["env"] == "visible"
    assert 0 < context["remaining"] <= 3000
    wait_until(lambda: queue_depth(sqs, url) == 0)
    status, metrics = daemon.get("/metrics")
    name = f"m-shape-{unique}"
    assert f'esm_deleted_events_total{{mapping="{name}"}} 2.0' in metrics
    assert f'esm_polled_events_total{{mapping="{name}"}} 2.0' in metrics
    assert daemon.get("/readyz")[0] == 200
    assert daemon.get("/healthz") == (200, "ok\n")


def receive_all(sqs, url: str) -> list[dict]:  # type: ignore[no-untyped-def]
    """Drain a queue (used for DLQs and leftovers); returns the messages."""
    out: list[dict] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
            "Messages", []
        )
        if not got:
            return out
        out.extend(got)


def test_fifo_messages_arrive_in_order_per_group(fifo_endpoint, fifo_sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    """Per-group order with several receivers, on the FIFO endpoint (see fifo_moto_server)."""
    endpoint, sqs = fifo_endpoint, fifo_sqs
    url, arn = make_queue(
        sqs, f"order-{unique}.fifo", FifoQueue="true", ContentBasedDeduplication="true"
    )
    for i in range(20):
        for group in ("a", "b", "c"):
            sqs.send_message(QueueUrl=url, MessageBody=f"{group}-{i}", MessageGroupId=group)
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.record"}},
        [mapping(arn, scaling_config={"maximum_concurrency": 3})],
    )
    run_daemon(config)
    # Every message once at least: a duplicate must not end the wait early.
    wait_until(lambda: len(set(recorder.bodies_for(arn))) >= 60)
    bodies = recorder.bodies_for(arn)
    for group in ("a", "b", "c"):
        # First deliveries are in order. A message may come twice (SQS is at-least-once).
        first_deliveries = list(dict.fromkeys(b for b in bodies if b.startswith(group)))
        assert first_deliveries == [f"{group}-{i}" for i in range(20)]
    record = recorder.events_for(arn)[0]["Records"][0]
    assert record["attributes"]["MessageGroupId"] in ("a", "b", "c")
    assert "MessageDeduplicationId" in record["attributes"]


def test_fifo_failure_returns_rest_of_group(fifo_endpoint, fifo_sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    endpoint, sqs = fifo_endpoint, fifo_sqs
    url, arn = make_queue(
        sqs,
        f"fifofail-{unique}.fifo",
        FifoQueue="true",
        ContentBasedDeduplication="true",
        VisibilityTimeout="2",
    )
    for body in ("a-1", "a-2-fail-once", "a-3"):
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId="a")
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.report_failures", "timeout": 1}},
        [mapping(arn, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    wait_until(lambda: recorder.events_for(arn))
    first = recorder.events_for(arn)[0]
    assert [r["body"] for r in first["Records"]] == ["a-1", "a-2-fail-once", "a-3"]
    # a-3 was not reported, yet it stays with a-2 and comes back after it, in group order;
    # a-1 is gone.
    wait_until(lambda: {"a-2-fail-once", "a-3"} <= set(recorder.bodies_for(arn)[3:]), timeout=20)
    redelivered = list(dict.fromkeys(recorder.bodies_for(arn)[3:]))
    assert redelivered == ["a-2-fail-once", "a-3"]
    assert recorder.bodies_for(arn).count("a-1") == 1


def test_handler_exception_redelivers_then_dead_letters(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    dlq_url, dlq_arn = make_queue(sqs, f"dlq-{unique}")
    url, arn = make_queue(
        sqs,
        f"poison-{unique}",
        VisibilityTimeout="1",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    config = build_config(
        endpoint, {"f": {"handler": "recorder.fail_on_poison", "timeout": 1}}, [mapping(arn)]
    )
    daemon = run_daemon(config)
    dead = wait_until(lambda: receive_all(sqs, dlq_url), timeout=30)
    assert [m["Body"] for m in dead] == ["poison"]
    counts = [
        r["attributes"]["ApproximateReceiveCount"]
        for e in recorder.events_for(arn)
        for r in e["Records"]
    ]
    assert counts == ["1", "2"]
    _, metrics = daemon.get("/metrics")
    assert 'esm_function_errors_total{function="f"} 2.0' in metrics
    assert (
        f'esm_deleted_events_total{{mapping="m-poison-{unique}"}}' not in metrics
        or f'esm_deleted_events_total{{mapping="m-poison-{unique}"}} 0.0' in metrics
    )


def test_partial_batch_failure_deletes_only_successes(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    dlq_url, dlq_arn = make_queue(sqs, f"pdlq-{unique}")
    url, arn = make_queue(
        sqs,
        f"partial-{unique}",
        VisibilityTimeout="1",
        RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}),
    )
    bodies = ["ok-1", "fail-2", "ok-3", "fail-4", "ok-5"]
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies)]
    )
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.report_failures", "timeout": 1}},
        [mapping(arn, batch_size=10, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    dead: list[dict] = []
    wait_until(lambda: dead.extend(receive_all(sqs, dlq_url)) or len(dead) >= 2, timeout=30)
    assert sorted(m["Body"] for m in dead) == ["fail-2", "fail-4"]
    delivered = recorder.bodies_for(arn)
    assert sorted(b for b in delivered if b.startswith("ok")) == ["ok-1", "ok-3", "ok-5"]
    assert sorted(b for b in delivered if b.startswith("fail")) == [
        "fail-2",
        "fail-2",
        "fail-4",
        "fail-4",
    ]


def test_malformed_partial_response_fails_the_whole_batch(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"malformed-{unique}", VisibilityTimeout="1")
    hostile = {
        "response": {"batchItemFailures": [{"itemIdentifier": "not-a-message-of-this-batch"}]}
    }
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(hostile))
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.malformed_response", "timeout": 1}},
        [mapping(arn, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    wait_until(lambda: len(recorder.events_for(arn)) >= 2, timeout=20)
    counts = [
        e["Records"][0]["attributes"]["ApproximateReceiveCount"] for e in recorder.events_for(arn)
    ]
    assert counts[:2] == ["1", "2"]


def test_empty_partial_response_is_full_success(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"emptyresp-{unique}", VisibilityTimeout="1")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"response": {"batchItemFailures": []}}))
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.malformed_response", "timeout": 1}},
        [mapping(arn, function_response_types=["ReportBatchItemFailures"])],
    )
    run_daemon(config)
    wait_until(lambda: queue_depth(sqs, url) == 0 and recorder.events_for(arn))
    assert len(recorder.events_for(arn)) == 1


def test_batch_size_above_ten_gathers_receives_within_the_window(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    """Two receivers (Lambda polls with several at once) share 40 messages: a batch of
    batch_size 20 gathers receives of at most 10 within its window until it is full.

    Load-proof: full batches are invoked at once, so the generous window (10 s) costs no
    time and only a receiver stalled for 10 s could miss it; and the test waits for every
    message *seen*, not for exactly 40 deliveries: a standard queue may hand a message out
    twice (SQS's at-least-once; moto's ReceiveMessage, unlocked, does it when two receives
    interleave on a loaded machine: 26 deliveries of 25 broke the old `== 25` wait)."""
    url, arn = make_queue(sqs, f"window-{unique}")
    sent = {f"m{i}" for i in range(40)}
    for start in range(0, 40, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, start + 10)],
        )
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.record"}},
        [
            mapping(
                arn,
                batch_size=20,
                maximum_batching_window_in_seconds=10,
                scaling_config={"maximum_concurrency": 2},
            )
        ],
    )
    run_daemon(config)
    wait_until(lambda: set(recorder.bodies_for(arn)) == sent, timeout=60)
    sizes = [len(e["Records"]) for e in recorder.events_for(arn)]
    # A receive returns at most 10: a batch above 10 gathered several within its window.
    assert max(sizes) > 10 and max(sizes) <= 20, sizes


def test_window_zero_invokes_with_what_one_receive_returned(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"nowindow-{unique}")
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(7)]
    )
    config = build_config(
        endpoint, {"f": {"handler": "recorder.record"}}, [mapping(arn, batch_size=3)]
    )
    run_daemon(config)
    wait_until(lambda: set(recorder.bodies_for(arn)) == {f"m{i}" for i in range(7)})
    assert all(len(e["Records"]) <= 3 for e in recorder.events_for(arn))


def test_async_handler_timeout_is_a_function_error(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"hang-{unique}", VisibilityTimeout="1")
    sqs.send_message(QueueUrl=url, MessageBody="hang")
    config = build_config(
        endpoint, {"f": {"handler": "recorder.hang_async", "timeout": 1}}, [mapping(arn)]
    )
    daemon = run_daemon(config)
    wait_until(lambda: len(recorder.events_for(arn)) >= 2, timeout=20)
    _, metrics = daemon.get("/metrics")
    assert 'esm_function_errors_total{function="f"}' in metrics
    assert queue_depth(sqs, url) == 1


def test_maximum_concurrency_caps_batches_in_flight(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"conc-{unique}")
    for start in range(0, 60, 10):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, start + 10)],
        )
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.slow_counted"}},
        [mapping(arn, batch_size=1, scaling_config={"maximum_concurrency": 3})],
    )
    run_daemon(config)
    wait_until(lambda: set(recorder.bodies_for(arn)) == {f"m{i}" for i in range(60)}, timeout=60)
    assert recorder.CONCURRENCY.high_water == 3


def test_missing_queue_does_not_stop_other_mappings(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    url, arn = make_queue(sqs, f"present-{unique}")
    missing_arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:missing-{unique}"
    sqs.send_message(QueueUrl=url, MessageBody="hello")
    config = build_config(
        endpoint,
        {"f": {"handler": "recorder.record"}},
        [mapping(arn), mapping(missing_arn)],
    )
    daemon = run_daemon(config)
    wait_until(lambda: set(recorder.bodies_for(arn)) == {"hello"})
    status, body = daemon.get("/readyz")
    assert status == 503
    assert json.loads(body)["not_ready"] == [f"m-missing-{unique}"]
    _, metrics = daemon.get("/metrics")
    assert f'esm_mapping_ready{{mapping="m-missing-{unique}"}} 0.0' in metrics
    assert f'esm_mapping_ready{{mapping="m-present-{unique}"}} 1.0' in metrics


def test_a_mapping_polls_with_five_receivers_as_lambda_starts(endpoint, sqs, unique, run_daemon):  # type: ignore[no-untyped-def]
    # AWS: "Lambda starts processing five batches at a time" and scales back to five.
    url, arn = make_queue(sqs, f"five-{unique}")
    config = build_config(endpoint, {"f": {"handler": "recorder.record"}}, [mapping(arn)])
    daemon = run_daemon(config)
    series = f'esm_pollers{{mapping="m-five-{unique}"}} 5.0'
    wait_until(lambda: series in daemon.get("/metrics")[1])
    sqs.send_message(QueueUrl=url, MessageBody="one")
    wait_until(lambda: set(recorder.bodies_for(arn)) == {"one"})
    assert series in daemon.get("/metrics")[1]  # an empty receive never retires below five


def test_provisioned_pollers_stay_at_their_minimum_and_deliver(endpoint, sqs, unique):  # type: ignore[no-untyped-def]
    import time

    import anyio

    from esm.aws import AwsClients
    from esm.invokers import create_functions
    from esm.observability import MappingMetrics, Metrics
    from esm.sources.sqs import SqsMapping
    from esm.sources.sqs.scaling import ProvisionedPollers

    url, arn = make_queue(sqs, f"prov-{unique}")
    config = build_config(endpoint, {"f": {"handler": "recorder.record"}}, [mapping(arn)])

    async def until(predicate) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + 30
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await anyio.sleep(0.05)

    async def scenario() -> int:
        metrics = Metrics()
        function = create_functions(config.functions, metrics)["f"]
        async with AwsClients(config.daemon, metrics) as aws:
            sqs_mapping = SqsMapping(
                config.mappings[0],
                function,
                aws,
                MappingMetrics(metrics, config.mappings[0].name),
                None,
                provisioned=ProvisionedPollers(minimum_pollers=7, maximum_pollers=20),
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(sqs_mapping.run)
                await until(lambda: sqs_mapping._receivers == 7)
                await anyio.to_thread.run_sync(
                    lambda: sqs.send_message_batch(
                        QueueUrl=url,
                        Entries=[{"Id": str(i), "MessageBody": f"p{i}"} for i in range(3)],
                    )
                )
                await until(lambda: set(recorder.bodies_for(arn)) == {"p0", "p1", "p2"})
                receivers = sqs_mapping._receivers
                sqs_mapping.stop()
        return receivers

    assert anyio.run(scenario) == 7
    assert set(recorder.bodies_for(arn)) == {"p0", "p1", "p2"}
    wait_until(lambda: queue_depth(sqs, url) == 0)
