"""What this host has accepted before: bundle ids, and the highest version per bundle name.

A SQLite file (``$VMBUSOPS_HOME/bundles/accepted.sqlite``) with ``synchronous=FULL``, so an
acceptance that returned survives a power cut. Reading (:meth:`ReplayStore.last_version`,
:meth:`ReplayStore.was_accepted`, :meth:`ReplayStore.check`) never writes; ``bundle verify`` only
reads.

Theory of operation: acceptance and the job are one fact
--------------------------------------------------------
A bundle is used up only when the thing it was accepted for exists: a job in the journal, or a
schedule in the agent's schedule store. Those live in other files, so acceptance is two-phase:

1. :meth:`ReplayStore.reserve` re-checks and inserts the bundle *held* by the accepting process
   (pid and start time, :mod:`vmbusops.owner`), in one immediate transaction, so two processes
   accepting the same bundle at once cannot both succeed;
2. the process creates the job or schedule, then :meth:`ReplayStore.confirm` drops the holder:
   the bundle is accepted for good. If it could not create it, :meth:`ReplayStore.release` deletes
   the row: the bundle may be run again, and its version is no floor.

A process killed between the two leaves a row held by a dead process. Such a row counts only if
``has_fact(bundle_id)`` (given by the store's opener: "does a job or schedule of this bundle
exist?") says its job or schedule was created; otherwise it is as if never written, and the next
:meth:`ReplayStore.reserve` deletes it (or, if the fact exists, confirms it). Without
``has_fact`` such a row counts, which refuses rather than risks running a bundle twice.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import TracebackType

from vmbusops.bundle.errors import ReplayedBundleError, VersionRollbackError
from vmbusops.errors import JournalError
from vmbusops.owner import Owner, owner_alive
from vmbusops.storage import add_missing_columns, cannot_write, private_database, rollback_quietly

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accepted (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL,
    accepted_at TEXT NOT NULL,
    holder_pid     INTEGER,
    holder_started TEXT
);
CREATE INDEX IF NOT EXISTS accepted_name ON accepted (name, version);
"""
#: Columns added since the first schema: a row with a holder is a reservation, not yet a fact.
_ADDED_COLUMNS = (("accepted", "holder_pid", "INTEGER"), ("accepted", "holder_started", "TEXT"))

HasFact = Callable[[str], bool]
"""Whether a job or schedule of this bundle id exists (settles a dead process's reservation)."""

_Row = tuple[str, str, int, int | None, str | None]


def refuse_replay(*, bundle_id: str, name: str, version: int, accepted: bool, last: int | None, where: str) -> None:
    """The replay rule once what was accepted before is known: refused if this bundle id was
    (``accepted``), or if its version is below ``last``, the highest accepted under its name;
    ``where`` says where that was ("on this host", "by the fleet")."""
    if accepted:
        raise ReplayedBundleError(
            f"bundle id {bundle_id} ({name} v{version}) was already accepted {where}",
            hint="a bundle runs once; to run the job again, rebuild it (new id), same or higher version",
        )
    if last is not None and version < last:
        raise VersionRollbackError(
            f"{name} v{version} is older than v{last}, already accepted {where}",
            hint="rebuild the bundle with version >= " + str(last),
        )


class ReplayStore:
    def __init__(self, path: Path | str, *, has_fact: HasFact | None = None) -> None:
        self.path = path
        self.has_fact = has_fact
        try:
            if isinstance(path, Path):
                private_database(path)  # owner-only, and so are SQLite's side files
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            add_missing_columns(self._db, _ADDED_COLUMNS)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open the bundle replay store {path}: {exc}") from exc

    @classmethod
    def in_memory(cls, *, has_fact: HasFact | None = None) -> ReplayStore:
        return cls(":memory:", has_fact=has_fact)

    # ------------------------------------------------------------------ reading
    def _rows(self, where: str, param: str) -> list[_Row]:
        # Only the fixed column name is interpolated; the value is a bound parameter.
        sql = f"SELECT id, name, version, holder_pid, holder_started FROM accepted WHERE {where} = ?"  # noqa: S608
        return [(r[0], r[1], int(r[2]), r[3], r[4]) for r in self._db.execute(sql, (param,)).fetchall()]

    def _counts(self, row: _Row) -> bool:
        """A row counts if it is accepted, held by a live process, or its job/schedule exists."""
        _, _, _, pid, started = row
        if pid is None or owner_alive(pid, started, None):
            return True
        return self.has_fact is None or self.has_fact(row[0])

    def last_version(self, name: str) -> int | None:
        versions = [row[2] for row in self._rows("name", name) if self._counts(row)]
        return max(versions, default=None)

    def was_accepted(self, bundle_id: str) -> bool:
        return any(self._counts(row) for row in self._rows("id", bundle_id))

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM accepted").fetchone()[0])

    def check(self, *, bundle_id: str, name: str, version: int) -> None:
        """Raise unless a bundle with this id, name and version may be accepted now."""
        for row in self._rows("id", bundle_id):
            if not self._counts(row):
                continue
            pid, started = row[3], row[4]
            if pid is not None and owner_alive(pid, started, None):
                raise ReplayedBundleError(
                    f"bundle id {bundle_id} ({name} v{version}) is being accepted by process {pid}",
                    hint="a bundle runs once; see its job with: vmbusops jobs",
                )
            refuse_replay(bundle_id=bundle_id, name=name, version=version, accepted=True, last=None, where="on this host")
        last = self.last_version(name)
        refuse_replay(bundle_id=bundle_id, name=name, version=version, accepted=False, last=last, where="on this host")

    # ------------------------------------------------------------------ writing
    def _transaction(self, what: str, fn: Callable[[], object]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fn()
                self._db.execute("COMMIT")
            except BaseException:
                rollback_quietly(self._db)  # never in place of the error that got us here
                raise
        except sqlite3.Error as exc:
            if exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise cannot_write("the bundle replay store", self.path, exc) from exc
            raise JournalError(f"cannot {what} in {self.path}: {exc}") from exc

    def _settle_dead(self, bundle_id: str, name: str) -> None:
        """Reservations of dead processes on this id or name: confirmed if their fact exists, else gone."""
        for row in {*self._rows("id", bundle_id), *self._rows("name", name)}:
            pid, started = row[3], row[4]
            if pid is None or owner_alive(pid, started, None) or self.has_fact is None:
                continue
            if self.has_fact(row[0]):
                self._db.execute("UPDATE accepted SET holder_pid = NULL, holder_started = NULL WHERE id = ?", (row[0],))
            else:
                self._db.execute("DELETE FROM accepted WHERE id = ?", (row[0],))

    def reserve(self, *, bundle_id: str, name: str, version: int, accepted_at: datetime, holder: Owner) -> None:
        """Check again and hold the bundle for ``holder`` until it confirms or releases it, atomically."""

        def reserve() -> None:
            self._settle_dead(bundle_id, name)
            self.check(bundle_id=bundle_id, name=name, version=version)
            self._db.execute(
                "INSERT INTO accepted (id, name, version, accepted_at, holder_pid, holder_started)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (bundle_id, name, version, accepted_at.isoformat(), holder.pid, holder.started),
            )

        self._transaction(f"record bundle {name}", reserve)

    def confirm(self, bundle_id: str) -> None:
        """The bundle's job or schedule exists: it is accepted for good."""
        self._transaction(
            f"confirm bundle {bundle_id}",
            lambda: self._db.execute(
                "UPDATE accepted SET holder_pid = NULL, holder_started = NULL WHERE id = ?", (bundle_id,)
            ),
        )

    def release(self, bundle_id: str, holder: Owner) -> None:
        """No job or schedule could be made of the bundle: forget it (only ``holder``'s reservation)."""
        self._transaction(
            f"release bundle {bundle_id}",
            lambda: self._db.execute(
                "DELETE FROM accepted WHERE id = ? AND holder_pid = ? AND holder_started = ?",
                (bundle_id, holder.pid, holder.started),
            ),
        )

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ReplayStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
