"""The embedded checkpoint store: one SQLite file, so a single daemon needs no other service.

Durability is the point: WAL with `synchronous=FULL` makes every commit reach the disk
before `put` returns, so a checkpoint survives SIGKILL and power loss and a restart never
re-reads from an older position than it reported. sqlite3 calls block, so each runs in a
worker thread; one connection serves all of them, one at a time, behind a lock.

The file holds which records were processed, so it is private to esm's user: created 0600,
and SQLite gives its WAL and shared-memory files the database file's mode. A file left
more open by an earlier esm is narrowed to 0600 when opened.

Schema 2 added `incarnation` (see `Checkpoint`); a schema-1 file is migrated in place and its
rows keep a NULL incarnation, which matches any stream until their next checkpoint.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread

from esm.observability import get_logger
from esm.state.base import Checkpoint, StateStoreError

if TYPE_CHECKING:
    from esm.state.dynamodb import HeldLease

log = get_logger("esm.state.sqlite")

SCHEMA_VERSION = 2
FILE_MODE = 0o600
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    mapping         TEXT    NOT NULL,
    shard_id        TEXT    NOT NULL,
    sequence_number TEXT,
    shard_ended     INTEGER NOT NULL CHECK (shard_ended IN (0, 1)),
    updated_at      TEXT    NOT NULL,
    incarnation     TEXT,
    PRIMARY KEY (mapping, shard_id)
) WITHOUT ROWID
"""
_ADD_INCARNATION = "ALTER TABLE checkpoints ADD COLUMN incarnation TEXT"
_UPSERT = """
INSERT INTO checkpoints (mapping, shard_id, sequence_number, shard_ended, updated_at, incarnation)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (mapping, shard_id) DO UPDATE SET
    sequence_number = excluded.sequence_number,
    shard_ended = excluded.shard_ended,
    updated_at = excluded.updated_at,
    incarnation = excluded.incarnation
"""

T = TypeVar("T")


class SqliteCheckpointStore:
    """A `CheckpointStore` in one SQLite file; made by `await SqliteCheckpointStore.open(path)`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection: sqlite3.Connection | None = connection
        self._path = path
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, path: Path) -> SqliteCheckpointStore:
        """Open (creating the file and its parent directories if needed) and migrate the schema."""
        try:
            connection = await anyio.to_thread.run_sync(_connect, path)
        except (sqlite3.Error, OSError) as exc:
            raise StateStoreError(f"cannot open checkpoint store {path}: {exc}") from exc
        return cls(connection, path)

    async def get(self, mapping: str, shard_id: str) -> Checkpoint | None:
        def read(c: sqlite3.Connection) -> Checkpoint | None:
            row = c.execute(
                "SELECT sequence_number, shard_ended, incarnation FROM checkpoints"
                " WHERE mapping = ? AND shard_id = ?",
                (mapping, shard_id),
            ).fetchone()
            return None if row is None else Checkpoint(row[0], bool(row[1]), row[2])

        return await self._run(read)

    async def put(
        self,
        mapping: str,
        shard_id: str,
        checkpoint: Checkpoint,
        lease: HeldLease | None = None,
    ) -> None:
        """`lease` is for leasing stores only: one process owns this file (ignored)."""
        updated_at = datetime.now(UTC).isoformat(timespec="milliseconds")
        values = (
            mapping,
            shard_id,
            checkpoint.sequence_number,
            int(checkpoint.shard_ended),
            updated_at,
            checkpoint.incarnation,
        )

        def write(c: sqlite3.Connection) -> None:
            # Autocommit: the statement is its own transaction, fsynced before execute returns.
            c.execute(_UPSERT, values)

        await self._run(write)

    async def all(self, mapping: str) -> dict[str, Checkpoint]:
        def read(c: sqlite3.Connection) -> dict[str, Checkpoint]:
            rows = c.execute(
                "SELECT shard_id, sequence_number, shard_ended, incarnation FROM checkpoints"
                " WHERE mapping = ?",
                (mapping,),
            ).fetchall()
            return {
                shard: Checkpoint(seq, bool(ended), incarnation)
                for shard, seq, ended, incarnation in rows
            }

        return await self._run(read)

    async def close(self) -> None:
        async with self._lock:
            connection, self._connection = self._connection, None
            if connection is not None:
                await anyio.to_thread.run_sync(connection.close)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run one blocking call in a worker thread; the lock keeps the connection single-user.

        The thread is never abandoned on cancellation, so the lock is only released once
        SQLite is done with the connection.
        """
        async with self._lock:
            connection = self._connection
            if connection is None:
                raise StateStoreError(f"checkpoint store {self._path} is closed")
            try:
                return await anyio.to_thread.run_sync(fn, connection)
            except sqlite3.Error as exc:
                raise StateStoreError(f"checkpoint store {self._path}: {exc}") from exc


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    _create_private(path)
    # isolation_level=None: autocommit, so each put commits on its own; transactions are explicit.
    connection = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            # Still durable with synchronous=FULL, only slower; e.g. a filesystem without mmap.
            log.warning("state.no_wal", path=str(path), journal_mode=mode)
        # Per connection, not stored in the file: WAL's default (NORMAL) may lose the last
        # commits on power loss, and a lost checkpoint means records processed twice.
        connection.execute("PRAGMA synchronous = FULL")
        _migrate(connection, path)
        for suffix in ("-wal", "-shm"):
            _narrow(Path(f"{path}{suffix}"))
    except BaseException:
        connection.close()
        raise
    return connection


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite opens it (SQLite would use the umask,
    0644 by default); its WAL and SHM files then get the same mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    os.close(fd)
    _narrow(path)


def _narrow(path: Path) -> None:
    """Take group and other permissions off a file esm owns (one left by an older esm)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if mode & 0o077 and path.stat().st_uid == os.getuid():
        path.chmod(mode & 0o700)


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION; IMMEDIATE so two processes opening at once don't race."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StateStoreError(
                f"checkpoint store {path} has schema version {version}, newer than this esm"
                f" understands ({SCHEMA_VERSION}); run the newer esm or point state.path elsewhere"
            )
        if version == 0:
            connection.execute(_SCHEMA)
        elif version == 1:
            connection.execute(_ADD_INCARNATION)
        if version < SCHEMA_VERSION:
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
