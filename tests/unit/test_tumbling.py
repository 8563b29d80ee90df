"""Tumbling window arithmetic and response rules."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from esm.sources.streams.tumbling import (
    MAX_STATE_BYTES,
    Window,
    WindowState,
    returned_state,
    state_too_large,
    window_event,
    window_of,
)


@given(
    st.floats(min_value=0, max_value=4e9, allow_nan=False), st.integers(min_value=1, max_value=900)
)
def test_a_record_falls_in_the_epoch_aligned_window_that_contains_it(
    arrival: float, length: int
) -> None:
    window = window_of(arrival, length)
    assert window.start <= arrival < window.end
    assert window.end - window.start == length
    assert window.start % length == 0


def test_window_event_has_lambdas_keys_and_iso_bounds() -> None:
    state = WindowState(Window(1607497440.0, 1607497560.0), state={"1": 282})
    event = window_event([], state, shard_id="shardId-000000000006", stream_arn="arn", final=True)
    assert event == {
        "Records": [],
        "window": {"start": "2020-12-09T07:04:00Z", "end": "2020-12-09T07:06:00Z"},
        "state": {"1": 282},
        "shardId": "shardId-000000000006",
        "eventSourceARN": "arn",
        "isFinalInvokeForWindow": True,
        "isWindowTerminatedEarly": False,
    }


def test_a_response_without_a_state_object_has_none() -> None:
    assert returned_state({"state": {"a": 1}, "batchItemFailures": []}) == {"a": 1}
    for response in (None, {}, {"state": None}, {"state": [1]}, "state", []):
        assert returned_state(response) is None


def test_state_over_one_megabyte_ends_the_window_early() -> None:
    assert not state_too_large({"k": "x" * (MAX_STATE_BYTES - 100)})
    assert state_too_large({"k": "x" * MAX_STATE_BYTES})
