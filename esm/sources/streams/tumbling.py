"""Tumbling windows for stream mappings (`tumbling_window_in_seconds`), as pure logic.

Lambda's rules (spec section 4, AWS's "time windows" docs): windows are aligned on
multiples of the window length since the epoch and a record belongs to the window of its
arrival time (Kinesis approximateArrivalTimestamp, DynamoDB ApproximateCreationDateTime).
Every invocation carries `window`, `state`, `shardId`, `eventSourceARN`,
`isFinalInvokeForWindow` and `isWindowTerminatedEarly`, and must answer with a `state`
object (a response without one is a failed invocation). The state returned is passed to
the next invocation of the same window; at the end of the window one more invocation with
`isFinalInvokeForWindow: true` and no records hands the function the final state. A state
over 1 MB ends the window early: the final invocation is marked `isWindowTerminatedEarly`
and the same window continues with a fresh state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from esm.events.envelope import records_envelope

MAX_STATE_BYTES = 1024 * 1024


@dataclass(frozen=True, order=True)
class Window:
    start: float
    end: float

    def as_json(self) -> dict[str, str]:
        return {"start": _iso(self.start), "end": _iso(self.end)}


def window_of(arrival: float, length: int) -> Window:
    """The window (aligned on the epoch) that a record arriving at `arrival` belongs to."""
    start = (int(arrival) // length) * length
    return Window(float(start), float(start + length))


@dataclass
class WindowState:
    """The state the function built so far in one window of one lane."""

    window: Window
    state: dict[str, Any] = field(default_factory=dict)
    indices: list[int] = field(default_factory=list)
    """Records aggregated in this window: checkpointed only after the final invocation
    succeeded, as Lambda does, so a crash replays the whole window with a fresh state."""


def window_event(
    records: list[dict[str, Any]],
    current: WindowState,
    *,
    shard_id: str,
    stream_arn: str,
    final: bool = False,
    terminated_early: bool = False,
) -> dict[str, Any]:
    return {
        **records_envelope(records),
        "window": current.window.as_json(),
        "state": current.state,
        "shardId": shard_id,
        "eventSourceARN": stream_arn,
        "isFinalInvokeForWindow": final,
        "isWindowTerminatedEarly": terminated_early,
    }


def returned_state(response: Any) -> dict[str, Any] | None:
    """The `state` object of a response, or None when it is missing (a failed invocation)."""
    if not isinstance(response, dict):
        return None
    state = response.get("state")
    return state if isinstance(state, dict) else None


def state_too_large(state: dict[str, Any]) -> bool:
    return len(orjson.dumps(state)) > MAX_STATE_BYTES


def _iso(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
