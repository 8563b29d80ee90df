"""What every source family shares: the common part of a mapping's config, what a family's
parser is given, what the daemon asks of a running mapping, and one row of `esm status`.

Light on purpose (no runtime imports): family *config* modules import it, and the registry
imports those, so config.py can reach every family without importing a single poller.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from esm.arns import SourceArn
from esm.config_table import Table, parse_filter_criteria, quoted_key

if TYPE_CHECKING:
    from esm.aws import AwsClients
    from esm.filtering import FilterSet
    from esm.idle_pacing import IdleReadPacer
    from esm.observability import Metrics
    from esm.state.base import Checkpoint, CheckpointStore


@dataclass(frozen=True, kw_only=True)
class MappingConfig:
    """The keys every `[[mappings]]` entry has, whatever its source (AWS's
    CreateEventSourceMapping parameters in snake_case). A family's config subclasses it
    with its own keys only, so an SQS mapping carries no stream settings."""

    name: str
    function: str
    enabled: bool = True
    batch_size: int = 10
    maximum_batching_window_in_seconds: float = 0.0
    function_response_types: frozenset[str] = frozenset()
    filter_patterns: tuple[str, ...] = ()

    @property
    def family(self) -> str:
        """The registry name of the mapping's source family (esm/sources/registry.py)."""
        raise NotImplementedError

    @property
    def report_batch_item_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.function_response_types


@dataclass(frozen=True, kw_only=True)
class ArnMappingConfig(MappingConfig):
    """A mapping whose source is named by an AWS ARN (SQS queue, Kinesis or DynamoDB stream)."""

    source: SourceArn

    @property
    def family(self) -> str:
        return self.source.kind

    @property
    def event_source_arn(self) -> str:
        return self.source.arn


@dataclass(frozen=True)
class MappingContext:
    """What a family's parser is told about the table it parses."""

    index: int
    """Position in the file: the default name is `mapping-<index>`."""
    functions: Collection[str]
    """The `[functions.*]` names the mapping may refer to."""
    source: SourceArn | None
    """The source the registry recognised (for an unusable ARN: the one it most likely
    meant, so the other keys are still checked); None for families without an ARN."""
    arn_problem: str | None = None
    """Why event_source_arn is unusable; the family lists it where it reads the key."""


def read_common(t: Table, ctx: MappingContext) -> dict[str, Any]:
    """The keys every ARN-named family reads the same way, in the order problems are listed
    (name, function, event_source_arn first), as keyword arguments of its config."""
    name = t.string("name", f"mapping-{ctx.index}")
    function = t.string("function", "", required=True)
    if function and function not in ctx.functions:
        known = ", ".join(quoted_key(f) for f in sorted(ctx.functions)) or "none defined"
        t.problem("function", f"{function!r} is not a [functions.*] entry (known: {known})")
    t.string("event_source_arn", "", required=True)  # recognised by the registry already
    if ctx.arn_problem is not None:
        t.problem("event_source_arn", ctx.arn_problem)
    assert ctx.source is not None
    return dict(
        name=name,
        function=function,
        source=ctx.source,
        enabled=t.boolean("enabled", True),
        function_response_types=frozenset(
            t.string_list("function_response_types", ("ReportBatchItemFailures",))
        ),
        filter_patterns=parse_filter_criteria(t),
    )


class MappingRuntime(Protocol):
    """What the daemon asks of one running mapping, whatever its family. Runtimes subclass
    it to inherit the defaults (`not_ready_reason`)."""

    name: str

    @property
    def ready(self) -> bool:
        """Polling, and positioned: a record sent to the source from now on is delivered."""
        ...

    @property
    def not_ready_reason(self) -> str | None:
        """Why the mapping is not ready, for /readyz: a family that can say more than
        `ready` (Kafka and the broker queues name the brokers and the error) overrides it.
        None when ready, or when there is nothing more to say."""
        return None

    async def run(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class RuntimeResources:
    """What the daemon shares with the runtimes it builds; the checkpoint store is opened
    on first use, so a daemon of SQS mappings only never creates a state file."""

    aws: AwsClients
    metrics: Metrics
    checkpoint_store: Callable[[], Awaitable[CheckpointStore]]
    idle_pacer: IdleReadPacer
    """Shared by every stream mapping: one budget of reads for caught-up shards."""


RuntimeBuilder = Callable[
    [Any, Any, "FilterSet | None", RuntimeResources], Awaitable[MappingRuntime]
]
"""(the family's mapping config, its Function, compiled filters, resources) -> runtime."""


@dataclass(frozen=True)
class StatusRow:
    """One line of `esm status`: a shard (or partition) of a mapping, who reads it, how far."""

    mapping: str
    shard_id: str
    state: str
    """`open`, `closed` (resharded, still to be read to its end) or `ended` (done)."""
    owner: str
    checkpoint: str
    iterator_age: str


OwnersReader = Callable[[str], Awaitable[dict[str, str]]]
CheckpointsReader = Callable[[str], Awaitable[dict[str, "Checkpoint"]]]
StatusCollector = Callable[
    [Any, "AwsClients", OwnersReader, CheckpointsReader], Awaitable[list[StatusRow]]
]
"""(mapping config, clients, owners by shard, checkpoints by shard) -> its status rows."""
