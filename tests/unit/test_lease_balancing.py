"""The pure lease arithmetic of fleet mode: expiry, fair share, take and steal, lineage."""

from __future__ import annotations

import random
from collections import Counter

from esm.sources.streams import ShardInfo
from esm.sources.streams.leases import (
    ExpiryTracker,
    choose_leases_to_take,
    fair_share,
    leases_to_create,
)
from esm.state.dynamodb import SHARD_END, Lease


def lease(
    shard: int, owner: str | None, counter: int = 1, checkpoint: str = "TRIM_HORIZON"
) -> Lease:
    return Lease("m", f"shardId-{shard:012d}", owner, counter, checkpoint)


def owned(counts: dict[str | None, int]) -> list[Lease]:
    leases: list[Lease] = []
    for owner, count in counts.items():
        leases.extend(lease(len(leases), owner) for _ in range(count))
    return leases


def take(
    leases: list[Lease], worker: str, expired: set[str] | None = None, max_take: int = 2
) -> list[Lease]:
    return choose_leases_to_take(leases, expired or set(), worker, max_take, random.Random(7))


def test_fair_share_rounds_up() -> None:
    assert [fair_share(8, n) for n in (1, 2, 3, 4, 9)] == [8, 4, 3, 2, 1]


def test_unowned_leases_are_taken_at_most_max_per_cycle() -> None:
    chosen = take(owned({None: 8}), "w1")
    assert len(chosen) == 2 and all(c.owner is None for c in chosen)


def test_a_balanced_fleet_takes_nothing() -> None:
    leases = owned({"w1": 3, "w2": 3, "w3": 2})
    assert take(leases, "w1") == take(leases, "w2") == take(leases, "w3") == []


def test_a_new_worker_steals_from_the_most_loaded_only_what_is_above_the_share() -> None:
    leases = owned({"w1": 5, "w2": 3})
    chosen = take(leases, "w3")
    # Share is 3: w1 holds 2 above it; w2 none.
    assert {c.owner for c in chosen} == {"w1"} and len(chosen) == 2


def test_steal_one_when_the_most_loaded_is_at_the_share_and_more_than_one_is_missing() -> None:
    leases = owned({"w1": 3, "w2": 3, "w3": 1})
    # 7 leases, 3 workers: share 3; w3 lacks 2, the most loaded holds exactly 3.
    chosen = take(leases, "w3", max_take=5)
    assert len(chosen) == 1
    # Lacking only one, it does not steal from a worker at its share: no churn.
    assert take(owned({"w1": 3, "w2": 3, "w3": 2}), "w3") == []


def test_expired_leases_come_before_stealing() -> None:
    leases = owned({"w1": 3, "dead": 3, "w2": 2})
    expired = {x.key for x in leases if x.owner == "dead"}
    chosen = take(leases, "w2", expired)
    assert len(chosen) == 2 and {c.owner for c in chosen} == {"dead"}


def test_expired_owners_do_not_count_as_workers() -> None:
    leases = owned({"w1": 4, "w2": 1, "dead": 3})
    expired = {x.key for x in leases if x.owner == "dead"}
    # Two live workers: share 4; w2 takes the dead worker's leases (2 a cycle), w1 none.
    chosen = take(leases, "w2", expired)
    assert len(chosen) == 2 and {c.owner for c in chosen} == {"dead"}
    assert take(leases, "w1", expired) == []


def test_ended_shards_do_not_count() -> None:
    leases = [
        lease(0, None, checkpoint=SHARD_END),
        lease(1, None, checkpoint=SHARD_END),
        lease(2, "w1"),
    ]
    assert take(leases, "w2") == []


def test_repeated_cycles_converge_to_a_fair_split() -> None:
    """Three workers starting at once on eight shards end with 2-3 leases each."""
    leases = {x.key: x for x in owned({None: 8})}
    rng = random.Random(1)
    workers = ["w1", "w2", "w3"]
    for _ in range(20):
        for worker in rng.sample(workers, 3):
            for chosen in choose_leases_to_take(list(leases.values()), set(), worker, 2, rng):
                leases[chosen.key] = Lease("m", chosen.shard_id, worker, chosen.counter + 1)
    counts = Counter(x.owner for x in leases.values())
    assert sorted(counts.values()) == [2, 3, 3]


def test_expiry_is_judged_on_the_observers_clock() -> None:
    tracker = ExpiryTracker(failover_time=3.0)
    live, stale = lease(0, "w1", counter=1), lease(1, "w2", counter=1)
    assert tracker.observe([live, stale], now=100.0) == set()
    renewed = Lease("m", live.shard_id, "w1", 2)
    assert tracker.observe([renewed, stale], now=102.0) == set()
    assert tracker.observe([renewed, stale], now=103.5) == {stale.key}
    assert tracker.observe([lease(2, None)], now=104.0) == {lease(2, None).key}


def test_children_wait_for_their_parents_shard_end() -> None:
    parent = ShardInfo("shardId-000000000000", (), closed=True)
    children = [
        ShardInfo(f"shardId-00000000000{i}", (parent.shard_id,), closed=False) for i in (1, 2)
    ]
    assert leases_to_create([parent, *children], []) == [parent]
    reading = [Lease("m", parent.shard_id, "w1", 3, "4959")]
    assert leases_to_create([parent, *children], reading) == []
    done = [Lease("m", parent.shard_id, None, 4, SHARD_END)]
    assert leases_to_create([parent, *children], done) == children
    # A parent no longer listed (trimmed from the stream) does not block.
    assert leases_to_create(children, []) == children


def test_state_config_for_a_fleet_names_each_bad_key() -> None:
    import pytest

    from esm.config import parse_config
    from esm.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_config(
            {"state": {"backend": "dynamodb", "lease_renewal_interval": 0.1, "failover_time": 700}}
        )
    assert caught.value.problems == [
        "state.lease_renewal_interval: 0.1 is below the minimum 0.2",
        "state.failover_time: 700 is above the maximum 600",
        'state.table: is required with backend = "dynamodb" (the lease table name)',
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"state": {"backend": "dynamodb", "table": "t", "failover_time": 2}})
    assert caught.value.problems == [
        "state.failover_time: 2.0 must exceed lease_renewal_interval (2.0),"
        " or live leases would expire"
    ]
    state = parse_config({"state": {"backend": "dynamodb", "table": "t"}}).state
    assert (
        state.lease_renewal_interval,
        state.failover_time,
        state.max_leases_taken_per_cycle,
    ) == (
        2.0,
        10.0,
        2,
    )
