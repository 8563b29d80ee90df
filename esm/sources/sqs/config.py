"""An SQS mapping's config: the common keys plus `batch_size`, the batching window and
`scaling_config.maximum_concurrency` or `provisioned_poller_config`, with AWS's ranges
(CreateEventSourceMapping: BatchSize 1-10,000, FIFO 1-10; a window of at least 1 s above 10;
MaximumConcurrency 2-1,000; ProvisionedPollers in esm.sources.sqs.scaling).

esm-only: `stop_receive_wait_seconds` (0-25, default 0), how long a stop lets a ReceiveMessage
in flight finish so the messages it brings are made visible again (esm.sources.sqs.runtime).
"""

from __future__ import annotations

from dataclasses import dataclass

from esm.config_table import Table
from esm.sources.base import ArnMappingConfig, MappingContext, read_common
from esm.sources.sqs.scaling import ProvisionedPollers, parse_provisioned_poller_config
from esm.sources.streams.config import STREAM_ONLY_KEYS


@dataclass(frozen=True, kw_only=True)
class SqsMappingConfig(ArnMappingConfig):
    maximum_concurrency: int | None = None
    """`scaling_config.maximum_concurrency`; None: the function's reserved concurrency."""
    provisioned_poller_config: ProvisionedPollers | None = None
    """Provisioned mode (minimum / maximum pollers); None: Lambda's standard scaling."""
    stop_receive_wait_seconds: float = 0.0
    """esm-only: how long a stop waits for a ReceiveMessage in flight (0: abandoned at once)."""


STOP_RECEIVE_WAIT_MAX_SECONDS = 25.0
"""The 20 s long poll and a margin: past it a receive has nothing more to bring."""


def parse_sqs_mapping(t: Table, ctx: MappingContext) -> SqsMappingConfig:
    common = read_common(t, ctx)
    for key in STREAM_ONLY_KEYS:
        if key in t.raw:
            t.consume(key)
            hint = " (use the queue's redrive policy)" if key == "destination_config" else ""
            t.problem(key, f"applies to Kinesis and DynamoDB streams only, not SQS{hint}")
    fifo = common["source"].name.endswith(".fifo")
    limit = 10 if fifo else 10_000
    batch_size = t.integer("batch_size", 10, 1, limit, what="FIFO SQS" if fifo else "SQS")
    window = t.number("maximum_batching_window_in_seconds", 0.0, 0, 300)
    window_key = "maximum_batching_window_in_seconds"
    if batch_size > 10 and window < 1 and window_key not in t.problems_for:
        t.problem(
            window_key,
            f"must be at least 1 when batch_size is above 10 (batch_size is {batch_size}),"
            " as AWS requires",
        )
    scaling = t.table("scaling_config")
    concurrency = scaling.optional_integer("maximum_concurrency", 2, 1000)
    scaling.finish()
    key = "provisioned_poller_config"
    provisioned, problems = parse_provisioned_poller_config(
        t.consume(key), t.key_path(key), maximum_concurrency=concurrency
    )
    t.problems.extend(problems)
    stop_wait = t.number("stop_receive_wait_seconds", 0.0, 0, STOP_RECEIVE_WAIT_MAX_SECONDS)
    return SqsMappingConfig(
        batch_size=batch_size,
        maximum_batching_window_in_seconds=window,
        maximum_concurrency=concurrency,
        provisioned_poller_config=provisioned,
        stop_receive_wait_seconds=stop_wait,
        **common,
    )
