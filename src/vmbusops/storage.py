"""Opening the agent's small SQLite stores (principals, schedules) the same way everywhere, and
saying the same thing when one of our SQLite files cannot be written."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Generic, TypeVar

from vmbusops.errors import ConfigError, JournalError
from vmbusops.home import PRIVATE_FILE, home_dir, private_file

#: The files SQLite keeps beside a database; it creates them with the database file's mode.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_database(path: Path) -> Path:
    """Make ``path`` an owner-only file before SQLite opens it, so the -wal and -shm files SQLite
    then creates (with the database's mode) are owner-only too; side files left by an older
    version are tightened. Every SQLite store under the home is opened after this."""
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if os.name == "posix":
            # Another connection's transaction may remove its rollback journal at any moment.
            with contextlib.suppress(FileNotFoundError):
                side.chmod(PRIVATE_FILE)
    return path


K = TypeVar("K")
V = TypeVar("V")


class UntilCommit(Generic[K, V]):
    """Values read through one connection, kept while SQLite's ``data_version`` says no other
    connection has committed since (a value read after that check is at least as new as it).

    The caller holds the connection's lock, and calls :meth:`clear` when its own connection
    writes (its own commits do not move ``data_version``). At most ``limit`` values are kept;
    a ``None`` read is not kept.
    """

    def __init__(self, limit: int = 1024) -> None:
        self._values: dict[K, V] = {}
        self._at = -1
        self._limit = limit

    def get(self, db: sqlite3.Connection, key: K, read: Callable[[], V | None]) -> V | None:
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._at or len(self._values) >= self._limit:
            self._values.clear()
            self._at = version
        value = self._values.get(key)
        if value is None:
            value = read()
            if value is not None:
                self._values[key] = value
        return value

    def clear(self) -> None:
        self._values.clear()


def add_missing_columns(db: sqlite3.Connection, columns: Sequence[tuple[str, str, str]]) -> None:
    """Add each (table, column, definition) a store opened from an older version lacks."""
    for table, column, definition in columns:
        known = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in known:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def open_wal_database(
    path: Path,
    schema: str,
    *,
    what: str,
    timeout: float = 10.0,
    added_columns: Sequence[tuple[str, str, str]] = (),
) -> sqlite3.Connection:
    """Open (creating if needed) a WAL-mode SQLite database in autocommit mode, schema applied.

    Shared between threads (callers serialize access with their own lock); the file, its parent
    folder and SQLite's side files are owner-only (:func:`private_database`). ``what`` names the store in the error a broken file gives;
    ``added_columns`` are columns newer than the first schema (see :func:`add_missing_columns`).
    """
    try:
        private_database(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        add_missing_columns(db, added_columns)
    except (sqlite3.Error, OSError) as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc}") from exc
    return db


def cannot_write(what: str, path: Path | str, exc: sqlite3.Error, *, limit: str | None = None) -> JournalError:
    """The error for a failed write to one of our SQLite files, ``what`` naming it ("the journal").

    A full disk (or a store at its configured size ``limit``, which SQLite reports the same way)
    is the one failure an operator can fix on the spot, so the one line says how; anything else
    keeps SQLite's words.
    """
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        reason = "disk full" if limit is None else f"disk full or at its limit ({limit})"
        return JournalError(
            f"{what} {path} cannot be written: {reason} (SQLITE_FULL); free space under"
            f" {home_dir(create=False)} or prune with: vmbusops prune"
        )
    return JournalError(f"{what} {path} cannot be written: {exc}")


def rollback_quietly(db: sqlite3.Connection) -> None:
    """Undo the open transaction, if there still is one, without hiding why it failed.

    After SQLITE_FULL (and a few other errors) SQLite may already have rolled the transaction
    back itself; a ROLLBACK then fails with "no transaction is active", and that error must not
    replace the one that explains what happened. Nothing of the transaction was committed either way.
    """
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
