"""The controller's journal: the agent's journal (same file layout, same schema, same readers)
plus the fleet's own bookkeeping tables, written in the same transactions.

The fleet tables are the controller's alone (an agent's journal never has them), so they are
created here, ``IF NOT EXISTS``, beside the agent's schema and outside its version number:

- ``fleet_state``: ``last_seq`` (the last LOG stream sequence applied) and counters;
- ``fleet_jobs``: a fleet job's submission id and bundle digest (a submission is applied once);
- ``fleet_runs``: per run, the host and VM id it is placed on, its current epoch, the ``n`` of the
  last batch applied in that epoch, and whether it waits for its VM to be placed (``waiting``:
  ``lost``/``moved``, or NULL).

:meth:`FleetJournal.transaction` gives :mod:`.projection` one write transaction for a LOG
message's effects and its sequence, which is what makes the projection exactly-once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vmbusops.engine.journal import Journal
from vmbusops.engine.states import ACTIVE, State
from vmbusops.errors import JournalError
from vmbusops.owner import Owner

FLEET_SCHEMA = """
CREATE TABLE IF NOT EXISTS fleet_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS fleet_jobs (
    job_id     INTEGER PRIMARY KEY,
    submission TEXT NOT NULL UNIQUE,
    bundle     TEXT NOT NULL,
    log_seq    INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_runs (
    run_id  INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL,
    idx     INTEGER NOT NULL,
    vm_id   TEXT NOT NULL,
    host    TEXT NOT NULL,
    epoch   INTEGER NOT NULL DEFAULT 0,
    last_n  INTEGER NOT NULL DEFAULT 0,
    waiting TEXT
);
CREATE INDEX IF NOT EXISTS fleet_runs_job ON fleet_runs (job_id);
"""


@dataclass(frozen=True, slots=True)
class FleetRun:
    """A run as the projection holds it (what the planner decides from)."""

    job_id: int
    run_id: int
    idx: int
    vm: str
    vm_id: str
    host: str
    epoch: int
    last_n: int
    waiting: str | None
    state: State
    cancel_requested: bool

    @property
    def dispatched(self) -> bool:
        """Sent to a host that has not been judged gone since (its batches are awaited)."""
        return self.epoch > 0 and self.waiting is None

    @property
    def started(self) -> bool:
        """Its host has reported on it in this epoch."""
        return self.last_n > 0


@dataclass(frozen=True, slots=True)
class FleetJob:
    job_id: int
    submission: str
    bundle: str
    state: State
    manifest: str
    cancel_requested: bool
    runs: tuple[FleetRun, ...]


class FleetJournal(Journal):
    """The controller's journal file: :class:`Journal` and the fleet tables."""

    def __init__(self, path: Path | str | None = None, *, readonly: bool = False) -> None:
        super().__init__(path, readonly=readonly)
        if not readonly:
            try:
                with self._lock:
                    self._db.executescript(FLEET_SCHEMA)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot open the fleet tables of {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One immediate write transaction (committed on success, rolled back on an error)."""
        with self._write() as db:
            yield db

    def last_seq(self) -> int:
        row = self._read_tuples("SELECT value FROM fleet_state WHERE key = 'last_seq'")
        return int(row[0][0]) if row else 0

    def counter(self, key: str) -> int:
        row = self._read_tuples("SELECT value FROM fleet_state WHERE key = ?", (key,))
        return int(row[0][0]) if row else 0

    def adopt(self, owner: Owner, now: float) -> None:
        """This controller process owns every active fleet job (readers judge a job's liveness
        by its owner); not part of the projection, which is the same on every controller."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET owner_pid = ?, owner_started = ?, heartbeat_at = ?"
                " WHERE state IN (?, ?, ?) AND id IN (SELECT job_id FROM fleet_jobs)",
                (owner.pid, owner.started, now, *(s.value for s in ACTIVE)),
            )

    def active_jobs(self) -> list[FleetJob]:
        """Every fleet job that has not ended, with its runs, oldest first."""
        ids = [
            int(r[0])
            for r in self._read_tuples(
                "SELECT id FROM jobs WHERE state IN (?, ?, ?) AND id IN (SELECT job_id FROM fleet_jobs)"
                " ORDER BY id",
                [s.value for s in ACTIVE],
            )
        ]
        return [j for j in (self.fleet_job(i) for i in ids) if j is not None]

    def fleet_job(self, job_id: int) -> FleetJob | None:
        head = self._read_tuples(
            "SELECT f.job_id, f.submission, f.bundle, j.state, j.manifest, j.cancel_requested"
            " FROM fleet_jobs f JOIN jobs j ON j.id = f.job_id WHERE f.job_id = ?",
            (job_id,),
        )
        if not head:
            return None
        h = head[0]
        return FleetJob(
            job_id=int(h[0]), submission=h[1], bundle=h[2], state=State(h[3]), manifest=h[4],
            cancel_requested=bool(h[5]), runs=tuple(self.fleet_runs(job_id)),
        )  # fmt: skip

    def fleet_runs(self, job_id: int) -> list[FleetRun]:
        rows = self._read_tuples(
            "SELECT r.job_id, r.id, f.idx, r.vm, f.vm_id, f.host, f.epoch, f.last_n, f.waiting, r.state,"
            " r.cancel_requested FROM runs r JOIN fleet_runs f ON f.run_id = r.id WHERE r.job_id = ?"
            " ORDER BY f.idx",
            (job_id,),
        )
        return [
            FleetRun(
                job_id=int(r[0]), run_id=int(r[1]), idx=int(r[2]), vm=r[3], vm_id=r[4], host=r[5],
                epoch=int(r[6]), last_n=int(r[7]), waiting=r[8], state=State(r[9]), cancel_requested=bool(r[10]),
            )
            for r in rows
        ]

    def job_of_submission(self, submission: str) -> int | None:
        row = self._read_tuples("SELECT job_id FROM fleet_jobs WHERE submission = ?", (submission,))
        return int(row[0][0]) if row else None

    def run_starts(self, run_ids: list[int]) -> dict[int, tuple[tuple[str, ...], tuple[int, ...], int]]:
        """:meth:`run_start` of each run."""
        return {i: self.run_start(i) for i in run_ids}

    def run_start(self, run_id: int) -> tuple[tuple[str, ...], tuple[int, ...], int]:
        """Where a run stands, for its dispatch: its steps' states and attempts, its next seq."""
        steps = self._read_tuples("SELECT state, attempts FROM steps WHERE run_id = ? ORDER BY idx", (run_id,))
        return (
            tuple(str(s[0]) for s in steps),
            tuple(int(s[1]) for s in steps),
            self.next_seq(run_id),
        )


__all__ = ["FLEET_SCHEMA", "FleetJob", "FleetJournal", "FleetRun"]
