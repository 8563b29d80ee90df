"""A second fetch in flight: aiokafka's fetcher asks again while fetched records wait.

aiokafka sends one fetch at a time to a broker, and after each answer it holds the broker's
next fetch back until the records it buffered are taken (or `prefetch_backoff`, 100 ms, has
passed). A bare getmany loop takes them at once; esm's lanes take them when they have room,
so the broker sat idle while the records waited, and the next fetch left only then: esm was
one fetch deep (BENCHMARKS, figure 7: the lanes waited ~90% of a drain for records).

`pipeline_fetches` keeps aiokafka's hold for one case only, a fetch the broker would park:
a request whose partitions all sit at their high watermark waits up to `fetch_max_wait_ms`
(500 ms) for new records, and while it waits nothing else goes to that broker, so the
partition whose records are buffered could not be fetched again when they are taken. Any
other fetch goes at once, for the partitions that have nothing buffered (aiokafka never
asks for a partition with buffered records: no record is fetched twice, none skipped).

It relies on aiokafka internals (`Fetcher._get_actions_per_node`, `_prefetch_backoff`,
`_records` and their `_created`), checked when installed: pyproject.toml pins the aiokafka
range they were read in, and without them the consumer stays as aiokafka built it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.consumer import fetcher as _aiokafka_fetcher  # type: ignore[import-untyped]


def hold_for(
    positions: Iterable[tuple[int, int | None]], buffered_ages: Iterable[float], hold: float
) -> float | None:
    """Seconds to hold a fetch back, None to send it now.

    `positions` are the requested partitions' (next offset, high watermark as last seen, None
    when never fetched); `buffered_ages` the ages of the broker's fetched results still
    buffered. A request with any partition behind its high watermark is answered at once;
    one at the end of every partition is parked by the broker, so it waits while a buffered
    result is younger than `hold` (aiokafka's own rule), then goes anyway: a partition whose
    records wait longer (a slow handler) must not delay the others' new records."""
    for position, highwater in positions:
        if highwater is None or position < highwater:
            return None
    wait = None
    for age in buffered_ages:
        left = hold - age
        if left > 0 and (wait is None or left < wait):
            wait = left
    return wait


def pipeline_supported(fetcher: Any) -> bool:
    """The fetcher has the parts `pipeline_fetches` relies on (a newer aiokafka may rename
    them): the hold is `calculate_backoff` of results stamped `_created`, aged from
    `_prefetch_backoff` when a fetch is answered."""
    actions = getattr(fetcher, "_get_actions_per_node", None)
    answer = getattr(fetcher, "_proc_fetch_request", None)
    results: list[Any] = [
        getattr(_aiokafka_fetcher, name, None) for name in ("FetchResult", "FetchError")
    ]
    if not callable(actions) or not callable(answer) or None in results:
        return False
    return (
        isinstance(getattr(fetcher, "_prefetch_backoff", None), int | float)
        and isinstance(getattr(fetcher, "_records", None), dict)
        and callable(getattr(fetcher, "_select_read_replica", None))
        and "calculate_backoff" in actions.__code__.co_names
        and "_prefetch_backoff" in answer.__code__.co_names
        and all("_created" in result.__init__.__code__.co_names for result in results)
    )


def pipeline_fetches(consumer: Any) -> bool:
    """Let a started consumer's fetcher send the next fetch while fetched records wait to be
    taken (see the module's docstring); False when this aiokafka lacks the parts it needs."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    if not pipeline_supported(fetcher):
        return False
    original = fetcher._get_actions_per_node
    hold = float(fetcher._prefetch_backoff)
    fetcher._prefetch_backoff = 0  # results fetched from now on never hold a broker back

    def held(assignment: Any, node_id: int, request: Any) -> float | None:
        positions = []
        for topic, partitions in request.topics:
            for partition, position, _max_bytes in partitions:
                state = assignment.state_value(TopicPartition(topic, partition))
                positions.append((position, state.highwater))
        now = time.monotonic()
        ages = [
            now - result._created
            for tp, result in list(fetcher._records.items())
            if fetcher._select_read_replica(tp) == node_id
        ]
        return hold_for(positions, ages, hold)

    def actions(assignment: Any) -> Any:
        fetch_requests, resets, timeout, invalid_metadata, resumes = original(assignment)
        sent = []
        for node_id, request in fetch_requests:
            wait = held(assignment, node_id, request)
            if wait is None:
                sent.append((node_id, request))
            else:  # asked again when the records are taken, or when the hold is over
                timeout = min(timeout, wait)
        return sent, resets, timeout, invalid_metadata, resumes

    fetcher._get_actions_per_node = actions
    return True
