"""The journal's tables, how a journal written by an older version is brought up to date, the
one UPDATE each state change is written with (:func:`update_sql`) and how records are numbered
and inserted (:func:`insert_records`).

Schema 4 keeps records in chunks (:mod:`.journal_records`): a row of ``record_chunks`` for
consecutive records of one run, keyed on ``(job_id, n)`` where ``n`` numbers a job's records 1, 2,
3... in the order they were journaled, so reading a job is a range scan of the primary key with a
cursor of one number (``n > cursor``), whatever the job's size or its number of runs.
``record_chunks_run`` finds a run's chunks, its highest ``seq``, and reads of one VM.

Tables added since are created when a journal is opened for writing (every statement of
:data:`SCHEMA` is ``CREATE ... IF NOT EXISTS``), so an older journal gains them empty: the
``receipts`` table (one signed receipt per finished run, :mod:`vmbusops.receipts`) came so, and
the ``checkpoints`` table (one row per guarded span of a run, :mod:`.guard`).

Older journals are rebuilt once by :func:`upgrade`, in one transaction. Schema 3 had a row per
record (``records``, keyed on ``(job_id, n)``): they are moved into chunks, grouped as a commit's
records are. Schema 2 keyed records on ``(run_id, seq)`` alone: they are first numbered per job in
the order schema 2 read them (by time), then moved as schema 3's. A journal of a newer schema than
:data:`SCHEMA_VERSION` is not opened (:func:`check_version`): this version would not see what the
newer one keeps, and what it wrote could clash with it.
"""

from __future__ import annotations

import itertools
import json
import operator
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from vmbusops.engine import journal_records
from vmbusops.engine.changes import Change, CheckpointChange, JobChange, PendingRecord, RunChange, StepChange
from vmbusops.engine.journal_records import StoredRecord
from vmbusops.errors import JournalError
from vmbusops.owner import Owner, owner_alive
from vmbusops.storage import add_missing_columns

SCHEMA_VERSION: Final = 4


_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    bundle_name      TEXT NOT NULL,
    bundle_version   INTEGER NOT NULL,
    bundle_id        TEXT NOT NULL,
    source           TEXT NOT NULL,
    manifest         TEXT NOT NULL,
    bundle_dir       TEXT,
    host             TEXT NOT NULL,
    state            TEXT NOT NULL,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    owner_pid        INTEGER,
    owner_started    TEXT,
    heartbeat_at     REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    pruned           INTEGER NOT NULL DEFAULT 0,
    enable_guest_services INTEGER NOT NULL DEFAULT 0,
    envelope         TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id           INTEGER NOT NULL REFERENCES jobs (id),
    vm               TEXT NOT NULL,
    state            TEXT NOT NULL,
    current_step     TEXT,
    started_at       REAL,
    finished_at      REAL,
    error            TEXT,
    records          INTEGER NOT NULL DEFAULT 0,
    excerpt          TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    UNIQUE (job_id, vm)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id      INTEGER NOT NULL REFERENCES runs (id),
    idx         INTEGER NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  REAL,
    finished_at REAL,
    error       TEXT,
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vm_leases (
    vm            TEXT PRIMARY KEY,
    run_id        INTEGER NOT NULL,
    owner_pid     INTEGER NOT NULL,
    owner_started TEXT NOT NULL,
    heartbeat_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS receipts (
    run_id     INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL,
    envelope   TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id      INTEGER NOT NULL,
    span        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    phase       TEXT NOT NULL,
    outcome     TEXT,
    production  INTEGER,
    reason      TEXT,
    planned_at  REAL,
    taken_at    REAL,
    restored_at REAL,
    removed_at  REAL,
    PRIMARY KEY (run_id, span)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_job ON runs (job_id);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""

#: Columns added after schema 1, added to an older journal when it is opened: (table, column, definition).
ADDED_COLUMNS: Final = (
    ("jobs", "enable_guest_services", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "envelope", "TEXT"),
    ("jobs", "submitter", "TEXT"),
    ("jobs", "left_out", "TEXT"),
    ("runs", "code", "TEXT"),
    ("steps", "code", "TEXT"),
    ("steps", "exit_code", "INTEGER"),
    ("runs", "waiting", "TEXT"),
    ("jobs", "start_by", "REAL"),
)


#: Schema 3's records table, a row per record: what schema 2's is rebuilt as, before its rows
#: move into chunks.
_RECORDS_V3 = """
CREATE TABLE records (
    job_id  INTEGER NOT NULL,
    n       INTEGER NOT NULL,
    run_id  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    step    TEXT,
    attempt INTEGER NOT NULL,
    stream  TEXT NOT NULL,
    time    REAL NOT NULL,
    content TEXT NOT NULL,
    PRIMARY KEY (job_id, n)
) WITHOUT ROWID;
CREATE UNIQUE INDEX records_run ON records (run_id, seq);
"""

#: Every statement is CREATE ... IF NOT EXISTS: safe to run by each process that opens the journal.
SCHEMA: Final = _TABLES + journal_records.TABLE


def check_version(db: sqlite3.Connection, path: object) -> None:
    """Refuse a journal that a newer vmbusops has brought past :data:`SCHEMA_VERSION`."""
    try:
        row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:
        return  # a new journal: no meta table yet
    if row is not None and str(row[0]).isdigit() and int(row[0]) > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {path} is schema {row[0]}, written by a newer vmbusops; this one reads"
            f" schema {SCHEMA_VERSION} and older",
            hint="run the newer vmbusops on this host (every vmbusops that shares the journal must be as new)",
        )


def upgrade(db: sqlite3.Connection) -> None:
    """Bring an older journal's tables to this version (inside the caller's write transaction)."""
    add_missing_columns(db, ADDED_COLUMNS)
    columns = {row[1] for row in db.execute("PRAGMA table_info(records)")}
    if columns and "n" not in columns:
        db.execute("DROP INDEX IF EXISTS records_run")
        db.execute("ALTER TABLE records RENAME TO records_v2")
        # Statement by statement: executescript would commit the caller's transaction.
        for statement in _RECORDS_V3.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO records (job_id, n, run_id, seq, step, attempt, stream, time, content)"
            " SELECT runs.job_id,"
            " row_number() OVER (PARTITION BY runs.job_id ORDER BY r.time, r.run_id, r.seq),"
            " r.run_id, r.seq, r.step, r.attempt, r.stream, r.time, r.content"
            " FROM records_v2 r JOIN runs ON runs.id = r.run_id"
        )
        db.execute("DROP TABLE records_v2")
    if columns:
        journal_records.upgrade_rows(db)


_job = operator.itemgetter(0)


def insert_records(db: sqlite3.Connection, records: Sequence[PendingRecord]) -> list[StoredRecord]:
    """Insert ``records``, each job's numbered in their order after the highest ``n`` the job has
    committed (inside the caller's write transaction, so that no other writer numbers between):
    the records as stored."""
    number = {
        job_id: itertools.count((db.execute(journal_records.LAST_N_OF_JOB, (job_id,)).fetchone()[0] or 0) + 1).__next__
        for job_id in set(map(_job, records))
    }
    stored: list[StoredRecord] = [
        (j, number[j](), run, seq, step, attempt, stream, at, content)
        for j, run, seq, step, attempt, stream, at, content in records
    ]
    journal_records.insert(db, stored)
    return stored


def take_vm_lease(db: sqlite3.Connection, vm: str, run_id: int, owner: Owner, now: float) -> int | None:
    """Take the VM for ``run_id`` (inside the caller's write transaction); None if taken, else
    the run id of the live holder."""
    key = vm.casefold()
    row = db.execute(
        "SELECT run_id, owner_pid, owner_started, heartbeat_at FROM vm_leases WHERE vm = ?", (key,)
    ).fetchone()
    if row is not None and row[0] != run_id and owner_alive(row[1], row[2], row[3], now=now):
        return int(row[0])
    db.execute(
        "INSERT OR REPLACE INTO vm_leases (vm, run_id, owner_pid, owner_started, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
        (key, run_id, owner.pid, owner.started, now),
    )
    return None


__all__ = [
    "ADDED_COLUMNS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "check_version",
    "insert_records",
    "take_vm_lease",
    "upgrade",
]


def update_sql(change: Change) -> tuple[str, list[Any]]:
    """The one UPDATE that writes ``change``: only the fields it sets."""
    sets: list[str] = []
    params: list[Any] = []

    def put(column: str, value: Any, expr: str = "?") -> None:
        if value is not None:
            sets.append(f"{column} = {expr}")
            params.append(value)

    match change:
        case CheckpointChange():
            return _checkpoint_sql(change)
        case JobChange():
            put("state", change.state.value)
            put("started_at", change.started_at, "COALESCE(started_at, ?)")
            put("finished_at", change.finished_at)
            put("error", change.error)
            where, keys = "jobs SET {} WHERE id = ?", [change.job_id]
        case RunChange():
            put("state", change.state.value if change.state is not None else None)
            sets += ["current_step = ?", "waiting = ?"]
            params += [change.current_step, change.waiting]
            put("records", change.records)
            put("error", change.error)
            put("code", change.code)
            put("started_at", change.started_at)
            put("finished_at", change.finished_at)
            put("excerpt", json.dumps(change.excerpt) if change.excerpt is not None else None)
            where, keys = "runs SET {} WHERE id = ?", [change.run_id]
        case StepChange():
            put("state", change.state.value)
            put("attempts", change.attempts)
            put("started_at", change.started_at)
            if change.clear:
                sets += ["finished_at = NULL", "error = NULL", "code = NULL", "exit_code = NULL"]
            put("finished_at", change.finished_at)
            put("error", change.error)
            put("code", change.code)
            put("exit_code", change.exit_code)
            where, keys = "steps SET {} WHERE run_id = ? AND idx = ?", [change.run_id, change.index]
    # Only fixed column names are interpolated; every value is a bound parameter.
    return "UPDATE " + where.format(", ".join(sets)), [*params, *keys]


def _checkpoint_sql(c: CheckpointChange) -> tuple[str, list[Any]]:
    """The row of a guarded span, created at its first phase and updated at every later one."""
    production = None if c.production is None else int(c.production)
    return (
        "INSERT INTO checkpoints (run_id, span, name, phase, outcome, production, reason, planned_at,"
        " taken_at, restored_at, removed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id, span) DO UPDATE SET name = excluded.name, phase = excluded.phase,"
        " outcome = COALESCE(excluded.outcome, outcome), production = COALESCE(excluded.production, production),"
        " reason = COALESCE(excluded.reason, reason), taken_at = COALESCE(excluded.taken_at, taken_at),"
        " restored_at = COALESCE(excluded.restored_at, restored_at),"
        " removed_at = COALESCE(excluded.removed_at, removed_at)",
        [c.run_id, c.span, c.name, c.phase, c.outcome, production, c.reason, c.planned_at, c.taken_at, c.restored_at, c.removed_at],
    )
