"""What this host has accepted before: bundle ids, and the highest version per bundle name.

A SQLite file (``$VMBUSOPS_HOME/bundles/accepted.sqlite``) with ``synchronous=FULL``, so an
acceptance that returned survives a power cut. :meth:`ReplayStore.record` re-checks and inserts in
one immediate transaction, so two agents accepting the same bundle at once cannot both succeed.
Reading (:meth:`last_version`, :meth:`was_accepted`) never writes; ``bundle verify`` only reads.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path
from types import TracebackType

from vmbusops.bundle.errors import ReplayedBundleError, VersionRollbackError
from vmbusops.errors import JournalError
from vmbusops.storage import private_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    accepted_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS accepted_name ON accepted (name, version);
"""


class ReplayStore:
    def __init__(self, path: Path | str) -> None:
        self.path = path
        try:
            if isinstance(path, Path):
                private_database(path)  # owner-only, and so are SQLite's side files
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the bundle replay store {path}: {exc}") from exc

    @classmethod
    def in_memory(cls) -> ReplayStore:
        return cls(":memory:")

    def last_version(self, name: str) -> int | None:
        row = self._db.execute("SELECT MAX(version) FROM accepted WHERE name = ?", (name,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def was_accepted(self, bundle_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM accepted WHERE id = ?", (bundle_id,)).fetchone() is not None

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM accepted").fetchone()[0])

    def check(self, *, bundle_id: str, name: str, version: int) -> None:
        """Raise unless a bundle with this id, name and version may be accepted now."""
        if self.was_accepted(bundle_id):
            raise ReplayedBundleError(
                f"bundle id {bundle_id} ({name} v{version}) was already accepted on this host",
                hint="a bundle runs once; to run the job again, rebuild it (new id), same or higher version",
            )
        last = self.last_version(name)
        if last is not None and version < last:
            raise VersionRollbackError(
                f"{name} v{version} is older than v{last}, already accepted on this host",
                hint="rebuild the bundle with version >= " + str(last),
            )

    def record(self, *, bundle_id: str, name: str, version: int, accepted_at: datetime) -> None:
        """Check again and remember the bundle, atomically."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self.check(bundle_id=bundle_id, name=name, version=version)
                self._db.execute(
                    "INSERT INTO accepted (id, name, version, accepted_at) VALUES (?, ?, ?, ?)",
                    (bundle_id, name, version, accepted_at.isoformat()),
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot record bundle {name} in {self.path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
