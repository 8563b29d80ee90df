"""Run one broker-queue mapping in this process until SIGTERM (or SIGKILL): the SIGKILL
test's worker. Usage: python run_mapping.py '<mapping table as JSON>'"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import anyio

from esm.config import FunctionConfig
from esm.invokers import Function, create_invoker
from esm.observability import MappingMetrics, Metrics, configure_logging
from esm.sources.mq import MqMapping
from esm.sources.mq.config import parse_mq_table

HERE = Path(__file__).parent


async def main(table: dict[str, object]) -> None:
    config = parse_mq_table(table, "mappings[0]", {"fn"})
    metrics = Metrics()
    function_config = FunctionConfig(
        name="fn", kind="python", handler="mq_handlers.record", code_path=HERE, timeout=10
    )
    function = Function(create_invoker(function_config), metrics)
    mapping = MqMapping(config, function, None, MappingMetrics(metrics, config.name), None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(mapping.run)
        with anyio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                mapping.stop()
                break


if __name__ == "__main__":
    configure_logging("json", "info")
    anyio.run(main, json.loads(sys.argv[1]))
