"""A stop that lands while a receiver waits for its previous batch's delete (commit 5fd8e34).

Each SQS receiver receives its next batch while the last one's DeleteMessageBatch is still
out, and invokes it only once that delete is done. When the mapping stops right there, the
batch was received but never invoked: like every such message it must be made visible again
at once (ChangeMessageVisibility 0), not left invisible for the queue's visibility timeout.
moto answers deletes at once, so a proxy in front of it holds them until the test lets go.

The queue's counts are checked against the distinct messages handed out, which the proxy
reads from the receives' answers: moto may hand one message to both receivers when their
receives interleave (SQS is at-least-once too), so "two in flight per receiver" is four
messages only when no copy came twice.
"""

from __future__ import annotations

import asyncio
import json
import threading

import recorder
from conftest import build_config, queue_counts, wait_until
from fault_proxy import FaultProxy
from test_sqs_mapping import make_queue, mapping

HELD = b"AmazonSQS.DeleteMessageBatch"
RECEIVE = b"AmazonSQS.ReceiveMessage"
RELEASE = b"AmazonSQS.ChangeMessageVisibilityBatch"


class HoldDeletes(FaultProxy):
    """Forwards everything, except that deletes wait until `let_go` is set; counts the
    deletes held and the messages released by ChangeMessageVisibilityBatch, notes the
    MessageId of every message a receive handed out (a copy twice), and keeps the open
    connections that carried a receive or a delete: those of esm.http1's pool (the daemon's
    other calls, GetQueueUrl and GetQueueAttributes, go through aiobotocore's)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.let_go = threading.Event()
        self.held = 0
        self.released_entries = 0
        self.handed_out: list[str] = []
        self.pooled: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await super()._serve(reader, writer)
        finally:
            self.pooled.discard(writer)

    async def _answer(self, request: bytes, writer: asyncio.StreamWriter) -> bool:
        head, _, body = request.partition(b"\r\n\r\n")
        if RECEIVE in head or HELD in head:
            self.pooled.add(writer)
        if HELD in head:
            self.held += 1
            while not self.let_go.is_set():
                await asyncio.sleep(0.02)
        elif RELEASE in head:
            self.released_entries += len(json.loads(body)["Entries"])
        return await super()._answer(request, writer)

    async def _forward(self, request: bytes) -> bytes:
        response = await super()._forward(request)
        if RECEIVE in request.partition(b"\r\n\r\n")[0]:
            answer = json.loads(response.partition(b"\r\n\r\n")[2])
            self.handed_out += [m["MessageId"] for m in answer.get("Messages", [])]
        return response


def test_a_batch_waiting_for_the_previous_delete_is_released_at_stop(
    endpoint,
    sqs,
    unique,
    run_daemon,  # type: ignore[no-untyped-def]
) -> None:
    url, arn = make_queue(sqs, f"stop-in-delete-{unique}", VisibilityTimeout="300")
    for i in range(6):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    host, port = endpoint.rsplit("/", 1)[1].split(":")
    proxy = HoldDeletes(host, int(port)).start()
    try:
        config = build_config(
            proxy.url,
            {"f": {"handler": "recorder.record"}},
            [mapping(arn, batch_size=1, scaling_config={"maximum_concurrency": 2})],
        )
        daemon = run_daemon(config)
        # Two receivers: each invoked one message (its delete held) and holds the next:
        # four handed out, all in flight ((2, 4) unless moto handed one out twice).
        wait_until(
            lambda: (
                proxy.held == 2
                and len(recorder.bodies_for(arn)) == 2
                and len(proxy.handed_out) == 4
            )
        )
        out = len(set(proxy.handed_out))
        assert queue_counts(sqs, url) == (6 - out, out)
        # moto has handed the next two out, but their responses may still be on their way:
        # a stop then lands in the receive, not in the wait this test is about. A receiver
        # goes from its receive's connection returning to the pool to waiting for the delete
        # without yielding, so once both did, every pooled connection is idle but the two the
        # held deletes use: 2 of 4, or 1 of 3 when a receiver's first receive answered late
        # enough for its delete to reuse the other's connection (which a fixed 2 never matches).
        http = daemon.daemon.runtimes[0]._api._http
        wait_until(lambda: daemon.portal.call(lambda: len(http._idle)) == len(proxy.pooled) - 2)

        daemon.portal.call(daemon.daemon.request_stop)
        # The two received-but-not-invoked messages are given back before the deletes end.
        wait_until(lambda: proxy.released_entries == 2, timeout=15)
        proxy.let_go.set()
        daemon.future.result(timeout=60)
    finally:
        proxy.let_go.set()
        proxy.stop()
    assert len(recorder.bodies_for(arn)) == 2  # nothing invoked after the stop
    # The invoked ones deleted (2, or 1 invoked twice), every other one visible now, not
    # after the 300 s visibility timeout: (4, 0) when no copy came twice.
    assert queue_counts(sqs, url) == (6 - len(set(recorder.bodies_for(arn))), 0)
