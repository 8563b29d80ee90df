"""RabbitMQ drain: esm's broker-queue mapping vs a bare aio-pika consumer loop, same node,
same 50,000 messages, batch 100 (issue 17's target: esm at >= 80 % of the bare loop).

A throw-away RabbitMQ node (tests/mq/brokers.py) holds one durable queue. Each side has
the queue filled with the same bodies, then drains it, timed from its start until every
message is acknowledged:

- bare: aio-pika, prefetch 200, collect 100 messages, call the no-op handler on their
  bodies, acknowledge the last with multiple=true; nothing else (no event JSON, no
  metrics, no thread hop).
- esm: `MqMapping` with the in-process Python no-op handler (run in a worker thread, as
  esm runs sync handlers), batch_size 100, the default 0.5 s window.

Run: `.venv/bin/python -m bench.mq [--messages N]`. Prints both rates and the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import aio_pika
import anyio
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "mq"))

from brokers import start_rabbitmq  # noqa: E402

BATCH = 100
QUEUE = "bench"


def body(i: int) -> bytes:
    return orjson.dumps({"type": "order", "id": i, "amount": 12.5})


async def fill(url: str, count: int) -> None:
    connection = await aio_pika.connect(url.replace("amqp://", "amqp://guest:guest@"))
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        await channel.declare_queue(QUEUE, durable=True)
        for start in range(0, count, 1000):
            for i in range(start, min(count, start + 1000)):
                await channel.default_exchange.publish(aio_pika.Message(body(i)), QUEUE)
        # Publishes are not confirmed: wait until the queue reports them all.
        while True:
            declared = await channel.declare_queue(QUEUE, passive=True)
            if (declared.declaration_result.message_count or 0) >= count:
                return
            await anyio.sleep(0.05)


def noop(bodies: list[Any]) -> None:
    return None


async def bare(url: str, count: int) -> float:
    connection = await aio_pika.connect(url.replace("amqp://", "amqp://guest:guest@"))
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=2 * BATCH)
        queue = await channel.declare_queue(QUEUE, durable=True)
        started = time.perf_counter()
        done = 0
        batch: list[aio_pika.abc.AbstractIncomingMessage] = []
        async with queue.iterator() as messages:
            async for message in messages:
                batch.append(message)
                if len(batch) == BATCH or done + len(batch) == count:
                    noop([m.body for m in batch])
                    await batch[-1].ack(multiple=True)
                    done += len(batch)
                    batch = []
                    if done == count:
                        break
        return time.perf_counter() - started


async def esm_side(url: str, count: int) -> float:
    from esm.config import FunctionConfig
    from esm.invokers import Function, create_invoker
    from esm.observability import Metrics
    from esm.sources.mq import MqMapping, parse_mq_mapping

    table = {
        "name": "bench",
        "function": "fn",
        "self_managed_event_source": {"endpoints": {"RABBITMQ_BROKER_URLS": [url]}},
        "queues": [QUEUE],
        "batch_size": BATCH,
    }
    metrics = Metrics()
    function = Function(
        create_invoker(
            FunctionConfig(
                name="fn",
                kind="python",
                handler="esm_bench_handlers.noop",
                code_path=ROOT / "bench" / "handlers",
            )
        ),
        metrics,
    )
    mapping = MqMapping(parse_mq_mapping(table, "bench", {"fn"}), function, None, metrics)

    def acked() -> float:
        value = metrics.registry.get_sample_value(
            "esm_acknowledged_events_total", {"mapping": "bench"}
        )
        return value or 0.0

    async with anyio.create_task_group() as tg:
        started = time.perf_counter()
        tg.start_soon(mapping.run)
        while acked() < count:
            await anyio.sleep(0.002)
        elapsed = time.perf_counter() - started
        mapping.stop()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    from esm.observability import configure_logging

    configure_logging("json", "warning")
    broker = start_rabbitmq()
    try:
        rates = {}
        for side, drain in (("bare aio-pika loop", bare), ("esm MqMapping", esm_side)):
            anyio.run(fill, broker.url, args.messages)
            elapsed = anyio.run(drain, broker.url, args.messages)
            rates[side] = args.messages / elapsed
            print(
                f"{side:>20}: {args.messages} messages in {elapsed:.2f} s = "
                f"{rates[side]:,.0f} msg/s",
                flush=True,
            )
        ratio = rates["esm MqMapping"] / rates["bare aio-pika loop"]
        print(f"{'esm / bare':>20}: {ratio:.0%} (target >= 80%)")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
