"""Opening the agent's small SQLite stores (principals, schedules) the same way everywhere."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from vmbusops.errors import ConfigError


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

    Shared between threads (callers serialize access with their own lock); the parent folder is
    created owner-only. ``what`` names the store in the error a broken file gives;
    ``added_columns`` are columns newer than the first schema (see :func:`add_missing_columns`).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
        add_missing_columns(db, added_columns)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc}") from exc
    return db
