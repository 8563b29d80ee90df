"""Fleet mode: several esm processes share a stream's shards through a DynamoDB lease table.

Daemons run as separate processes against moto's Kinesis and DynamoDB, with short lease
timings (renewal 0.5 s, failover 3 s). Each worker's handler appends every record's data
to one shared file, so the tests see what the whole fleet processed, in order.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path

import boto3
import pytest
from conftest import HANDLERS, free_port, wait_for_http, wait_until

RENEWAL = 0.5
FAILOVER = 3.0


@pytest.fixture
def kinesis(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("kinesis", endpoint_url=endpoint, region_name="us-east-1")


@pytest.fixture
def dynamodb(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("dynamodb", endpoint_url=endpoint, region_name="us-east-1")


class Worker:
    """One `esm run` process; stderr goes to a log file next to the config."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esm", "run", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        wait_for_http(f"http://127.0.0.1:{port}/healthz")
        self.id = wait_until(self._worker_id, timeout=30)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def _worker_id(self) -> str | None:
        found = re.search(r'esm_worker_info\{worker="([^"]+)"\}', self.metrics())
        return found.group(1) if found else None

    def leases_held(self) -> int:
        found = re.search(r'esm_leases_held\{mapping="fleet"\} ([0-9.]+)', self.metrics())
        return int(float(found.group(1))) if found else 0

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=60)


class Fleet:
    def __init__(self, tmp_path: Path, endpoint: str, arn: str, table: str) -> None:
        self.tmp_path = tmp_path
        self.endpoint = endpoint
        self.arn = arn
        self.table = table
        self.record_path = tmp_path / "handled.txt"
        self.workers: list[Worker] = []

    def start(self) -> Worker:
        n = len(self.workers)
        port = free_port()
        config = self.tmp_path / f"esm-{n}.toml"
        config.write_text(
            f"""
[daemon]
endpoint_url = "{self.endpoint}"
http_address = "127.0.0.1:{port}"
drain_timeout = 30
[state]
backend = "dynamodb"
table = "{self.table}"
create_table = true
lease_renewal_interval = {RENEWAL}
failover_time = {FAILOVER}
[functions.w]
handler = "recorder.stream_write_to_file"
code_path = "{HANDLERS}"
environment = {{ RECORD_PATH = "{self.record_path}", HANDLER_SLEEP = "0.02" }}
[[mappings]]
name = "fleet"
function = "w"
event_source_arn = "{self.arn}"
starting_position = "TRIM_HORIZON"
batch_size = 10
"""
        )
        worker = Worker(config, port, self.tmp_path / f"esm-{n}.log")
        self.workers.append(worker)
        return worker

    def handled(self) -> list[str]:
        return self.record_path.read_text().split() if self.record_path.exists() else []

    def close(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.kill()
                worker.proc.wait(timeout=10)


@pytest.fixture
def fleet(endpoint, kinesis, unique, tmp_path):  # type: ignore[no-untyped-def]
    made: list[Fleet] = []

    def make(shards: int) -> Fleet:
        name = f"fleet-{unique}"
        kinesis.create_stream(StreamName=name, ShardCount=shards)
        arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
        made.append(Fleet(tmp_path, endpoint, arn, f"leases-{unique}"))
        return made[-1]

    yield make
    for f in made:
        f.close()


def leases(dynamodb, table: str) -> dict[str, dict[str, str | None]]:  # type: ignore[no-untyped-def]
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {
        i["shardId"]["S"]: {
            "owner": i.get("leaseOwner", {}).get("S"),
            "checkpoint": i["checkpoint"]["S"],
            "parents": ",".join(i.get("parentShardId", {}).get("SS", [])),
        }
        for i in items
    }


def owners(dynamodb, table: str) -> Counter[str | None]:  # type: ignore[no-untyped-def]
    return Counter(
        lease["owner"]
        for lease in leases(dynamodb, table).values()
        if lease["checkpoint"] != "SHARD_END"
    )


def put(kinesis, stream: str, items: list[tuple[str, str]]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Put (partition key, data) pairs in order; returns the shard of each data."""
    shard_of: dict[str, str] = {}
    for start in range(0, len(items), 500):
        chunk = items[start : start + 500]
        response = kinesis.put_records(
            StreamName=stream, Records=[{"PartitionKey": k, "Data": d.encode()} for k, d in chunk]
        )
        assert response["FailedRecordCount"] == 0
        for (_, data), result in zip(chunk, response["Records"], strict=True):
            shard_of[data] = result["ShardId"]
    return shard_of


def records(first: int, count: int, keys: int = 40) -> list[tuple[str, str]]:
    return [(f"key-{i % keys}", f"{i % keys}:{i}") for i in range(first, first + count)]


def assert_in_order_per_key(handled: list[str]) -> None:
    """Per partition key, records are first seen in the order they were written (a replay
    after a failover may repeat some, never jump back before a first delivery)."""
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for data in handled:
        if data in seen:
            continue
        seen.add(data)
        key, index = data.split(":")
        first_seen[key].append(int(index))
    for key, indices in first_seen.items():
        assert indices == sorted(indices), f"key {key} out of order"


def test_three_workers_balance_fail_over_and_hand_over(fleet, kinesis, dynamodb):  # type: ignore[no-untyped-def]
    f = fleet(8)
    stream = f.arn.rsplit("/", 1)[1]
    workers = [f.start() for _ in range(3)]
    ids = {w.id for w in workers}
    assert len(ids) == 3

    # Balanced: every lease held, each worker 2 or 3, and each worker agrees (a worker a
    # lease was stolen from learns it at its next renewal).
    def balanced() -> bool:
        held = owners(dynamodb, f.table)
        return (
            set(held) == ids
            and sorted(held.values()) == [2, 3, 3]
            and all(w.leases_held() == held[w.id] for w in workers)
        )

    wait_until(balanced, timeout=40, interval=0.2)

    sent = records(0, 600)
    shard_of = put(kinesis, stream, sent)
    wait_until(lambda: len(f.handled()) >= 150, timeout=30)

    # SIGKILL: the dead worker's leases expire and are taken by the two others.
    victim, survivor, last = workers
    victim_shards = {
        s for s, lease in leases(dynamodb, f.table).items() if lease["owner"] == victim.id
    }
    victim.stop(signal.SIGKILL)
    wait_until(
        lambda: set(owners(dynamodb, f.table)) == {survivor.id, last.id},
        timeout=FAILOVER + 20,
        interval=0.2,
    )
    more = records(600, 300)
    shard_of.update(put(kinesis, stream, more))
    sent += more
    wait_until(lambda: {d for _, d in sent} <= set(f.handled()), timeout=60, interval=0.2)

    # SIGTERM: in-flight batches finish, checkpoints are written, leases are released and
    # taken as unowned (no expiry wait).
    assert survivor.stop(signal.SIGTERM) == 0
    wait_until(lambda: set(owners(dynamodb, f.table)) == {last.id}, timeout=30, interval=0.2)
    assert '"how": "unowned"' in last.log.read_text() or '"how":"unowned"' in last.log.read_text()
    released = [line for line in survivor.log.read_text().splitlines() if "lease.released" in line]
    assert released
    final = records(900, 300)
    shard_of.update(put(kinesis, stream, final))
    sent += final
    wait_until(lambda: {d for _, d in sent} <= set(f.handled()), timeout=60, interval=0.2)
    assert last.stop(signal.SIGTERM) == 0

    handled = f.handled()
    assert set(handled) == {d for _, d in sent}
    assert_in_order_per_key(handled)
    duplicated = [d for d, n in Counter(handled).items() if n > 1]
    # Duplicates only from what the killed worker had in flight, never from the hand-over.
    assert {shard_of[d] for d in duplicated} <= victim_shards


def test_a_worker_stalled_past_failover_time_invokes_nothing_after_it_resumes(
    fleet, kinesis, dynamodb
):  # type: ignore[no-untyped-def]
    f = fleet(1)
    stream = f.arn.rsplit("/", 1)[1]
    stalled = f.start()
    wait_until(
        lambda: owners(dynamodb, f.table) == Counter({stalled.id: 1}), timeout=30, interval=0.2
    )
    successor = f.start()
    sent = records(0, 2000)
    put(kinesis, stream, sent)
    # Paused mid-shard: the stalled worker has read far more than it has handled.
    wait_until(lambda: len(f.handled()) >= 100, timeout=30, interval=0.01)
    stalled.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(
            lambda: set(owners(dynamodb, f.table)) == {successor.id},
            timeout=FAILOVER + 20,
            interval=0.2,
        )
        wait_until(lambda: {d for _, d in sent} <= set(f.handled()), timeout=60, interval=0.2)
        handled_by_the_fleet = f.handled()
    finally:
        stalled.proc.send_signal(signal.SIGCONT)
    # Resumed: it learns the lease is gone (its own clock says failover_time has passed, or
    # its renewal is refused) and stops the shard without invoking its buffered records.
    wait_until(
        lambda: (
            "shard.lease_lost" in stalled.log.read_text()
            or "shard.stopped" in stalled.log.read_text()
        ),
        timeout=30,
        interval=0.1,
    )
    assert "lease.lost" in stalled.log.read_text()
    assert f.handled() == handled_by_the_fleet
    assert_in_order_per_key(f.handled())
    assert successor.stop(signal.SIGTERM) == 0
    assert stalled.stop(signal.SIGTERM) == 0


def test_a_stream_created_again_resets_its_lease_and_every_new_record_is_handled(
    fleet, kinesis, dynamodb
):  # type: ignore[no-untyped-def]
    f = fleet(1)
    stream = f.arn.rsplit("/", 1)[1]
    worker = f.start()
    old = records(0, 30)
    put(kinesis, stream, old)
    wait_until(lambda: {d for _, d in old} <= set(f.handled()), timeout=30, interval=0.2)
    wait_until(
        lambda: leases(dynamodb, f.table)["shardId-000000000000"]["checkpoint"] == "30",
        timeout=30,
        interval=0.2,
    )
    assert worker.stop(signal.SIGTERM) == 0

    kinesis.delete_stream(StreamName=stream)
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    new = [(f"key-{i}", f"new:{i}") for i in range(7)]
    put(kinesis, stream, new)  # sequence numbers 1-7: the old checkpoint (30) would skip them all
    worker = f.start()
    wait_until(lambda: {d for _, d in new} <= set(f.handled()), timeout=30, interval=0.2)
    assert worker.stop(signal.SIGTERM) == 0
    warnings = [
        line for line in worker.log.read_text().splitlines() if "shard.new_incarnation" in line
    ]
    assert (
        len(warnings) == 1 and '"warning"' in warnings[0] and "shardId-000000000000" in warnings[0]
    )


def test_resharding_while_two_workers_run(fleet, kinesis, dynamodb):  # type: ignore[no-untyped-def]
    f = fleet(2)
    stream = f.arn.rsplit("/", 1)[1]
    workers = [f.start() for _ in range(2)]

    def balanced() -> bool:
        held = owners(dynamodb, f.table)
        return set(held) == {w.id for w in workers} and all(
            held[w.id] == 1 == w.leases_held() for w in workers
        )

    wait_until(balanced, timeout=30, interval=0.2)
    sent = records(0, 200, keys=20)
    put(kinesis, stream, sent)
    wait_until(lambda: len(f.handled()) >= 50, timeout=30)

    parent = kinesis.list_shards(StreamName=stream)["Shards"][0]
    hash_range = parent["HashKeyRange"]
    middle = (int(hash_range["StartingHashKey"]) + int(hash_range["EndingHashKey"])) // 2
    kinesis.split_shard(
        StreamName=stream, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle)
    )
    more = records(200, 200, keys=20)
    put(kinesis, stream, more)
    sent += more

    # The parent is read to its end (its closing is seen at the next shard listing), then
    # its children get leases naming it as parent.
    wait_until(
        lambda: leases(dynamodb, f.table)[parent["ShardId"]]["checkpoint"] == "SHARD_END",
        timeout=30,
    )

    def children() -> set[str]:
        return {
            s
            for s, lease in leases(dynamodb, f.table).items()
            if lease["parents"] == parent["ShardId"]
        }

    wait_until(lambda: len(children()) == 2, timeout=30)
    # Every active lease (the other original shard and both children) is held.
    wait_until(
        lambda: (
            sum(owners(dynamodb, f.table).values()) == 3 and None not in owners(dynamodb, f.table)
        )
    )
    wait_until(lambda: {d for _, d in sent} <= set(f.handled()), timeout=60, interval=0.2)

    status = esm_status(f.tmp_path / "esm-0.toml")
    lines = status.splitlines()
    assert lines[0].split() == [
        "MAPPING",
        "SHARD",
        "STATE",
        "OWNER",
        "CHECKPOINT",
        "ITERATOR",
        "AGE",
    ]
    assert len(lines) == 1 + 4  # two original shards and two children
    parent_row = next(line for line in lines if parent["ShardId"] in line).split()
    assert parent_row[2] == "ended" and parent_row[4] == "SHARD_END"
    assert {w.id for w in workers} <= {line.split()[3] for line in lines[1:]}

    for worker in workers:
        assert worker.stop(signal.SIGTERM) == 0
    handled = f.handled()
    assert set(handled) == {d for _, d in sent}
    assert_in_order_per_key(handled)
    # Graceful stops and a reshard replay nothing.
    assert len(handled) == len(set(handled))


def esm_status(config: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "esm", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_status_with_the_sqlite_store(endpoint, kinesis, unique, tmp_path):  # type: ignore[no-untyped-def]
    import anyio

    from esm.state.base import Checkpoint
    from esm.state.sqlite import SqliteCheckpointStore

    name = f"status-{unique}"
    kinesis.create_stream(StreamName=name, ShardCount=2)
    arn = kinesis.describe_stream(StreamName=name)["StreamDescription"]["StreamARN"]
    shard_of = put(kinesis, name, records(0, 20, keys=20))
    first = next(iter(shard_of.values()))
    seq = kinesis.get_records(
        ShardIterator=kinesis.get_shard_iterator(
            StreamName=name, ShardId=first, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
    )["Records"][0]["SequenceNumber"]

    async def store_checkpoint() -> None:
        store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
        await store.put("s", first, Checkpoint(seq))
        await store.close()

    anyio.run(store_checkpoint)
    config = tmp_path / "esm.toml"
    config.write_text(
        f"""
[daemon]
endpoint_url = "{endpoint}"
[state]
path = "{tmp_path / "state.sqlite3"}"
[functions.w]
handler = "recorder.record"
code_path = "{HANDLERS}"
[[mappings]]
name = "s"
function = "w"
event_source_arn = "{arn}"
starting_position = "TRIM_HORIZON"
"""
    )
    rows = [line.split() for line in esm_status(config).splitlines()[1:]]
    assert sorted(r[1] for r in rows) == ["shardId-000000000000", "shardId-000000000001"]
    row = next(r for r in rows if r[1] == first)
    assert row[2:5] == ["open", "-", seq]
    other = next(r for r in rows if r[1] != first)
    assert other[4] == "(none)"


def test_a_missing_lease_table_is_refused_with_its_schema(endpoint, unique):  # type: ignore[no-untyped-def]
    import anyio

    from esm.aws import AwsClients
    from esm.config import DaemonConfig
    from esm.state.base import StateStoreError
    from esm.state.dynamodb import DynamoDBCheckpointStore

    async def open_missing() -> str:
        async with AwsClients(DaemonConfig(endpoint_url=endpoint)) as aws:
            try:
                await DynamoDBCheckpointStore.open(aws, f"missing-{unique}", create=False)
            except StateStoreError as exc:
                return str(exc)
        raise AssertionError("opened a table that does not exist")

    message = anyio.run(open_missing)
    assert f"missing-{unique}" in message
    assert "create_table = true" in message and "AttributeName=leaseKey" in message
