"""The source-family registry: the one place that knows, per family, how its source is
recognised, how its `[[mappings]]` keys are parsed into its own typed config, which runtime
runs it, its event envelope, its filter view, its on-failure record and what `esm status`
shows. Nothing else in esm switches on a family's name.

Adding a family is one package under esm/sources/ plus one `SourceFamily` in `FAMILIES`
(README, "Adding a source"). Only each family's *config* module is imported here; its
runtime, adapter and status collector are named as "module:attribute" and imported when a
mapping of the family first runs (`load`), so reading a config never imports a poller.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from esm.arns import ArnError, SourceArn, split_arn
from esm.config_table import UNRESOLVED_PREFIX, Table
from esm.events.envelope import records_envelope
from esm.filtering import dynamodb_filter_view, kinesis_filter_view, sqs_filter_view
from esm.sources.base import MappingConfig, MappingContext
from esm.sources.kafka.config import is_kafka_mapping, parse_kafka
from esm.sources.kafka.event import build_event, kafka_filter_view
from esm.sources.mq.config import is_mq_mapping, mq_filter_view, parse_mq_mapping
from esm.sources.mq.events import broker_event
from esm.sources.sqs.config import parse_sqs_mapping
from esm.sources.streams.config import (
    STREAM_ONLY_KEYS,
    parse_dynamodb_mapping,
    parse_kinesis_mapping,
)


@dataclass(frozen=True)
class ArnForm:
    """How a family's ARN reads (AWS's form), for recognition and for problem lines."""

    service: str
    title: str
    """What the ARN names, as a problem line says it: "SQS queue"."""
    form: str
    """`arn:aws:sqs:REGION:ACCOUNT:QUEUE`."""
    name_of: Callable[[str], str | None]
    """The resource part -> the source's name, or None when it is not this family's."""
    guess_name: bool = False
    """For an unusable ARN of this service, take its last part as the name anyway (an SQS
    queue's `.fifo` suffix decides the batch_size range)."""


@dataclass(frozen=True)
class SourceFamily:
    name: str
    """Registry name: `SourceArn.kind`, `MappingConfig.family`, the on-failure shape's key."""
    parse: Callable[[Table, MappingContext], MappingConfig | None]
    """The `[[mappings]]` table -> the family's frozen config; problems go to the table's
    list (None: too broken to run; an ARN family always returns one)."""
    runtime: str
    """`module:attribute` of its `RuntimeBuilder` (esm/sources/base.py)."""
    envelope: Callable[..., dict[str, Any]]
    """A batch's invocation event from its records (`{"Records": [...]}` for SQS and
    streams; a family whose event carries more, as Kafka's `eventSource` and
    `bootstrapServers`, names its own event builder)."""
    filter_view: Callable[[dict[str, Any]], Any]
    """What FilterCriteria patterns see of one record (esm/filtering.py)."""
    arn: ArnForm | None = None
    """How its event_source_arn reads; None for families recognised by `recognises`."""
    recognises: Callable[[Mapping[str, Any]], bool] | None = None
    """For families not named by an AWS ARN form here (self-managed endpoints): True when a
    raw `[[mappings]]` table is this family's; asked before any ARN is parsed."""
    claims_keys: tuple[str, ...] = ()
    """Keys that make a table with an unusable ARN read as this family, so its other keys
    are still checked against the right rules."""
    adapter: str | None = None
    """`module:attribute` of the service adapter the runtime and `esm status` open."""
    on_failure: str | None = None
    """`module:attribute` of the function building its on-failure record; None: nothing is
    given up to a destination (the source redelivers, then its own dead-letter queue)."""
    status: str | None = None
    """`module:attribute` of its `StatusCollector`; None: `esm status` lists nothing."""
    ordered: bool = False
    """Read in order per shard or partition: iterator age applies."""
    given_up_to: Literal["dlq", "on_failure"] = "on_failure"
    """Where a record given up goes: the source's own dead-letter queue, or the mapping's
    on-failure destination."""


def _queue_name(resource: str) -> str | None:
    return resource if "/" not in resource else None


def _stream_name(resource: str) -> str | None:
    if resource.startswith("stream/") and len(resource) > 7:
        return resource.split("/", 1)[1]
    return None


def _table_of_stream(resource: str) -> str | None:
    pieces = resource.split("/")
    if len(pieces) == 4 and pieces[0] == "table" and pieces[2] == "stream":
        return pieces[1]
    return None


SQS = SourceFamily(
    name="sqs",
    arn=ArnForm("sqs", "SQS queue", "arn:aws:sqs:REGION:ACCOUNT:QUEUE", _queue_name, True),
    parse=parse_sqs_mapping,
    runtime="esm.sources.sqs.runtime:build_runtime",
    envelope=records_envelope,
    filter_view=sqs_filter_view,
    given_up_to="dlq",
)
KINESIS = SourceFamily(
    name="kinesis",
    arn=ArnForm(
        "kinesis", "Kinesis stream", "arn:aws:kinesis:REGION:ACCOUNT:stream/NAME", _stream_name
    ),
    parse=parse_kinesis_mapping,
    claims_keys=STREAM_ONLY_KEYS,
    runtime="esm.sources.streams.mapping:build_runtime",
    adapter="esm.sources.streams.kinesis:KinesisSource",
    envelope=records_envelope,
    filter_view=kinesis_filter_view,
    on_failure="esm.events.on_failure:failure_record",  # KinesisBatchInfo
    status="esm.sources.streams.status:shard_rows",
    ordered=True,
)
DYNAMODB = SourceFamily(
    name="dynamodb",
    arn=ArnForm(
        "dynamodb",
        "DynamoDB stream",
        "arn:aws:dynamodb:REGION:ACCOUNT:table/TABLE/stream/LABEL",
        _table_of_stream,
    ),
    parse=parse_dynamodb_mapping,
    claims_keys=STREAM_ONLY_KEYS,
    runtime="esm.sources.streams.mapping:build_runtime",
    adapter="esm.sources.streams.dynamodb:DynamoDBStreamSource",
    envelope=records_envelope,
    filter_view=dynamodb_filter_view,
    on_failure="esm.events.on_failure:failure_record",  # DDBStreamBatchInfo
    status="esm.sources.streams.status:shard_rows",
    ordered=True,
)
MQ = SourceFamily(
    name="mq",
    recognises=is_mq_mapping,
    parse=parse_mq_mapping,
    runtime="esm.sources.mq.runtime:build_runtime",
    envelope=broker_event,
    filter_view=mq_filter_view,
    status="esm.sources.mq.status:queue_rows",
    ordered=False,
    given_up_to="dlq",
)

KAFKA = SourceFamily(
    name="kafka",  # self-managed Apache Kafka and Amazon MSK
    recognises=is_kafka_mapping,
    parse=parse_kafka,
    runtime="esm.sources.kafka.runtime:build_runtime",
    envelope=build_event,
    filter_view=kafka_filter_view,
    on_failure="esm.sources.kafka.onfailure:failure_record",
    status="esm.sources.kafka.status:partition_rows",
    ordered=True,
)

FAMILIES: tuple[SourceFamily, ...] = (SQS, KINESIS, DYNAMODB, KAFKA, MQ)
"""In recognition order; the first ARN family is the default guess for an unusable ARN."""
BY_NAME: Mapping[str, SourceFamily] = {family.name: family for family in FAMILIES}


def family_of(mapping: MappingConfig) -> SourceFamily:
    return BY_NAME[mapping.family]


def load(target: str) -> Any:
    """`module:attribute`, imported now (runtimes, adapters and status collectors)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def parse_source_arn(arn: str, families: Sequence[SourceFamily] = FAMILIES) -> SourceArn:
    """Split an event source ARN into the family that reads it; the forms are AWS's (see
    each family's `ArnForm`)."""
    parts = split_arn(arn)
    for family in families:
        form = family.arn
        if form is not None and parts.service == form.service:
            name = form.name_of(parts.resource)
            if name is not None:
                return SourceArn(arn, family.name, parts.region, parts.account, name)
    forms = [family.arn for family in families if family.arn is not None]
    titles = [form.title for form in forms]
    named = ", ".join(titles[:-1]) + " or " + titles[-1] if len(titles) > 1 else titles[0]
    raise ArnError(f"{arn!r} is not an {named} ARN ({', '.join(form.form for form in forms)})")


@dataclass(frozen=True)
class Recognised:
    """Which family a `[[mappings]]` table belongs to, and its source when ARN-named."""

    family: SourceFamily
    source: SourceArn | None
    arn_problem: str | None
    """Why event_source_arn is unusable (the family parses the table anyway)."""


def recognise(raw: Mapping[str, Any], families: Sequence[SourceFamily] = FAMILIES) -> Recognised:
    """Endpoint families first (their own keys), then the ARN's form; an unusable ARN is
    checked as the family its service names, else one whose keys are set, else the first
    ARN family (SQS)."""
    by_name = {family.name: family for family in families}
    for family in families:
        if family.recognises is not None and family.recognises(raw):
            return Recognised(family, None, None)
    text = raw.get("event_source_arn")
    if not isinstance(text, str) or text.startswith(UNRESOLVED_PREFIX):
        text = ""
    if text:
        try:
            source = parse_source_arn(text, families)
        except ArnError as exc:
            return Recognised(*_assumed(text, raw, families), str(exc))
        return Recognised(by_name[source.kind], source, None)
    return Recognised(*_assumed(text, raw, families), None)


def _assumed(
    text: str, raw: Mapping[str, Any], families: Sequence[SourceFamily]
) -> tuple[SourceFamily, SourceArn]:
    """What an unusable ARN most likely meant, only to check the mapping's other keys."""
    pieces = text.split(":")
    service = pieces[2] if len(pieces) > 2 and pieces[0] == "arn" else ""
    arn_families = [family for family in families if family.arn is not None]
    family = next((f for f in arn_families if f.arn and f.arn.service == service), None)
    if family is None:
        family = next(
            (f for f in arn_families if any(key in raw for key in f.claims_keys)),
            arn_families[0],
        )
    name = pieces[-1] if family.arn is not None and family.arn.guess_name else ""
    return family, SourceArn(text, family.name, "", "", name)


__all__ = [
    "FAMILIES",
    "ArnForm",
    "BY_NAME",
    "Recognised",
    "SourceFamily",
    "family_of",
    "load",
    "parse_source_arn",
    "recognise",
]
