"""The source-family registry: each family recognised in one place, each parsed into its own
typed config, a new family plugged in as one entry, and reading a config never imports a
runtime."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from esm.config import parse_config
from esm.config_table import Table
from esm.events.envelope import records_envelope
from esm.filtering import kinesis_filter_view
from esm.sources.base import MappingConfig, MappingContext
from esm.sources.registry import (
    BY_NAME,
    FAMILIES,
    SourceFamily,
    family_of,
    parse_source_arn,
    recognise,
)
from esm.sources.sqs.config import SqsMappingConfig
from esm.sources.streams.config import STREAM_ONLY_KEYS, StreamMappingConfig

QUEUE = "arn:aws:sqs:us-east-1:123456789012:orders"
STREAM = "arn:aws:kinesis:us-east-1:123456789012:stream/clicks"
DDB = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2024-01-01T00:00:00.000"


@pytest.mark.parametrize(
    ("arn", "family", "name"),
    [(QUEUE, "sqs", "orders"), (STREAM, "kinesis", "clicks"), (DDB, "dynamodb", "T")],
)
def test_each_aws_arn_form_names_its_family(arn: str, family: str, name: str) -> None:
    source = parse_source_arn(arn)
    assert (source.kind, source.name, source.region, source.account) == (
        family,
        name,
        "us-east-1",
        "123456789012",
    )


@pytest.mark.parametrize(
    ("raw", "family"),
    [
        ({"event_source_arn": "arn:aws:kinesis:us-east-1:1:nope"}, "kinesis"),
        ({"event_source_arn": "orders", "tumbling_window_in_seconds": 5}, "kinesis"),
        ({"event_source_arn": "orders"}, "sqs"),
        ({"event_source_arn": "<unresolved: Queue>"}, "sqs"),
    ],
)
def test_an_unusable_arn_is_checked_as_the_family_it_most_likely_meant(
    raw: dict[str, Any], family: str
) -> None:
    assert recognise(raw).family.name == family


def test_each_family_parses_into_its_own_config() -> None:
    raw = {
        "functions": {"f": {"handler": "app.handle"}},
        "mappings": [
            {"function": "f", "event_source_arn": QUEUE},
            {"function": "f", "event_source_arn": STREAM, "starting_position": "LATEST"},
            {"function": "f", "event_source_arn": DDB, "starting_position": "LATEST"},
        ],
    }
    sqs, kinesis, dynamodb = parse_config(raw).mappings
    assert isinstance(sqs, SqsMappingConfig)
    assert isinstance(kinesis, StreamMappingConfig) and isinstance(dynamodb, StreamMappingConfig)
    assert [family_of(m).name for m in (sqs, kinesis, dynamodb)] == ["sqs", "kinesis", "dynamodb"]
    sqs_fields = {field.name for field in dataclasses.fields(sqs)}
    assert not sqs_fields & set(STREAM_ONLY_KEYS) and "on_failure_destination" not in sqs_fields


def test_the_registry_knows_what_each_family_shows_and_gives_up_to() -> None:
    shown = {
        f.name: (f.status is not None, f.given_up_to, f.on_failure is not None) for f in FAMILIES
    }
    assert shown == {
        "sqs": (False, "dlq", False),
        "kinesis": (True, "on_failure", True),
        "dynamodb": (True, "on_failure", True),
        "kafka": (True, "on_failure", True),
        "mq": (True, "dlq", False),
    }
    own_event = ("kafka", "mq")
    assert all(f.envelope([1]) == {"Records": [1]} for f in FAMILIES if f.name not in own_event)
    mq = next(f for f in FAMILIES if f.name == "mq")
    assert mq.envelope("rabbitmq", "arn", "q", "/", [1])["rmqMessagesByQueue"] == {"q::/": [1]}
    assert mq.envelope("activemq", "arn", "q", "/", [1])["messages"] == [1]
    kafka = BY_NAME["kafka"].envelope("SelfManagedKafka", "b1:9092", None, {"t-0": [{}]})
    assert kafka == {
        "eventSource": "SelfManagedKafka",
        "bootstrapServers": "b1:9092",
        "records": {"t-0": [{}]},
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class QueueOfToysConfig(MappingConfig):
    endpoint: str

    @property
    def family(self) -> str:
        return "toys"


def _parse_toys(t: Table, ctx: MappingContext) -> QueueOfToysConfig:
    endpoint = t.string("toy_endpoint", "", required=True)
    config = QueueOfToysConfig(
        name=t.string("name", f"mapping-{ctx.index}"),
        function=t.string("function", "", required=True),
        endpoint=endpoint,
        batch_size=t.integer("batch_size", 10, 1, 100),
    )
    return config


def _is_toys(raw: Mapping[str, Any]) -> bool:
    return "toy_endpoint" in raw


TOYS = SourceFamily(
    name="toys",
    recognises=_is_toys,
    parse=_parse_toys,
    runtime="toys.runtime:build_runtime",
    envelope=records_envelope,
    filter_view=kinesis_filter_view,
)


def test_a_new_family_is_one_entry_recognised_before_any_arn() -> None:
    families = (*FAMILIES, TOYS)
    table = {"function": "f", "toy_endpoint": "toy://host:1", "batch_size": 500}
    recognised = recognise(table, families)
    assert recognised.family is TOYS and recognised.source is None
    problems: list[str] = []
    t = Table(table, "mappings[0]", problems)
    config = recognised.family.parse(t, MappingContext(0, ("f",), None))
    t.finish()
    assert isinstance(config, QueueOfToysConfig) and config.endpoint == "toy://host:1"
    assert problems == ["mappings[0].batch_size: 500 is above the maximum 100"]
    assert recognise({"event_source_arn": QUEUE}, families).family.name == "sqs"


def test_reading_a_config_imports_no_runtime() -> None:
    """config.py reaches the families through their config modules only; pollers, invokers
    and adapters are imported when a mapping first runs."""
    script = f"""
import sys
from esm.config import parse_config
parse_config({{"functions": {{"f": {{"handler": "app.handle"}}}}, "mappings": [
    {{"function": "f", "event_source_arn": "{QUEUE}"}},
    {{"function": "f", "event_source_arn": "{STREAM}", "starting_position": "LATEST"}},
    {{"function": "f", "event_source_arn": "{DDB}", "starting_position": "LATEST"}}]}})
loaded = [m for m in ("esm.sources.sqs.runtime", "esm.sources.streams.mapping",
    "esm.sources.streams.poller", "esm.sources.streams.kinesis", "esm.invokers.function",
    "esm.aws") if m in sys.modules]
print(loaded)
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_a_kafka_table_parses_into_the_kafka_config_without_importing_its_client() -> None:
    """Recognised by its own keys (asked before any ARN), parsed with Kafka's defaults; the
    consumer (aiokafka) is imported only when the mapping runs."""
    script = """
import sys
from esm.config import parse_config
from esm.sources.registry import family_of
config = parse_config({"functions": {"f": {"handler": "app.handle"}}, "mappings": [
    {"function": "f", "topics": ["orders"], "starting_position": "LATEST",
     "self_managed_event_source": {"endpoints": {"KAFKA_BOOTSTRAP_SERVERS": ["b1:9092"]}}}]})
m = config.mappings[0]
print(type(m).__name__, family_of(m).name, m.batch_size, m.maximum_batching_window_in_seconds)
print([x for x in ("aiokafka", "esm.sources.kafka.runtime") if x in sys.modules])
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split("\n")[:2] == ["KafkaMappingConfig kafka 100 0.5", "[]"]
