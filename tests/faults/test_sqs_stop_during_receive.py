"""A stop that lands while ReceiveMessage long polls are in flight.

A long poll the client abandons goes on at SQS (and at moto): a message that arrives before
its wait ends is handed to the abandoned request and stays invisible for the queue's
visibility timeout (aws-sdk-java-v2#1395, aws-sdk-go-v2#2068 report it of SQS). A user
restarting esm expects such messages back at once: with `stop_receive_wait_seconds` the stop
lets each receive in flight finish and makes what it brought visible again
(ChangeMessageVisibility 0), invoking none.
A proxy in front of moto counts the receives in flight and the messages given back.
"""

from __future__ import annotations

import asyncio
import json

import recorder
from conftest import build_config, queue_counts, wait_until
from fault_proxy import FaultProxy
from test_sqs_mapping import make_queue, mapping

RECEIVE = b"AmazonSQS.ReceiveMessage"
RELEASE = b"AmazonSQS.ChangeMessageVisibilityBatch"


class CountReceives(FaultProxy):
    """Forwards everything; counts the receives sent and answered, and the messages
    released by ChangeMessageVisibilityBatch."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.receives_sent = 0
        self.receives_answered = 0
        self.released_entries = 0

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        head, _, body = request.partition(b"\r\n\r\n")
        if RECEIVE in head:
            self.receives_sent += 1
            try:
                return await super()._answer(request, writer)
            finally:
                self.receives_answered += 1
        if RELEASE in head:
            self.released_entries += len(json.loads(body)["Entries"])
        return await super()._answer(request, writer)

    def in_flight(self) -> int:
        return self.receives_sent - self.receives_answered


def test_messages_a_receive_in_flight_brings_after_the_stop_are_made_visible_at_once(
    endpoint,
    sqs,
    unique,
    run_daemon,  # type: ignore[no-untyped-def]
) -> None:
    """Before the fix (and with the default, 0) the stop cancelled the receives: moto's
    long polls went on and took the two messages sent after the stop, invisible for 300 s
    (counts (0, 2))."""
    url, arn = make_queue(sqs, f"stop-in-receive-{unique}", VisibilityTimeout="300")
    host, port = endpoint.rsplit("/", 1)[1].split(":")
    proxy = CountReceives(host, int(port)).start()
    try:
        config = build_config(
            proxy.url,
            {"f": {"handler": "recorder.record"}},
            [
                mapping(
                    arn,
                    batch_size=1,
                    scaling_config={"maximum_concurrency": 2},
                    stop_receive_wait_seconds=25,
                )
            ],
        )
        daemon = run_daemon(config)
        # Both receivers are waiting in their long poll on the empty queue.
        wait_until(lambda: proxy.in_flight() == 2)
        daemon.portal.call(daemon.daemon.request_stop)
        for i in range(2):  # each receive asks for one message (batch_size 1)
            sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
        daemon.future.result(timeout=60)
    finally:
        proxy.stop()
    assert recorder.bodies_for(arn) == []  # nothing invoked after the stop
    assert queue_counts(sqs, url) == (2, 0)  # visible now, not after the 300 s visibility timeout
    assert proxy.released_entries == 2


def test_stop_receive_wait_seconds_outside_its_range_names_the_key_and_the_range(
    endpoint,  # type: ignore[no-untyped-def]
) -> None:
    from esm.errors import ConfigError

    arn = "arn:aws:sqs:us-east-1:123456789012:q"
    try:
        build_config(
            endpoint,
            {"f": {"handler": "recorder.record"}},
            [mapping(arn, stop_receive_wait_seconds=30)],
        )
    except ConfigError as exc:
        text = str(exc)
    else:
        raise AssertionError("accepted")
    assert "stop_receive_wait_seconds" in text and "25" in text and "Traceback" not in text
