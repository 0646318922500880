"""The durable journal: jobs, runs, steps and every record, in SQLite.

Theory of operation
-------------------
One file, ``$VMBUSOPS_HOME/journal/journal.sqlite``, in WAL mode: readers (``vmbusops jobs``,
``vmbusops logs -f``) never block the writer, and a committed transaction survives the writing
process being killed at any instant (``synchronous=NORMAL`` in WAL mode loses nothing on a process
crash; only a power cut can take the last transactions back, never tear one). Several processes
may share the file; every write is one ``BEGIN IMMEDIATE`` transaction.

What is true after any crash, because of how writes are grouped:

* records of a run carry ``seq`` 1, 2, 3... with no gap: the one process that holds the run's VM
  lease numbers its records from the journal's highest committed ``seq``, so records lost with a
  crash (never committed) leave no hole, and none is numbered twice;
* records of a job carry ``n`` 1, 2, 3... in the order they were committed, numbered inside the
  writing transaction from the job's highest committed ``n``: ``(job_id, n)`` is the primary key
  (of the chunks records are stored in, :mod:`.journal_records`), so a reader pages through a job
  with one comparison (``n > cursor``), never a sort, and a follower's position in a job is one
  number (see :mod:`.journal_schema`);
* a step is marked ``success`` in the same transaction as (after) its last records, and the engine
  does not start the next step before that commit; so a step the journal calls finished has all
  its records, and it is never run again unless it says it is idempotent;
* a job names its owner (pid and process start time, see :mod:`vmbusops.owner`) and the owner refreshes a
  heartbeat; readers show the active runs of a dead owner as ``interrupted``, and
  :meth:`Journal.reconcile` writes that down;
* a VM lease (``vm_leases``) names the run that may touch the VM; it is taken in one immediate
  transaction that checks the current holder's liveness, so two processes never hold one VM.

All methods block; the engine calls them from a worker thread through :class:`.writer.JournalWriter`.
One connection is shared by the threads of a process, guarded by a lock.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from vmbusops.engine import journal_records, journal_retention, journal_schema
from vmbusops.engine.changes import Change, PendingRecord
from vmbusops.engine.journal_history import (
    LAST_ALIVE,
    JobFilter,
    interrupt_job,
    job_where,
    step_shown,
    stopped_at,
    stored_states,
    vm_runs_sql,
)
from vmbusops.engine.journal_records import StoredRecord
from vmbusops.engine.journal_retention import Prunable
from vmbusops.engine.journal_rows import (
    CHECKPOINTS_OF_RUN,
    CheckpointView,
    JobView,
    LeftOut,
    RecordView,
    RunView,
    StepView,
    VmRunView,
    left_out_of,
)
from vmbusops.engine.journal_schema import SCHEMA, SCHEMA_VERSION, check_version, update_sql, upgrade
from vmbusops.engine.states import State
from vmbusops.errors import JobStateError, JournalError, NoSuchJobError
from vmbusops.home import home_path
from vmbusops.owner import Owner, owner_alive
from vmbusops.storage import UntilCommit, cannot_write, private_database, rollback_quietly

T = TypeVar("T")

#: The page a reader of a whole job asks for (``vmbusops logs``): a page costs its records' decoding,
#: about 5 us each, so 2,000 keep every page near 10 ms whatever the job's size, while the query
#: per page (one seek on the key) stays negligible beside it.
READ_PAGE: Final = 2000


class JournalBusy(JournalError):
    """Another process holds the journal's write lock (only raised by ``without_waiting``)."""


def journal_path() -> Path:
    return home_path("journal", "journal.sqlite")


class Journal:
    """One process's connection to the journal file."""

    def __init__(
        self, path: Path | str | None = None, *, readonly: bool = False, max_mb: float | None = None
    ) -> None:
        """Open (creating if needed) the journal; ``max_mb`` caps the database file's size
        (``[retention] journal_max_mb``): a write past it fails as a full disk would."""
        self.path = Path(path) if path is not None else journal_path()
        self._lock = threading.Lock()
        self._no_wait = threading.local()
        self._limit = f"[retention] journal_max_mb = {max_mb:g}" if max_mb else None
        #: A read-only connection's jobs' run-state counts, kept while no connection commits (see
        #: :meth:`_run_state_counts`); a writing connection's own commits would not say so.
        self._counts: UntilCommit[int, list[tuple[Any, ...]]] | None = UntilCommit() if readonly else None
        try:
            private_database(self.path)  # owner-only, and so are the -wal and -shm files
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            self._db.execute("PRAGMA busy_timeout=30000")
            # Before the first table exists, so that pruning can give pages back to the disk. Only
            # then: SQLite writes the mode into the file's header whenever it is set, and opening
            # a journal whose log holds commits not yet copied back must not need a page (a
            # full disk would refuse even `vmbusops jobs`).
            if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                self._db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            check_version(self._db, self.path)
            if not readonly:
                self._db.executescript(SCHEMA)
                with self._write() as db:
                    upgrade(db)
                    # Written only when it changes: opening a journal on a full disk must not need a page.
                    db.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema', ?)"
                        " ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value != excluded.value",
                        (str(SCHEMA_VERSION),),
                    )
            if max_mb:
                # After any upgrade: moving an older journal's records needs room for both copies
                # for a moment, and a journal its cap cannot open would stop the agent for good.
                page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
                self._db.execute(f"PRAGMA max_page_count={max(1, int(max_mb * 2**20) // page_size)}")
        except (sqlite3.Error, OSError) as exc:
            if isinstance(exc, sqlite3.Error) and exc.sqlite_errorcode == sqlite3.SQLITE_FULL:
                raise self._cannot_write(exc) from exc
            raise JournalError(f"cannot open the journal {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ plumbing
    def without_waiting(self, fn: Callable[..., T], *args: Any) -> T:
        """Call a journal method, raising JournalBusy instead of waiting for another process.

        A write waits only at its ``BEGIN IMMEDIATE``, before it has changed anything, so a
        JournalBusy leaves the journal as it was and the same call can be made again with
        waiting allowed (the writer does that in a worker thread).
        """
        self._no_wait.active = True
        try:
            return fn(*args)
        finally:
            self._no_wait.active = False

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One immediate transaction, committed on success, rolled back on any exception."""
        with self._lock:
            no_wait = getattr(self._no_wait, "active", False)
            try:
                if no_wait:
                    self._db.execute("PRAGMA busy_timeout=0")
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                finally:
                    if no_wait:
                        self._db.execute("PRAGMA busy_timeout=30000")
            except sqlite3.OperationalError as exc:
                if no_wait and exc.sqlite_errorcode in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise JournalBusy(f"the journal {self.path} is busy") from exc
                raise self._cannot_write(exc) from exc
            except sqlite3.Error as exc:
                raise self._cannot_write(exc) from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback_quietly(self._db)
                raise self._cannot_write(exc) from exc
            except BaseException:
                rollback_quietly(self._db)
                raise

    def _cannot_write(self, exc: sqlite3.Error) -> JournalError:
        return cannot_write("the journal", self.path, exc, limit=self._limit)

    def _read_tuples(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise JournalError(f"the journal {self.path} cannot be read: {exc}") from exc

    def _run_state_counts(self, job_id: int) -> list[tuple[Any, ...]]:
        """(stored state, runs in it) of a job's runs. A polled job's hundreds of runs are not
        grouped again while SQLite's ``data_version`` says no other connection has committed
        since they were (a count read after that check is at least as new as it)."""
        grouped = "SELECT state, COUNT(*) FROM runs WHERE job_id = ? GROUP BY state"
        if self._counts is None:
            return self._read_tuples(grouped, (job_id,))
        with self._lock:
            try:
                got = self._counts.get(self._db, job_id, lambda: self._db.execute(grouped, (job_id,)).fetchall())
            except sqlite3.Error as exc:
                raise JournalError(f"the journal {self.path} cannot be read: {exc}") from exc
        return got or []

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                cur = self._db.execute(sql, params)
                cur.row_factory = sqlite3.Row
                return list(cur.fetchall())
            except sqlite3.Error as exc:
                raise JournalError(f"the journal {self.path} cannot be read: {exc}") from exc

    # ------------------------------------------------------------------ jobs
    def create_job(
        self,
        *,
        bundle_name: str,
        bundle_version: int,
        bundle_id: str,
        source: str,
        manifest: str,
        bundle_dir: str | None,
        enable_guest_services: bool,
        envelope: str | None,
        submitter: str | None = None,
        start_by: float | None = None,
        host: str,
        vms: Sequence[str],
        left_out: Sequence[LeftOut] = (),
        steps: Sequence[tuple[str, str]],
        owner: Owner,
        now: float,
    ) -> tuple[int, dict[str, int]]:
        """A new pending job with a pending run per VM and a pending step per (run, step); ``left_out``
        are VMs its targets selected that it does not touch, with why (:mod:`.targets`); no run of it
        starts after ``start_by`` (epoch seconds), if given, resumed or not."""
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO jobs (bundle_name, bundle_version, bundle_id, source, manifest, bundle_dir,"
                " enable_guest_services, envelope, submitter, host, state, created_at, owner_pid, owner_started,"
                " heartbeat_at, left_out, start_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    bundle_name, bundle_version, bundle_id, source, manifest, bundle_dir,
                    int(enable_guest_services), envelope, submitter, host, State.PENDING.value, now, owner.pid,
                    owner.started, now, json.dumps([lo.to_json() for lo in left_out]) if left_out else None,
                    start_by,
                ),
            )  # fmt: skip
            job_id = int(cur.lastrowid or 0)
            runs: dict[str, int] = {}
            for vm in vms:
                run = db.execute(
                    "INSERT INTO runs (job_id, vm, state) VALUES (?, ?, ?)", (job_id, vm, State.PENDING.value)
                )
                run_id = int(run.lastrowid or 0)
                runs[vm] = run_id
                db.executemany(
                    "INSERT INTO steps (run_id, idx, name, kind, state) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, i, name, kind, State.PENDING.value) for i, (name, kind) in enumerate(steps)],
                )
        return job_id, runs

    def claim_job(self, job_id: int, owner: Owner, now: float) -> None:
        """Make ``owner`` the job's owner (resuming it); refused while another live owner holds it."""
        with self._write() as db:
            row = db.execute(
                "SELECT owner_pid, owner_started, heartbeat_at FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
            if row is None:
                raise NoSuchJobError(f"no job {job_id} in the journal", hint="list jobs with: vmbusops jobs")
            pid, started, beat = row
            if (pid, started) != (owner.pid, owner.started) and owner_alive(pid, started, beat, now=now):
                raise JobStateError(
                    f"job {job_id} is owned by the running process {pid}",
                    hint="wait for it to finish, or cancel it with: vmbusops jobs cancel " + str(job_id),
                )
            db.execute(
                "UPDATE jobs SET owner_pid = ?, owner_started = ?, heartbeat_at = ? WHERE id = ?",
                (owner.pid, owner.started, now, job_id),
            )

    def apply(
        self, records: Sequence[PendingRecord], changes: Sequence[Change], released: Sequence[tuple[str, int]] = ()
    ) -> list[StoredRecord]:
        """Records, then state changes, in one transaction: the records as stored, numbered per
        job; the VM leases ``released`` (VM, run) go in the same transaction, after the changes."""
        if not records and not changes and not released:
            return []
        with self._write() as db:
            stored = journal_schema.insert_records(db, records) if records else []
            for change in changes:
                db.execute(*update_sql(change))
            if released:
                db.executemany(
                    "DELETE FROM vm_leases WHERE vm = ? AND run_id = ?", [(vm.casefold(), r) for vm, r in released]
                )
        return stored

    def next_seq(self, run_id: int) -> int:
        row = self._read(journal_records.LAST_SEQ_OF_RUN, (run_id,))
        return int(row[0][0]) + 1

    def heartbeat(self, job_ids: Iterable[int], owner: Owner, now: float) -> None:
        ids = list(job_ids)
        with self._write() as db:
            db.executemany(
                "UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND owner_pid = ? AND owner_started = ?",
                [(now, j, owner.pid, owner.started) for j in ids],
            )
            db.execute(
                "UPDATE vm_leases SET heartbeat_at = ? WHERE owner_pid = ? AND owner_started = ?",
                (now, owner.pid, owner.started),
            )

    def request_cancel(self, job_id: int, vm: str | None = None) -> int:
        """Ask the owner to cancel the job (or one VM's run); returns how many rows were marked."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                raise NoSuchJobError(f"no job {job_id} in the journal", hint="list jobs with: vmbusops jobs")
            if vm is None:
                return db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,)).rowcount
            return db.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE job_id = ? AND vm = ? COLLATE NOCASE",
                (job_id, vm),
            ).rowcount

    def cancel_requests(self, job_ids: Sequence[int]) -> tuple[set[int], set[int]]:
        """(jobs, runs) whose cancellation was asked for."""
        if not job_ids:
            return set(), set()
        marks = ",".join("?" * len(job_ids))
        # Only placeholders are interpolated; the ids are bound parameters.
        jobs = self._read(f"SELECT id FROM jobs WHERE cancel_requested = 1 AND id IN ({marks})", job_ids)  # noqa: S608
        runs_sql = f"SELECT id FROM runs WHERE cancel_requested = 1 AND job_id IN ({marks})"  # noqa: S608
        runs = self._read(runs_sql, job_ids)
        return {int(r[0]) for r in jobs}, {int(r[0]) for r in runs}

    # ------------------------------------------------------------------ VM leases
    def try_lease_vms(self, wanted: Sequence[tuple[str, int]], owner: Owner, now: float) -> list[int | None]:
        """Take each VM for its run, all in one transaction; per VM, None if taken, else the run
        id of the live holder (a dead owner's lease is taken over)."""
        with self._write() as db:
            return [journal_schema.take_vm_lease(db, vm, run_id, owner, now) for vm, run_id in wanted]

    # ------------------------------------------------------------------ reconciliation
    def reconcile(self, now: float | None = None) -> list[int]:
        """Mark what dead owners left active as interrupted; release their VM leases.

        Returns the ids of the jobs it interrupted. Safe to run from any process at any time: a
        live owner's jobs are never touched.
        """
        now = now if now is not None else time.time()
        interrupted: list[int] = []
        with self._write() as db:
            jobs = db.execute(
                f"SELECT id, state, owner_pid, owner_started, heartbeat_at, {LAST_ALIVE} FROM jobs"  # noqa: S608
                " WHERE state IN (?, ?)",
                (State.PENDING.value, State.IN_PROGRESS.value),
            ).fetchall()
            for job_id, state, pid, started, beat, last_alive in jobs:
                if owner_alive(pid, started, beat, now=now):
                    continue
                # It stopped when its owner was last known to work (see .journal_history).
                interrupt_job(db, job_id, State(state), last_alive)
                interrupted.append(int(job_id))
            for vm, pid, started, beat in db.execute(
                "SELECT vm, owner_pid, owner_started, heartbeat_at FROM vm_leases"
            ).fetchall():
                if not owner_alive(pid, started, beat, now=now):
                    db.execute("DELETE FROM vm_leases WHERE vm = ?", (vm,))
        return interrupted

    def interrupt(self, job_ids: Sequence[int], now: float) -> None:
        """This process stops (Ctrl-C, SIGTERM) under these jobs: each that is still active is
        interrupted now, with its runs' record counts as the journal holds them."""
        with self._write() as db:
            for job_id in job_ids:
                row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
                if row is not None and State(row[0]).active:
                    interrupt_job(db, job_id, State(row[0]), now)

    # ------------------------------------------------------------------ retention (SQL: .journal_retention)
    def prunable(
        self, *, records_before: float, jobs_before: float, keep_jobs: Collection[int] = ()
    ) -> Prunable:
        """What retention may remove: finished jobs' records and rows past their times."""
        with self._lock:
            try:
                return journal_retention.prunable(
                    self._db, records_before=records_before, jobs_before=jobs_before, keep_jobs=keep_jobs
                )
            except sqlite3.Error as exc:
                raise JournalError(f"the journal {self.path} cannot be read: {exc}") from exc

    def forget_records(self, job_id: int, *, batch: int = 5000) -> int:
        """Delete a finished job's records (its runs keep their excerpts), a transaction per
        ``batch`` so the engine's writer never waits long; returns how many went."""
        removed = 0
        while True:
            with self._write() as db:
                done = journal_retention.delete_records(db, job_id, batch)
            removed += done
            if done == 0:
                return removed

    def delete_job(self, job_id: int) -> int:
        """Delete a finished job entirely; returns how many records went with it."""
        removed = self.forget_records(job_id)
        with self._write() as db:
            journal_retention.delete_job(db, job_id)
        return removed

    def compact(self) -> None:
        """Give the pages that pruning freed back to the disk, as far as readers allow."""
        with self._lock:
            try:
                journal_retention.compact(self._db)
            except sqlite3.Error as exc:
                raise self._cannot_write(exc) from exc

    # ------------------------------------------------------------------ readers
    def jobs(
        self, *, limit: int = 50, job_id: int | None = None, where: JobFilter | None = None
    ) -> list[JobView]:
        """Jobs, newest first: one by id, or a page of those ``where`` picks (keyset on the id)."""
        if job_id is not None:
            return self._job_views(self._read(f"SELECT *, {LAST_ALIVE} AS last_alive FROM jobs WHERE id = ?", [job_id]))  # noqa: S608
        f = where or JobFilter()
        out: list[JobView] = []
        before = f.before
        # The shown state of an active job depends on its owner's liveness, so a state filter is
        # checked on the views too; read on until the page is full or the jobs run out.
        while len(out) < limit:
            sql, params = job_where(JobFilter(vm=f.vm, state=f.state, since=f.since, submitter=f.submitter, before=before))
            rows = self._read(
                f"SELECT *, {LAST_ALIVE} AS last_alive FROM jobs{sql} ORDER BY id DESC LIMIT ?", [*params, limit]  # noqa: S608
            )
            out += [v for v in self._job_views(rows) if f.state is None or v.state is f.state][: limit - len(out)]
            if len(rows) < limit:
                break
            before = int(rows[-1]["id"])
        return out

    def _job_views(self, rows: list[sqlite3.Row]) -> list[JobView]:
        out: list[JobView] = []
        now = time.time()
        for r in rows:
            alive = owner_alive(r["owner_pid"], r["owner_started"], r["heartbeat_at"], now=now)
            stored = State(r["state"])
            counts: dict[str, int] = {}
            for state, count in self._run_state_counts(r["id"]):
                s = _effective(State(state), alive).value
                counts[s] = counts.get(s, 0) + count
            out.append(
                JobView(
                    id=r["id"],
                    bundle_name=r["bundle_name"],
                    bundle_version=r["bundle_version"],
                    bundle_id=r["bundle_id"],
                    source=r["source"],
                    submitter=r["submitter"] if "submitter" in r.keys() else None,  # noqa: SIM118
                    left_out=left_out_of(r["left_out"] if "left_out" in r.keys() else None),  # noqa: SIM118
                    host=r["host"],
                    state=_effective(stored, alive),
                    stored_state=stored,
                    created_at=r["created_at"],
                    started_at=r["started_at"],
                    finished_at=stopped_at(stored, alive, r["finished_at"], r["last_alive"]),
                    owner_pid=r["owner_pid"],
                    owner_alive=alive,
                    cancel_requested=bool(r["cancel_requested"]),
                    error=r["error"],
                    manifest=r["manifest"],
                    bundle_dir=r["bundle_dir"],
                    enable_guest_services=bool(r["enable_guest_services"]),
                    pruned=bool(r["pruned"]),
                    envelope=r["envelope"],
                    run_states=counts,
                    start_by=r["start_by"] if "start_by" in r.keys() else None,  # noqa: SIM118
                )
            )
        return out

    def has_bundle(self, bundle_id: str) -> bool:
        """Whether a job of this bundle id exists (its acceptance stands: see bundle.replay)."""
        return bool(self._read("SELECT 1 FROM jobs WHERE bundle_id = ? LIMIT 1", (bundle_id,)))

    def last_bundle_version(self, name: str) -> int | None:
        """The highest version of a bundle of this name that has a job here, if any."""
        row = self._read("SELECT MAX(bundle_version) FROM jobs WHERE bundle_name = ?", (name,))
        return None if not row or row[0][0] is None else int(row[0][0])

    def job(self, job_id: int) -> JobView:
        found = self.jobs(job_id=job_id, limit=1)
        if not found:
            raise NoSuchJobError(f"no job {job_id} in the journal", hint="list jobs with: vmbusops jobs")
        return found[0]

    def runs(self, job_id: int, run_id: int | None = None) -> list[RunView]:  # one run of it with ``run_id``
        owner = self._read_tuples(
            f"SELECT owner_pid, owner_started, heartbeat_at, {LAST_ALIVE} FROM jobs WHERE id = ?", (job_id,)  # noqa: S608
        )
        if not owner:
            raise NoSuchJobError(f"no job {job_id} in the journal", hint="list jobs with: vmbusops jobs")
        alive = owner_alive(*owner[0][:3], now=time.time())
        rows = self._read_tuples(
            "SELECT id, job_id, vm, state, current_step, started_at, finished_at, error, records, excerpt,"
            " cancel_requested, code, waiting FROM runs WHERE job_id = ? AND (? IS NULL OR id = ?) ORDER BY id",
            (job_id, run_id, run_id),
        )
        return [self._run_view(r, alive, owner[0][3]) for r in rows]

    def _run_view(self, r: Sequence[Any], alive: bool, last_alive: float | None) -> RunView:
        """A run as a reader should see it: a run that has not ended counts the records the
        journal holds, and one that stopped under a dead owner ended when it was last alive."""
        stored = _STATE_OF[r[3]]
        records = r[8]
        if not stored.terminal:
            records = int(self._read_tuples(journal_records.LAST_SEQ_OF_RUN, (r[0],))[0][0])
        finished = stopped_at(stored, alive, r[6], last_alive) if r[5] is not None else None
        state = _effective(stored, alive)
        return RunView(
            id=r[0], job_id=r[1], vm=r[2], state=state, stored_state=stored,
            current_step=r[4], started_at=r[5], finished_at=finished, error=r[7], records=records,
            excerpt_json=r[9], cancel_requested=bool(r[10]), code=r[11],
            waiting=r[12] if len(r) > 12 and state is State.IN_PROGRESS else None,
        )  # fmt: skip

    def vm_history(
        self,
        vm: str,
        *,
        limit: int = 50,
        since: float | None = None,
        before: int | None = None,
        state: State | None = None,
    ) -> list[VmRunView]:
        """One VM's runs across jobs, newest job first (keyset ``before``: a job id)."""
        states = None if state is None else stored_states(state)
        out: list[VmRunView] = []
        now = time.time()
        while len(out) < limit:
            sql, params = vm_runs_sql(since=since, before=before, states=states)
            rows = self._read_tuples(sql, [vm, *params, limit])
            for r in rows:
                alive = owner_alive(r[13], r[14], r[15], now=now)
                run = self._run_view((*r[:8], r[8], None, r[9], r[17]), alive, r[16])
                if state is None or run.state is state:
                    out.append(VmRunView(run=run, bundle_name=r[10], bundle_version=r[11], submitter=r[12]))
            if len(rows) < limit:
                break
            before = int(rows[-1][1])
        return out[:limit]

    def steps(self, run_id: int) -> list[StepView]:
        """A run's steps; a step left running by a dead owner reads as interrupted, as its run does."""
        rows = self._read(
            "SELECT steps.*, jobs.owner_pid, jobs.owner_started, jobs.heartbeat_at FROM steps"
            " JOIN runs ON runs.id = steps.run_id JOIN jobs ON jobs.id = runs.job_id"
            " WHERE steps.run_id = ? ORDER BY steps.idx",
            (run_id,),
        )
        now = time.time()
        return [
            StepView(
                run_id=r["run_id"],
                idx=r["idx"],
                name=r["name"],
                kind=r["kind"],
                state=step_shown(
                    State(r["state"]), owner_alive(r["owner_pid"], r["owner_started"], r["heartbeat_at"], now=now)
                ),
                attempts=r["attempts"],
                started_at=r["started_at"],
                finished_at=r["finished_at"],
                error=r["error"],
                code=r["code"],
                exit_code=r["exit_code"],
            )
            for r in rows
        ]

    def stored_records(
        self,
        job_id: int,
        *,
        after: int = 0,
        run_id: int | None = None,
        stream: str | None = None,
        limit: int = 10_000,
    ) -> list[StoredRecord]:
        """A page of the job's records as stored, in the order they were journaled: those
        numbered past ``after`` (the ``n`` of the last record already seen), optionally of one
        run or stream. One comparison on a key: the cost of a page does not grow with the job
        (a stream's page reads past the records of other streams, as a filter on any key must).
        See :func:`.journal_records.read`."""
        with self._lock:
            try:
                return journal_records.read(self._db, job_id, run_id=run_id, after=after, stream=stream, limit=limit)
            except (sqlite3.Error, ValueError) as exc:
                raise JournalError(f"the journal {self.path} cannot be read: {exc}") from exc

    def checkpoints(self, run_id: int) -> list[CheckpointView]:
        """The checkpoints of the run's guarded spans (:mod:`.guard`), in span order."""
        return [CheckpointView.from_row(r) for r in self._read_tuples(CHECKPOINTS_OF_RUN, (run_id,))]

    def receipt(self, run_id: int) -> str | None:
        """The run's signed receipt (its envelope's JSON), if one was written."""
        rows = self._read_tuples("SELECT envelope FROM receipts WHERE run_id = ?", (run_id,))
        return str(rows[0][0]) if rows else None

    def store_receipt(self, run_id: int, job_id: int, envelope: str, now: float) -> str:
        """Keep the run's receipt unless one is kept already; returns the one kept."""
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO receipts (run_id, job_id, envelope, created_at) VALUES (?, ?, ?, ?)",
                (run_id, job_id, envelope, now),
            )
            return str(db.execute("SELECT envelope FROM receipts WHERE run_id = ?", (run_id,)).fetchone()[0])

    def run_ids(self, job_id: int) -> dict[str, int]:
        """The job's runs: VM name -> run id."""
        return {
            str(r[1]): int(r[0])
            for r in self._read_tuples("SELECT id, vm FROM runs WHERE job_id = ?", (job_id,))
        }

    def records(
        self,
        job_id: int,
        *,
        vm: str | None = None,
        stream: str | None = None,
        after: int = 0,
        limit: int = 10_000,
    ) -> list[RecordView]:
        """A page of :meth:`stored_records`, decoded; ``vm`` picks one VM's (in any case)."""
        runs = self.run_ids(job_id)
        vms = {run_id: name for name, run_id in runs.items()}
        run_id = None
        if vm is not None:
            run_id = next((i for name, i in runs.items() if name.casefold() == vm.casefold()), None)
            if run_id is None:
                return []
        return [
            RecordView(
                run_id=r[2],
                vm=vms.get(r[2], ""),
                n=r[1],
                seq=r[3],
                step=r[4],
                attempt=r[5],
                stream=r[6],
                time=r[7],
                content=json.loads(r[8]),
            )
            for r in self.stored_records(job_id, after=after, run_id=run_id, stream=stream, limit=limit)
        ]


#: A stored state's text to its State, without an Enum call per row.
_STATE_OF: Final = {s.value: s for s in State}


def _effective(state: State, owner_alive: bool) -> State:
    """What a reader should show: an active state under a dead owner is an interruption."""
    if state.active and not owner_alive:
        return State.INTERRUPTED
    return state


__all__ = [
    "READ_PAGE",
    "SCHEMA_VERSION",
    "JobFilter",
    "JobView",
    "Journal",
    "JournalBusy",
    "RecordView",
    "RunView",
    "StepView",
    "StoredRecord",
    "VmRunView",
    "journal_path",
]
