"""esm's Kafka runtime in a process of its own, for the SIGKILL restart test.

    python kafka_child.py BOOTSTRAP TOPIC GROUP    (KAFKA_RECORD_FILE names the record file)

Runs one KafkaRuntime (batch 10, in-process handler `kafka_handlers.append_to_file`) until
killed; prints "started" once the consumer joined the cluster. KAFKA_BATCH_SIZE and
KAFKA_BATCHING_WINDOW override the batch size and the batching window (0.05 s).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from esm.config import FunctionConfig, _Table
from esm.invokers import Function
from esm.invokers.python import PythonInvoker
from esm.observability import Metrics
from esm.sources.kafka.config import parse_kafka_mapping
from esm.sources.kafka.runtime import KafkaRuntime

FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 300}


async def main(bootstrap: str, topic: str, group: str) -> None:
    problems: list[str] = []
    table = {
        "name": "killed",
        "function": "f",
        "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": [bootstrap]}},
        "topics": [topic],
        "starting_position": "TRIM_HORIZON",
        "self_managed_kafka_event_source_config": {"consumer_group_id": group},
        "batch_size": int(os.environ.get("KAFKA_BATCH_SIZE", "10")),
        "maximum_batching_window_in_seconds": float(
            os.environ.get("KAFKA_BATCHING_WINDOW", "0.05")
        ),
    }
    config = parse_kafka_mapping(0, _Table(table, "mappings[0]", problems), ["f"])
    assert config is not None, problems
    metrics = Metrics()
    handler = FunctionConfig(
        name="f",
        kind="python",
        handler="kafka_handlers.append_to_file",
        code_path=Path(__file__).parent,
        timeout=5,
    )
    runtime = KafkaRuntime(
        config, Function(PythonInvoker(handler), metrics), metrics, client_options=FAST_GROUP
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(runtime.run)
        await runtime.started.wait()
        print("started", flush=True)


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:4])
