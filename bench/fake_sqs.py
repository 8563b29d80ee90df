"""A purpose-built in-memory SQS endpoint (AWS JSON protocol) for draining benchmarks.

moto's SQS scans the whole queue on every call, so a deep queue is unusable for throughput
(see shared/design/local-endpoints.md). This server keeps each queue as a deque of visible
messages plus a heap of in-flight ones, so every call costs the same at any depth. It
implements only what the benchmarks and esm's SQS mapping call: CreateQueue, GetQueueUrl,
GetQueueAttributes, SendMessage(Batch), ReceiveMessage (long polling, visibility timeout,
system attributes), DeleteMessage(Batch), ChangeMessageVisibility(Batch), PurgeQueue.
It is not a conformance target: no FIFO, no redrive, no message attributes.

Run: `python -m bench.fake_sqs --host 127.0.0.1 --port PORT` (loopback only).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import itertools
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

ACCOUNT = "000000000000"
REGION = "us-east-1"


class SqsError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(slots=True)
class Message:
    message_id: str
    body: str
    md5: str
    sent_ms: int
    receive_count: int = 0
    first_receive_ms: int = 0
    receipt: str = ""


@dataclass
class Queue:
    name: str
    url: str
    visibility_timeout: int = 30
    wait_time: int = 0
    visible: deque[Message] = field(default_factory=deque)
    in_flight: dict[str, Message] = field(default_factory=dict)
    deadlines: list[tuple[float, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def requeue_expired(self, now: float) -> None:
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= now:
            _, receipt = heapq.heappop(deadlines)
            message = self.in_flight.pop(receipt, None)
            if message is not None:
                self.visible.appendleft(message)


class FakeSqs:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.queues: dict[str, Queue] = {}
        self._receipts = itertools.count()

    def queue(self, payload: dict[str, Any]) -> Queue:
        url = payload.get("QueueUrl", "")
        name = url.rsplit("/", 1)[-1]
        queue = self.queues.get(name)
        if queue is None:
            raise SqsError("AWS.SimpleQueueService.NonExistentQueue", f"no queue {url}")
        return queue

    # -- operations -------------------------------------------------------------------------

    def CreateQueue(self, p: dict[str, Any]) -> dict[str, Any]:
        name = p["QueueName"]
        if name not in self.queues:
            attributes = p.get("Attributes") or {}
            self.queues[name] = Queue(
                name,
                f"{self.base_url}/{ACCOUNT}/{name}",
                visibility_timeout=int(attributes.get("VisibilityTimeout", 30)),
                wait_time=int(attributes.get("ReceiveMessageWaitTimeSeconds", 0)),
            )
        return {"QueueUrl": self.queues[name].url}

    def GetQueueUrl(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.queues.get(p["QueueName"])
        if queue is None:
            raise SqsError(
                "AWS.SimpleQueueService.NonExistentQueue", "The specified queue does not exist."
            )
        return {"QueueUrl": queue.url}

    def GetQueueAttributes(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        q.requeue_expired(time.monotonic())
        return {
            "Attributes": {
                "VisibilityTimeout": str(q.visibility_timeout),
                "ReceiveMessageWaitTimeSeconds": str(q.wait_time),
                "ApproximateNumberOfMessages": str(len(q.visible)),
                "ApproximateNumberOfMessagesNotVisible": str(len(q.in_flight)),
                "QueueArn": f"arn:aws:sqs:{REGION}:{ACCOUNT}:{q.name}",
            }
        }

    def PurgeQueue(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        q.visible.clear()
        q.in_flight.clear()
        q.deadlines.clear()
        return {}

    def _new_message(self, body: str) -> Message:
        return Message(
            str(uuid.uuid4()), body, hashlib.md5(body.encode()).hexdigest(), int(time.time() * 1000)
        )

    def SendMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        message = self._new_message(p["MessageBody"])
        q.visible.append(message)
        q.arrived.set()
        return {"MessageId": message.message_id, "MD5OfMessageBody": message.md5}

    def BenchFill(self, p: dict[str, Any]) -> dict[str, Any]:
        """Bench only: `Count` copies of `MessageBody` at once (a deep queue in a blink)."""
        q = self.queue(p)
        for _ in range(int(p["Count"])):
            q.visible.append(self._new_message(p["MessageBody"]))
        q.arrived.set()
        return {}

    def SendMessageBatch(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        successful = []
        for entry in p.get("Entries") or []:
            message = self._new_message(entry["MessageBody"])
            q.visible.append(message)
            successful.append(
                {
                    "Id": entry["Id"],
                    "MessageId": message.message_id,
                    "MD5OfMessageBody": message.md5,
                }
            )
        q.arrived.set()
        return {"Successful": successful, "Failed": []}

    async def ReceiveMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        want = max(1, min(10, int(p.get("MaxNumberOfMessages", 1))))
        wait = int(p.get("WaitTimeSeconds", q.wait_time))
        visibility = int(p.get("VisibilityTimeout", q.visibility_timeout))
        deadline = time.monotonic() + wait
        while True:
            now = time.monotonic()
            q.requeue_expired(now)
            if q.visible or now >= deadline:
                break
            q.arrived.clear()
            try:
                wake_by = min(deadline, q.deadlines[0][0]) if q.deadlines else deadline
                await asyncio.wait_for(q.arrived.wait(), timeout=max(0.0, wake_by - now))
            except TimeoutError:
                pass
        messages = []
        now_ms = int(time.time() * 1000)
        hidden_until = time.monotonic() + visibility
        while q.visible and len(messages) < want:
            m = q.visible.popleft()
            m.receive_count += 1
            if not m.first_receive_ms:
                m.first_receive_ms = now_ms
            m.receipt = f"{m.message_id}#{next(self._receipts)}"
            q.in_flight[m.receipt] = m
            heapq.heappush(q.deadlines, (hidden_until, m.receipt))
            messages.append(
                {
                    "MessageId": m.message_id,
                    "ReceiptHandle": m.receipt,
                    "MD5OfBody": m.md5,
                    "Body": m.body,
                    "Attributes": {
                        "SenderId": ACCOUNT,
                        "SentTimestamp": str(m.sent_ms),
                        "ApproximateReceiveCount": str(m.receive_count),
                        "ApproximateFirstReceiveTimestamp": str(m.first_receive_ms),
                    },
                }
            )
        return {"Messages": messages} if messages else {}

    def DeleteMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        self.queue(p).in_flight.pop(p["ReceiptHandle"], None)
        return {}

    def DeleteMessageBatch(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        for entry in p.get("Entries") or []:
            q.in_flight.pop(entry["ReceiptHandle"], None)
        return {"Successful": [{"Id": e["Id"]} for e in p.get("Entries") or []], "Failed": []}

    def _change_visibility(self, q: Queue, receipt: str, seconds: int) -> None:
        message = q.in_flight.get(receipt)
        if message is None:
            return
        if seconds <= 0:
            del q.in_flight[receipt]
            q.visible.appendleft(message)
            q.arrived.set()
        else:
            heapq.heappush(q.deadlines, (time.monotonic() + seconds, receipt))

    def ChangeMessageVisibility(self, p: dict[str, Any]) -> dict[str, Any]:
        self._change_visibility(self.queue(p), p["ReceiptHandle"], int(p["VisibilityTimeout"]))
        return {}

    def ChangeMessageVisibilityBatch(self, p: dict[str, Any]) -> dict[str, Any]:
        q = self.queue(p)
        for entry in p.get("Entries") or []:
            self._change_visibility(q, entry["ReceiptHandle"], int(entry["VisibilityTimeout"]))
        return {"Successful": [{"Id": e["Id"]} for e in p.get("Entries") or []], "Failed": []}

    # -- HTTP -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        operation = target.rpartition(".")[2]
        handler = getattr(self, operation, None) if operation[:1].isupper() else None
        try:
            if handler is None:
                raise SqsError("InvalidAction", f"unsupported operation {target!r}")
            payload = orjson.loads(await request.read() or b"{}")
            result = handler(payload)
            if asyncio.iscoroutine(result):
                result = await result
            return web.Response(
                body=orjson.dumps(result), content_type="application/x-amz-json-1.0"
            )
        except SqsError as exc:
            body = orjson.dumps({"__type": f"com.amazonaws.sqs#{exc.code}", "message": str(exc)})
            return web.Response(
                status=exc.status,
                body=body,
                content_type="application/x-amz-json-1.0",
                headers={"x-amzn-query-error": f"{exc.code};Sender"},
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        raise SystemExit("bench.fake_sqs listens on loopback only")
    sqs = FakeSqs(f"http://{args.host}:{args.port}")
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_post("/", sqs.handle)
    app.router.add_post("/{tail:.*}", sqs.handle)
    web.run_app(
        app, host=args.host, port=args.port, print=None, access_log=None, handle_signals=True
    )


if __name__ == "__main__":
    main()
