"""A stream mapping's config (Kinesis, DynamoDB Streams): the common keys plus the stream
settings, with AWS's ranges (CreateEventSourceMapping: BatchSize 1-10,000, default 100;
StartingPosition TRIM_HORIZON | LATEST, and AT_TIMESTAMP for Kinesis only;
ParallelizationFactor 1-10; MaximumRetryAttempts -1..10,000; MaximumRecordAgeInSeconds -1 or
60..604,800; TumblingWindowInSeconds 0-900; an SQS, SNS or S3 on-failure destination)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from esm.config_table import Table, is_destination_arn
from esm.sources.base import ArnMappingConfig, MappingContext, read_common

STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST", "AT_TIMESTAMP")
KINESIS_STARTING_POSITIONS = STARTING_POSITIONS
DYNAMODB_STARTING_POSITIONS = STARTING_POSITIONS[:2]

STREAM_ONLY_KEYS = (
    "starting_position",
    "starting_position_timestamp",
    "parallelization_factor",
    "bisect_batch_on_function_error",
    "maximum_retry_attempts",
    "maximum_record_age_in_seconds",
    "destination_config",
    "tumbling_window_in_seconds",
)
"""Keys that make a table with an unusable ARN read as a stream mapping, and that an SQS
mapping refuses by name."""


@dataclass(frozen=True, kw_only=True)
class StreamMappingConfig(ArnMappingConfig):
    batch_size: int = 100
    starting_position: str | None = None
    starting_position_timestamp: datetime | None = None
    parallelization_factor: int = 1
    bisect_batch_on_function_error: bool = False
    maximum_retry_attempts: int = -1
    maximum_record_age_in_seconds: int = -1
    on_failure_destination: str | None = None
    tumbling_window_in_seconds: int = 0


def parse_kinesis_mapping(t: Table, ctx: MappingContext) -> StreamMappingConfig:
    return _parse_stream_mapping(t, ctx, KINESIS_STARTING_POSITIONS)


def parse_dynamodb_mapping(t: Table, ctx: MappingContext) -> StreamMappingConfig:
    return _parse_stream_mapping(t, ctx, DYNAMODB_STARTING_POSITIONS)


def _parse_stream_mapping(
    t: Table, ctx: MappingContext, positions: tuple[str, ...]
) -> StreamMappingConfig:
    common = read_common(t, ctx)
    if "scaling_config" in t.raw:
        t.consume("scaling_config")
        t.problem(
            "scaling_config", "applies to SQS only; streams scale with parallelization_factor"
        )
    position = t.choice("starting_position", positions, "", required=True)
    timestamp = t.optional_timestamp("starting_position_timestamp")
    if position == "AT_TIMESTAMP" and timestamp is None:
        t.problem(
            "starting_position_timestamp", "is required when starting_position is AT_TIMESTAMP"
        )
    if timestamp is not None and position != "AT_TIMESTAMP":
        t.problem(
            "starting_position_timestamp", "is only allowed with starting_position AT_TIMESTAMP"
        )
    retries = t.integer("maximum_retry_attempts", -1, -1, 10_000)
    record_age = t.integer("maximum_record_age_in_seconds", -1, -1, 604_800)
    if 0 <= record_age < 60:
        t.problem(
            "maximum_record_age_in_seconds",
            f"{record_age} is not allowed: use -1 (infinite) or 60..604800",
        )
    destination_arn = _on_failure_destination(t)
    return StreamMappingConfig(
        batch_size=t.integer("batch_size", 100, 1, 10_000),
        maximum_batching_window_in_seconds=t.number(
            "maximum_batching_window_in_seconds", 0.0, 0, 300
        ),
        starting_position=position or None,
        starting_position_timestamp=timestamp,
        parallelization_factor=t.integer("parallelization_factor", 1, 1, 10),
        bisect_batch_on_function_error=t.boolean("bisect_batch_on_function_error", False),
        maximum_retry_attempts=retries,
        maximum_record_age_in_seconds=record_age,
        on_failure_destination=destination_arn,
        tumbling_window_in_seconds=t.integer("tumbling_window_in_seconds", 0, 0, 900),
        **common,
    )


def _on_failure_destination(t: Table) -> str | None:
    destination = t.table("destination_config")
    on_failure = destination.table("on_failure")
    arn = on_failure.optional_string("destination")
    if arn is not None and not is_destination_arn(arn):
        on_failure.problem(
            "destination", f"{arn!r} is not an SQS queue, SNS topic or S3 bucket ARN"
        )
    on_failure.finish()
    destination.finish()
    return arn
