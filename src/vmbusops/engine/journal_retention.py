"""The journal's retention SQL: what it may forget, and forgetting it.

The policy (how long, and what else must stay) is :mod:`vmbusops.retention`'s; the connection and
its transactions are :class:`.journal.Journal`'s, which calls these functions inside them. Only a
*finished* job (a terminal state: success, failed, cancelled, timed out) is ever touched: an
interrupted job, or one whose owner is gone, is not finished and keeps everything it needs to be
resumed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from vmbusops.engine.states import TERMINAL

_FINISHED = tuple(sorted(s.value for s in TERMINAL))
_IN_FINISHED = ", ".join("?" * len(_FINISHED))
#: When a finished job finished (a job abandoned before it started may have no finish time).
_ENDED = "COALESCE(finished_at, started_at, created_at)"


@dataclass(frozen=True, slots=True, kw_only=True)
class Prunable:
    """What the journal holds that retention may remove, and what it must keep."""

    #: Finished jobs whose records are past keeping (deleted jobs among them), and how many records.
    record_jobs: tuple[int, ...]
    records: int
    #: Finished jobs past keeping altogether.
    delete_jobs: tuple[int, ...]
    #: The bundle folder of every job in the journal, and of those not finished (still needed).
    bundle_dirs: frozenset[str]
    bundle_dirs_needed: frozenset[str]


def prunable(
    db: sqlite3.Connection, *, records_before: float, jobs_before: float, keep_jobs: Collection[int]
) -> Prunable:
    finished = f"state IN ({_IN_FINISHED}) AND {_ENDED} < ?"
    # Only placeholders and fixed text are interpolated; every value is a bound parameter.
    record_jobs = [
        int(r[0])
        for r in db.execute(
            f"SELECT id FROM jobs WHERE pruned = 0 AND {finished} ORDER BY id",  # noqa: S608
            (*_FINISHED, records_before),
        )
    ]
    records = 0
    for job_id in record_jobs:
        records += int(
            db.execute("SELECT COALESCE(SUM(count), 0) FROM record_chunks WHERE job_id = ?", (job_id,)).fetchone()[0]
        )
    keep = set(keep_jobs)
    delete_jobs = [
        int(r[0])
        for r in db.execute(f"SELECT id FROM jobs WHERE {finished} ORDER BY id", (*_FINISHED, jobs_before))  # noqa: S608
        if int(r[0]) not in keep
    ]
    dirs = db.execute("SELECT bundle_dir, state FROM jobs WHERE bundle_dir IS NOT NULL").fetchall()
    return Prunable(
        record_jobs=tuple(record_jobs),
        records=records,
        delete_jobs=tuple(delete_jobs),
        bundle_dirs=frozenset(str(d) for d, _ in dirs),
        bundle_dirs_needed=frozenset(str(d) for d, state in dirs if state not in _FINISHED),
    )


def delete_records(db: sqlite3.Connection, job_id: int, batch: int) -> int:
    """The job's oldest records, about ``batch`` of them (whole chunks: the oldest always, then
    those that end within ``batch`` of it); how many went (0: none left, and the job says so)."""
    first = db.execute("SELECT MIN(n) FROM record_chunks WHERE job_id = ?", (job_id,)).fetchone()[0]
    if first is None:
        db.execute("UPDATE jobs SET pruned = 1 WHERE id = ?", (job_id,))
        return 0
    end = first + max(batch, 1)
    (removed,) = db.execute(
        "SELECT COALESCE(SUM(count), 0) FROM record_chunks WHERE job_id = ? AND n < ?", (job_id, end)
    ).fetchone()
    db.execute("DELETE FROM record_chunks WHERE job_id = ? AND n < ?", (job_id, end))
    return int(removed)


def delete_job(db: sqlite3.Connection, job_id: int) -> None:
    """The job, its runs and steps (its records went first, in batches); never an unfinished job."""
    row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if row is None or row[0] not in _FINISHED:
        return
    runs = "SELECT id FROM runs WHERE job_id = ?"
    db.execute("DELETE FROM record_chunks WHERE job_id = ?", (job_id,))
    db.execute("DELETE FROM receipts WHERE job_id = ?", (job_id,))
    db.execute(f"DELETE FROM steps WHERE run_id IN ({runs})", (job_id,))  # noqa: S608
    db.execute(f"DELETE FROM checkpoints WHERE run_id IN ({runs})", (job_id,))  # noqa: S608
    db.execute("DELETE FROM runs WHERE job_id = ?", (job_id,))
    db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))


def compact(db: sqlite3.Connection) -> None:
    """Give freed pages back to the disk: the file shrinks (a journal created with incremental
    auto-vacuum) and the WAL is emptied once no reader needs it."""
    # As a script: a statement stepped once (execute) frees one page; the script runs it to its end.
    db.executescript("PRAGMA incremental_vacuum;")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def journal_bytes(path: Path) -> int:
    """The journal's size on disk: the database file and its write-ahead log."""
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            total += part.stat().st_size
        except FileNotFoundError:
            pass
    return total
