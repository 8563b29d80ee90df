"""The SQLite checkpoint store: what a put stored is what a later get or reopen sees."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from esm.state.base import Checkpoint, StateStoreError
from esm.state.sqlite import SCHEMA_VERSION, SqliteCheckpointStore

pytestmark = pytest.mark.anyio

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_put_then_get_round_trips(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        assert await store.get("orders", "shardId-000000000000") is None
        await store.put("orders", "shardId-000000000000", Checkpoint("4959"))
        assert await store.get("orders", "shardId-000000000000") == Checkpoint("4959")
        await store.put("orders", "shardId-000000000000", Checkpoint("4960", shard_ended=True))
        assert await store.get("orders", "shardId-000000000000") == Checkpoint("4960", True)
    finally:
        await store.close()


async def test_nothing_processed_yet_is_stored_as_none(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        await store.put("orders", "shard-0", Checkpoint(None, shard_ended=True))
        assert await store.get("orders", "shard-0") == Checkpoint(None, shard_ended=True)
    finally:
        await store.close()


async def test_a_lower_checkpoint_is_stored_as_given(tmp_path: Path) -> None:
    """The caller decides the position; the store never second-guesses it."""
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        await store.put("orders", "shard-0", Checkpoint("200"))
        await store.put("orders", "shard-0", Checkpoint("100"))
        assert await store.get("orders", "shard-0") == Checkpoint("100")
    finally:
        await store.close()


async def test_checkpoints_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.sqlite3"
    store = await SqliteCheckpointStore.open(path)
    await store.put("orders", "shard-0", Checkpoint("17"))
    await store.put("orders", "shard-1", Checkpoint("18", shard_ended=True))
    await store.close()

    reopened = await SqliteCheckpointStore.open(path)
    try:
        assert await reopened.all("orders") == {
            "shard-0": Checkpoint("17"),
            "shard-1": Checkpoint("18", shard_ended=True),
        }
    finally:
        await reopened.close()


async def test_mappings_and_shards_are_independent(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        await store.put("orders", "shard-0", Checkpoint("1"))
        await store.put("orders", "shard-1", Checkpoint("2"))
        await store.put("payments", "shard-0", Checkpoint("3"))
        assert await store.get("orders", "shard-0") == Checkpoint("1")
        assert await store.get("payments", "shard-0") == Checkpoint("3")
        assert await store.get("payments", "shard-1") is None
        assert await store.all("orders") == {"shard-0": Checkpoint("1"), "shard-1": Checkpoint("2")}
        assert await store.all("payments") == {"shard-0": Checkpoint("3")}
        assert await store.all("unknown") == {}
    finally:
        await store.close()


async def test_concurrent_puts_all_land(tmp_path: Path) -> None:
    """Many shard pollers share one store; the lock keeps the one connection single-user."""
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(store.put, "orders", f"shard-{i}", Checkpoint(str(i)))
        stored = await store.all("orders")
        assert stored == {f"shard-{i}": Checkpoint(str(i)) for i in range(50)}
    finally:
        await store.close()


async def test_file_uses_wal_and_records_the_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = await SqliteCheckpointStore.open(path)
    await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    raw.close()


async def test_a_newer_schema_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StateStoreError, match="newer than this esm"):
        await SqliteCheckpointStore.open(path)


async def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.write_bytes(b"this is not a database, it is a note" * 100)
    with pytest.raises(StateStoreError, match="cannot open checkpoint store"):
        await SqliteCheckpointStore.open(path)


async def test_use_after_close_raises_and_close_is_idempotent(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    await store.close()
    await store.close()
    with pytest.raises(StateStoreError, match="closed"):
        await store.get("orders", "shard-0")


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import anyio
    from esm.state.base import Checkpoint
    from esm.state.sqlite import SqliteCheckpointStore

    async def main() -> None:
        store = await SqliteCheckpointStore.open(Path(sys.argv[1]))
        for i in range(1, 101):
            await store.put("orders", "shard-0", Checkpoint(str(i), shard_ended=i == 100))
        await store.put("orders", "shard-1", Checkpoint("last"))
        print("stored", flush=True)
        time.sleep(60)  # never closes: the kill must find the writes in the WAL only

    anyio.run(main)
    """
)


async def test_put_that_returned_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        assert child.stdout is not None
        line = await anyio.to_thread.run_sync(child.stdout.readline)
        assert line.strip() == b"stored", "the child did not finish its puts"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert (tmp_path / "state.sqlite3-wal").exists(), "expected the writes to be in the WAL"

    store = await SqliteCheckpointStore.open(path)
    try:
        assert await store.all("orders") == {
            "shard-0": Checkpoint("100", shard_ended=True),
            "shard-1": Checkpoint("last"),
        }
    finally:
        await store.close()


async def test_the_file_and_its_wal_and_shm_are_private(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = await SqliteCheckpointStore.open(path)
    try:
        await store.put("orders", "shard-0", Checkpoint("1"))
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {
            f.name: 0o600 for f in files
        }
    finally:
        await store.close()


async def test_a_world_readable_file_of_an_older_esm_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    path.touch(mode=0o644)
    path.chmod(0o644)
    store = await SqliteCheckpointStore.open(path)
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_incarnation_is_stored_and_read_back(tmp_path: Path) -> None:
    store = await SqliteCheckpointStore.open(tmp_path / "state.sqlite3")
    try:
        await store.put("orders", "shard-0", Checkpoint("7", incarnation="created-1"))
        assert await store.get("orders", "shard-0") == Checkpoint("7", False, "created-1")
        assert await store.all("orders") == {"shard-0": Checkpoint("7", False, "created-1")}
    finally:
        await store.close()


async def test_a_schema_1_file_is_migrated_its_rows_match_any_incarnation(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    raw = sqlite3.connect(path)
    raw.execute(
        "CREATE TABLE checkpoints (mapping TEXT NOT NULL, shard_id TEXT NOT NULL,"
        " sequence_number TEXT, shard_ended INTEGER NOT NULL CHECK (shard_ended IN (0, 1)),"
        " updated_at TEXT NOT NULL, PRIMARY KEY (mapping, shard_id)) WITHOUT ROWID"
    )
    raw.execute("INSERT INTO checkpoints VALUES ('orders', 'shard-0', '42', 0, 'then')")
    raw.execute("PRAGMA user_version = 1")
    raw.commit()
    raw.close()
    store = await SqliteCheckpointStore.open(path)
    try:
        old = await store.get("orders", "shard-0")
        assert old == Checkpoint("42")
        assert old is not None and old.matches("any-incarnation")
        await store.put("orders", "shard-0", Checkpoint("43", incarnation="now"))
        assert await store.get("orders", "shard-0") == Checkpoint("43", False, "now")
    finally:
        await store.close()
