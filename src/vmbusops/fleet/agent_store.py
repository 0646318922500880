"""What a fleet agent remembers of the work it was given: :class:`FleetStore`.

A small SQLite file beside the agent's journal (``fleet.sqlite``), with two tables:

- ``fleet_runs``: one row per dispatch taken, keyed by (fleet job, fleet run, epoch): the local
  job that runs it, its state here, the process that took it, and the ``n`` of its last batch
  (written when the run ends here). A dispatch whose key is known is never run again (the work stream may deliver
  a message twice: after an ack that was lost, or a controller that re-published it);
- ``fleet_bundles``: bundle id -> the one fleet job it may serve on this host (replay: a bundle
  serves every run of one fleet job, never a second job).

States of a row: ``accepted`` (taken, its local job being made), ``running``, ``done``,
``refused`` (the agent's own verification refused the bundle; nothing ran), ``stale`` (left
running by an earlier agent process: not resumed here, the controller dispatches it again with a
new epoch once it sees this process's boot id).

Durability: the file is in WAL mode with ``synchronous=NORMAL``, so a committed write survives
the agent process being killed at any instant (as the engine's journal does); only a power cut or
an OS crash may take the last writes back. :meth:`FleetStore.take` alone is written with
``synchronous=FULL`` (synced before it returns): it is what keeps a dispatch delivered again from
running twice, so it must hold even then. The other writes may be lost with the OS without harm:
a run's state and local job (``running``) are what a later process marks ``stale`` (a row left
``accepted`` is marked so too, and a fleet job's local job refuses ``vmbusops jobs resume`` by its
source anyway); ``done`` and ``last_n`` only tell a later process the run needs nothing; a bundle's
binding to its job is also recorded, durably, in the host's replay store at the job's first run.

Every call blocks; the agent takes a dispatch and records ended runs in a worker thread, and
makes the others (a run's local job as it is created, refusals, stale rows) on its trio thread.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmbusops.errors import JournalError
from vmbusops.owner import Owner
from vmbusops.storage import open_wal_database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_runs (
    job        INTEGER NOT NULL,
    run        INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    vm         TEXT NOT NULL,
    local_job  INTEGER,
    state      TEXT NOT NULL,
    last_n     INTEGER NOT NULL DEFAULT 0,
    owner_pid  INTEGER NOT NULL,
    owner_started TEXT NOT NULL,
    PRIMARY KEY (job, run, epoch)
);
CREATE INDEX IF NOT EXISTS fleet_runs_local ON fleet_runs (local_job);
CREATE TABLE IF NOT EXISTS fleet_bundles (
    bundle_id  TEXT PRIMARY KEY,
    job        INTEGER NOT NULL
);
"""

ACCEPTED = "accepted"
RUNNING = "running"
DONE = "done"
REFUSED = "refused"
STALE = "stale"


@dataclass(frozen=True, slots=True)
class FleetRunRow:
    job: int
    run: int
    epoch: int
    vm: str
    local_job: int | None
    state: str
    last_n: int


def fleet_store_path(journal_path: Path) -> Path:
    return journal_path.with_name("fleet.sqlite")


class FleetStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_wal_database(path, _SCHEMA, what="the fleet agent's store")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return list(self._db.execute(sql, params).fetchall())
            except sqlite3.Error as exc:
                raise JournalError(f"the fleet agent's store {self.path} cannot be used: {exc}") from exc

    # ------------------------------------------------------------------ runs
    def get(self, job: int, run: int, epoch: int) -> FleetRunRow | None:
        rows = self._run(
            "SELECT job, run, epoch, vm, local_job, state, last_n FROM fleet_runs"
            " WHERE job = ? AND run = ? AND epoch = ?",
            (job, run, epoch),
        )
        return _row(rows[0]) if rows else None

    def latest_epoch(self, job: int, run: int) -> int:
        rows = self._run("SELECT COALESCE(MAX(epoch), 0) FROM fleet_runs WHERE job = ? AND run = ?", (job, run))
        return int(rows[0][0])

    def taken(self, job: int, run: int, epoch: int) -> bool:
        """Whether this dispatch, or a later epoch of its run, was taken here before."""
        return self.latest_epoch(job, run) >= epoch

    def take(self, job: int, run: int, epoch: int, vm: str, owner: Owner) -> bool:
        """Record that this process takes the dispatch, synced to disk; False if it was taken
        before (by anyone)."""
        with self._lock:
            try:
                self._db.execute("PRAGMA synchronous=FULL")
                try:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO fleet_runs (job, run, epoch, vm, state, owner_pid, owner_started)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (job, run, epoch, vm, ACCEPTED, owner.pid, owner.started),
                    )
                finally:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise JournalError(f"the fleet agent's store {self.path} cannot be written: {exc}") from exc
            return cur.rowcount == 1

    def set_state(self, job: int, run: int, epoch: int, state: str, *, local_job: int | None = None) -> None:
        if local_job is None:
            self._run("UPDATE fleet_runs SET state = ? WHERE job = ? AND run = ? AND epoch = ?", (state, job, run, epoch))
        else:
            self._run(
                "UPDATE fleet_runs SET state = ?, local_job = ? WHERE job = ? AND run = ? AND epoch = ?",
                (state, local_job, job, run, epoch),
            )

    def done(self, ended: list[tuple[int, int, int, int]]) -> None:
        """Runs (job, run, epoch, last batch n) whose last batch was published: one transaction."""
        if not ended:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    self._db.executemany(
                        "UPDATE fleet_runs SET state = ?, last_n = ? WHERE job = ? AND run = ? AND epoch = ?",
                        [(DONE, n, job, run, epoch) for job, run, epoch, n in ended],
                    )
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise JournalError(f"the fleet agent's store {self.path} cannot be written: {exc}") from exc

    def forget(self, job: int, run: int, epoch: int) -> None:
        """The dispatch was taken but its local job could not be made: it may be taken again."""
        self._run(
            "DELETE FROM fleet_runs WHERE job = ? AND run = ? AND epoch = ? AND local_job IS NULL", (job, run, epoch)
        )

    def left_by_others(self, owner: Owner) -> list[FleetRunRow]:
        """Rows an earlier process took and did not finish (``accepted`` or ``running``)."""
        rows = self._run(
            "SELECT job, run, epoch, vm, local_job, state, last_n FROM fleet_runs"
            " WHERE state IN (?, ?) AND NOT (owner_pid = ? AND owner_started = ?)",
            (ACCEPTED, RUNNING, owner.pid, owner.started),
        )
        return [_row(r) for r in rows]

    def is_fleet_job(self, local_job: int) -> bool:
        return bool(self._run("SELECT 1 FROM fleet_runs WHERE local_job = ?", (local_job,)))

    # ------------------------------------------------------------------ bundles
    def bind_bundle(self, bundle_id: str, job: int) -> int:
        """Bind ``bundle_id`` to fleet ``job`` unless it is bound already; the job it serves."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR IGNORE INTO fleet_bundles (bundle_id, job) VALUES (?, ?)", (bundle_id, job)
                )
                row = self._db.execute("SELECT job FROM fleet_bundles WHERE bundle_id = ?", (bundle_id,)).fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"the fleet agent's store {self.path} cannot be written: {exc}") from exc
        return int(row[0])

    def unbind_bundle(self, bundle_id: str, job: int) -> None:
        self._run("DELETE FROM fleet_bundles WHERE bundle_id = ? AND job = ?", (bundle_id, job))

    def bundle_job(self, bundle_id: str) -> int | None:
        rows = self._run("SELECT job FROM fleet_bundles WHERE bundle_id = ?", (bundle_id,))
        return int(rows[0][0]) if rows else None


def _row(r: tuple[Any, ...]) -> FleetRunRow:
    job, run, epoch, vm, local_job, state, last_n = r
    return FleetRunRow(
        job=int(job),
        run=int(run),
        epoch=int(epoch),
        vm=str(vm),
        local_job=None if local_job is None else int(local_job),
        state=str(state),
        last_n=int(last_n),
    )


__all__ = ["ACCEPTED", "DONE", "REFUSED", "RUNNING", "STALE", "FleetRunRow", "FleetStore", "fleet_store_path"]
