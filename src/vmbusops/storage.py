"""Opening the agent's small SQLite stores (principals, schedules) the same way everywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vmbusops.errors import ConfigError


def open_wal_database(path: Path, schema: str, *, what: str, timeout: float = 10.0) -> sqlite3.Connection:
    """Open (creating if needed) a WAL-mode SQLite database in autocommit mode, schema applied.

    Shared between threads (callers serialize access with their own lock); the parent folder is
    created owner-only. ``what`` names the store in the error a broken file gives.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(schema)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open {what} {path}: {exc}") from exc
    return db
