"""How many receivers (concurrent batches) an SQS mapping runs, as Lambda scales them.

AWS, "Configuring scaling behavior for SQS event source mappings"
(https://docs.aws.amazon.com/lambda/latest/dg/services-sqs-scaling.html):

- standard mode (the default): Lambda long-polls, and when messages are available it
  processes five batches at a time; while messages are still available it adds up to 300
  more per minute, up to 1,250 concurrent batches (older versions of the page: 1,000), or
  `ScalingConfig.MaximumConcurrency` (2-1,000). When traffic is low it scales back to five;
- provisioned mode (`ProvisionedPollerConfig`, mutually exclusive with maximum concurrency):
  dedicated pollers between `MinimumPollers` (2-200, default 2) and `MaximumPollers`
  (2-2,000, default 200, the range CloudFormation and the CDK document for SQS), with
  "3 times faster scaling".

esm runs one receiver per concurrent batch, so a poller here is a receiver: provisioned
mode keeps `minimum_pollers` receivers even while the queue is empty and adds up to
900 a minute (3 x 300) up to `maximum_pollers`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STANDARD_INITIAL = 5
"""Batches Lambda starts with once messages are available (and scales back to)."""
STANDARD_PER_MINUTE = 300
STANDARD_CEILING = 1250
PROVISIONED_PER_MINUTE = 3 * STANDARD_PER_MINUTE
MINIMUM_POLLERS_RANGE = (2, 200)
MAXIMUM_POLLERS_RANGE = (2, 2000)
DEFAULT_MINIMUM_POLLERS = 2
DEFAULT_MAXIMUM_POLLERS = 200


@dataclass(frozen=True)
class ProvisionedPollers:
    """A mapping's `provisioned_poller_config`."""

    minimum_pollers: int = DEFAULT_MINIMUM_POLLERS
    maximum_pollers: int = DEFAULT_MAXIMUM_POLLERS


@dataclass(frozen=True)
class ScalingPlan:
    """Receivers at start (also the floor they scale back to), the ceiling, and the least
    time between two scale-ups while receives come back full."""

    mode: str
    initial: int
    ceiling: int
    scale_up_interval: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "initial": self.initial,
            "ceiling": self.ceiling,
            "scale_up_interval": self.scale_up_interval,
        }


def scaling_plan(
    maximum_concurrency: int | None,
    function_concurrency: int | None,
    provisioned: ProvisionedPollers | None,
) -> ScalingPlan:
    """The plan for one mapping. A function's reserved concurrency also caps the receivers:
    more batches than it can run would only hold messages invisible while they wait."""
    if provisioned is not None:
        ceiling = provisioned.maximum_pollers
        if function_concurrency:
            ceiling = min(ceiling, function_concurrency)
        return ScalingPlan(
            "provisioned",
            min(provisioned.minimum_pollers, ceiling),
            ceiling,
            60.0 / PROVISIONED_PER_MINUTE,
        )
    ceiling = min(
        value for value in (maximum_concurrency, function_concurrency, STANDARD_CEILING) if value
    )
    initial = min(STANDARD_INITIAL, ceiling)
    return ScalingPlan("standard", initial, ceiling, 60.0 / STANDARD_PER_MINUTE)


def parse_provisioned_poller_config(
    raw: Any, path: str, *, maximum_concurrency: int | None = None
) -> tuple[ProvisionedPollers | None, list[str]]:
    """Validate a mapping's `provisioned_poller_config` table (None when absent).

    Returns the config and the problems found, each naming its key path and AWS's range,
    for esm.config to report with the rest. `maximum_concurrency` is the mapping's
    `scaling_config.maximum_concurrency`: AWS rejects both together."""
    if raw is None:
        return None, []
    if not isinstance(raw, Mapping):
        return None, [f"{path}: must be a table, not {type(raw).__name__}"]
    problems: list[str] = []
    for key in raw:
        if key not in ("minimum_pollers", "maximum_pollers"):
            problems.append(f"{path}.{key}: unknown key (minimum_pollers, maximum_pollers)")
    minimum = _pollers(raw, "minimum_pollers", path, MINIMUM_POLLERS_RANGE, problems)
    maximum = _pollers(raw, "maximum_pollers", path, MAXIMUM_POLLERS_RANGE, problems)
    low = DEFAULT_MINIMUM_POLLERS if minimum is None else minimum
    high = DEFAULT_MAXIMUM_POLLERS if maximum is None else maximum
    if (minimum is not None or maximum is not None) and low > high:
        problems.append(f"{path}: minimum_pollers ({low}) must not exceed maximum_pollers ({high})")
    if maximum_concurrency is not None:
        problems.append(
            f"{path}: cannot be used with scaling_config.maximum_concurrency "
            "(AWS makes them mutually exclusive: provisioned mode bounds the pollers instead)"
        )
    if problems:
        return None, problems
    return ProvisionedPollers(low, high), []


def _pollers(
    raw: Mapping[str, Any], key: str, path: str, bounds: tuple[int, int], problems: list[str]
) -> int | None:
    if key not in raw:
        return None
    value = raw[key]
    low, high = bounds
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{path}.{key}: must be an integer from {low} to {high}, not {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{path}.{key}: must be from {low} to {high} for SQS, not {value}")
        return None
    return value
