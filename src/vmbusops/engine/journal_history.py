"""The journal's history SQL: which jobs a filter picks, one VM's runs across jobs, and what an
interrupted job's rows must say so that they tell the truth afterwards.

Theory of operation
-------------------
A run's ``records`` column is written with its state changes, so a run that never ended normally
(its process interrupted, killed, or out of disk) keeps the count of its last state change while
the journal holds more records. A run's records carry ``seq`` 1, 2, 3... with no gap (see
:mod:`.journal`), so its last chunk's ``seq`` *is* its count: one probe of ``record_chunks_run``,
written down when a job is interrupted (:func:`interrupt_job`) and read for any run that has
not ended (:data:`~.journal_records.LAST_SEQ_OF_RUN`).

An interrupted job's duration ends when it stopped: when its owner marked it interrupted (Ctrl-C,
SIGTERM, the agent stopping), or, for an owner that died, at the last moment it was known to be
working (:data:`LAST_ALIVE`: its last heartbeat or its last committed record, whichever is later).
Readers never measure a job or run that is not active against the clock.

Filters are keyset pages on the job id (newest first): ``before`` is the id of the last job of
the previous page, so a page costs the same however deep it is and jobs created meanwhile never
shift it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from vmbusops.engine.journal_records import LAST_SEQ_OF_RUN, LAST_TIME_OF_JOB
from vmbusops.engine.states import ACTIVE, Event, Level, State, next_state

#: A column of ``jobs``: the last moment its owner is known to have worked on it (its heartbeat,
#: its start, its last committed record: one probe of the records' primary key).
LAST_ALIVE: Final = (
    "MAX(COALESCE(jobs.heartbeat_at, 0), COALESCE(jobs.started_at, 0),"
    f" COALESCE({LAST_TIME_OF_JOB}, 0))"
)


def interrupt_job(db: sqlite3.Connection, job_id: int, state: State, stopped_at: float | None) -> None:
    """Mark an active job, its active runs and their running steps interrupted (inside the caller's
    write transaction): each run's record count from its stored records, and ``stopped_at`` as
    the finish time of the job and of every run it interrupts."""
    new = next_state(Level.JOB, state, Event.INTERRUPT)
    db.execute(
        "UPDATE jobs SET state = ?, finished_at = COALESCE(?, finished_at) WHERE id = ?",
        (new.value, stopped_at, job_id),
    )
    for run_id, run_state in db.execute("SELECT id, state FROM runs WHERE job_id = ?", (job_id,)).fetchall():
        if State(run_state).active:
            records = db.execute(LAST_SEQ_OF_RUN, (run_id,)).fetchone()[0]
            db.execute(
                "UPDATE runs SET state = ?, records = ?,"
                " finished_at = CASE WHEN started_at IS NULL THEN NULL ELSE COALESCE(?, finished_at) END"
                " WHERE id = ?",
                (next_state(Level.RUN, State(run_state), Event.INTERRUPT).value, records, stopped_at, run_id),
            )
        for idx, step_state in db.execute(
            "SELECT idx, state FROM steps WHERE run_id = ? AND state IN (?, ?)",
            (run_id, State.IN_PROGRESS.value, State.DELAYED.value),
        ).fetchall():
            db.execute(
                "UPDATE steps SET state = ? WHERE run_id = ? AND idx = ?",
                (next_state(Level.STEP, State(step_state), Event.INTERRUPT).value, run_id, idx),
            )


def stopped_at(stored: State, owner_alive: bool, finished_at: float | None, heartbeat: float | None) -> float | None:
    """When a job or run stopped, as a reader should show it: None while it is active (it has
    not), its owner's last heartbeat if the owner died under it or it was interrupted without a
    time (an older journal), else the finish time written."""
    if stored.active:
        return None if owner_alive else heartbeat
    if finished_at is None and stored is State.INTERRUPTED:
        return heartbeat
    return finished_at


def step_shown(state: State, owner_alive: bool) -> State:
    """A step as :func:`interrupt_job` would leave it: running under a dead owner is interrupted."""
    if state in (State.IN_PROGRESS, State.DELAYED) and not owner_alive:
        return State.INTERRUPTED
    return state


def stored_states(shown: State) -> list[State]:
    """The stored states a reader may show as ``shown`` (an active one of a dead owner reads
    as interrupted until reconciled)."""
    return [shown, *ACTIVE] if shown is State.INTERRUPTED else [shown]


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """Which jobs a listing shows. ``state`` is the state a reader shows (an active job of a dead
    owner is ``interrupted``), so it is checked again on the views; the SQL only narrows."""

    vm: str | None = None
    state: State | None = None
    since: float | None = None
    submitter: str | None = None
    #: Keyset cursor: only jobs with a smaller id (the last id of the previous page).
    before: int | None = None


def job_where(f: JobFilter) -> tuple[str, list[Any]]:
    """The WHERE clause (possibly empty) and its parameters for ``f``."""
    clauses: list[str] = []
    params: list[Any] = []
    if f.before is not None:
        clauses.append("id < ?")
        params.append(f.before)
    if f.since is not None:
        clauses.append("created_at >= ?")
        params.append(f.since)
    if f.submitter is not None:
        clauses.append("submitter = ? COLLATE NOCASE")
        params.append(f.submitter)
    if f.vm is not None:
        clauses.append("EXISTS (SELECT 1 FROM runs WHERE runs.job_id = jobs.id AND runs.vm = ? COLLATE NOCASE)")
        params.append(f.vm)
    if f.state is not None:
        stored = stored_states(f.state)
        clauses.append(f"state IN ({','.join('?' * len(stored))})")
        params += [s.value for s in stored]
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


#: One VM's runs across jobs, newest job first, with what a history line shows of its job.
_VM_RUN_COLUMNS: Final = (
    "runs.id, runs.job_id, runs.vm, runs.state, runs.current_step, runs.started_at,"
    " runs.finished_at, runs.error, runs.records, runs.cancel_requested,"
    " jobs.bundle_name, jobs.bundle_version, jobs.submitter,"
    " jobs.owner_pid, jobs.owner_started, jobs.heartbeat_at, " + LAST_ALIVE + ", runs.code"
)
# Only fixed column names and the fixed LAST_ALIVE expression are joined in.
VM_RUNS: Final = f"SELECT {_VM_RUN_COLUMNS} FROM runs JOIN jobs ON jobs.id = runs.job_id WHERE runs.vm = ? COLLATE NOCASE"  # noqa: S608


def vm_runs_sql(*, since: float | None, before: int | None, states: Sequence[State] | None) -> tuple[str, list[Any]]:
    """:data:`VM_RUNS` narrowed (the VM's name is the first parameter, the caller's)."""
    sql = VM_RUNS
    params: list[Any] = []
    if since is not None:
        sql += " AND jobs.created_at >= ?"
        params.append(since)
    if before is not None:
        sql += " AND runs.job_id < ?"
        params.append(before)
    if states is not None:
        sql += f" AND runs.state IN ({','.join('?' * len(states))})"
        params += [s.value for s in states]
    return sql + " ORDER BY runs.job_id DESC LIMIT ?", params


__all__ = [
    "LAST_ALIVE",
    "VM_RUNS",
    "JobFilter",
    "interrupt_job",
    "job_where",
    "step_shown",
    "stopped_at",
    "stored_states",
    "vm_runs_sql",
]
