"""The controller's journal as a deterministic, exactly-once projection of the LOG stream.

Theory of operation
-------------------
Every controller, active or standby, applies every LOG message in stream order with
:meth:`Projection.apply`: the message's effects (jobs, runs, steps, records, the fleet tables of
:mod:`.store`) and the message's stream sequence are written in one SQLite transaction, so a
message is applied exactly once whatever crashes, and a message at or below the recorded
sequence is skipped. Nothing in the effects reads the clock or the process: times are the facts'
own, ids come from SQLite's autoincrement over the same inserts in the same order, records are
numbered ``n`` in the order they are applied. So two controllers that applied the same prefix of
the log hold the same jobs, runs, steps, records and ``n`` numbers, and an SSE follower's
``Last-Event-ID`` means the same on either.

What each message does (the broker is never trusted: a message that does not fit is skipped and
counted, never guessed at):

- ``job``: a new fleet job (host ``fleet``) with a run per placed VM, pending;
- ``dispatch``: the run's epoch and host; the job is in progress from its first dispatch; a
  re-dispatch (epoch > 1) adds a note record ("run moved to host B: why");
- ``batch``: applied only when its epoch is the run's epoch and its ``n`` the last one + 1; its
  records (numbered after the job's last ``n``) and run and step changes as the host's journal
  committed them;
- ``moved``/``lost``: the run waits for its VM (``delayed``), with a note record;
- ``refused``: the run fails with the host's reason;
- ``skip``/``cancel``: runs not dispatched (or waiting for their VM) end ``skipped``/``cancelled``
  at once; a dispatched one is marked and ends when its host says so.

The job itself ends (``states.job_outcome``, as ``JobMachine.finish``) in the transaction in
which its last run does. :class:`Applied` says what a message changed, for the followers
(``on_commit``, on the trio side).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vmbusops.bundle.manifest import manifest_from_dict
from vmbusops.engine import journal_records
from vmbusops.engine.changes import Change, JobChange, RunChange, StepChange
from vmbusops.engine.changes_json import change_from_json
from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.journal_schema import update_sql
from vmbusops.engine.states import Event, Level, State, TransitionError, job_outcome, next_state
from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.fleet.broker import StreamMessage
from vmbusops.fleet.messages import (
    BatchesFact,
    BatchFact,
    CancelFact,
    DispatchFact,
    FleetMessageError,
    JobFact,
    LogFact,
    LostFact,
    MovedFact,
    NewerProtocolError,
    RefusedFact,
    SkipFact,
    WireRecord,
    parse_ctl,
    parse_host,
)
from vmbusops.fleet.names import CTL_SUBJECT, host_of_log_subject
from vmbusops.fleet.store import FleetJournal
from vmbusops.owner import Owner
from vmbusops.records import Stream, VerboseRecord, WarningRecord, record_json

log = logging.getLogger("vmbusops.fleet")

#: The ``host`` column of a fleet job (its runs' hosts are in ``fleet_runs``).
FLEET_HOST = "fleet"
_STREAMS = frozenset(s.value for s in Stream)
_NOT_STARTED = (State.PENDING, State.DELAYED)
#: The run states that are not terminal.
_LIVE = tuple(s.value for s in State if not s.terminal)
_ANY_LIVE_RUN = "SELECT 1 FROM runs WHERE job_id = ? AND state IN (?, ?, ?, ?) LIMIT 1"
assert len(_LIVE) == 4, _LIVE


class _Unusual(Exception):
    """A page in which a message does not parse or is skipped: applied again, carefully."""


class _Halt(Exception):
    """A controller fact this build cannot read: nothing from it on is applied."""


class Skip(Exception):
    """The message changes nothing (a duplicate, stale, or not applicable); ``reason`` says why."""

    def __init__(self, reason: str, counter: str = "skipped") -> None:
        super().__init__(reason)
        self.reason = reason
        self.counter = counter


@dataclass
class Applied:
    """What one LOG message did to the projection."""

    seq: int
    fact: LogFact | None = None
    records: list[StoredRecord] = field(default_factory=list)
    events: list[RunChanged] = field(default_factory=list)
    #: Jobs this message ended, with their final state.
    ended: list[tuple[int, State]] = field(default_factory=list)
    #: The job a ``job`` fact created.
    created: int | None = None
    #: Why nothing was changed (None: applied).
    skipped: str | None = None
    #: Where each applied fact of the message ended in ``records`` and ``events`` (counts): a
    #: ``batches`` message carries several commits of a host, each its records then its changes,
    #: and followers must get them in that order (a step's start before the records of that step).
    bounds: list[tuple[int, int]] = field(default_factory=list)

    def segments(self) -> Iterator[tuple[list[StoredRecord], list[RunChanged]]]:
        """The records and events of each applied fact, in log order."""
        r = e = 0
        for r_end, e_end in self.bounds:
            yield self.records[r:r_end], self.events[e:e_end]
            r, e = r_end, e_end
        if r < len(self.records) or e < len(self.events):
            yield self.records[r:], self.events[e:]


class Projection:
    def __init__(self, journal: FleetJournal, owner: Owner) -> None:
        self.journal = journal
        self.owner = owner
        self.known = _Known()
        #: Whether the page being applied puts each fact in a savepoint (see :meth:`apply_page`).
        self._careful = True
        #: (sequence, why) of the controller fact in a newer fleet protocol at which this
        #: projection stopped: it applies nothing from there on (see :meth:`apply_page`).
        self.halted: tuple[int, str] | None = None

    def last_seq(self) -> int:
        return self.journal.last_seq()

    def apply(self, message: StreamMessage) -> Applied:
        """Apply one LOG message (blocking SQLite; the caller runs it off the event loop)."""
        applied = self.apply_page([message])
        if applied:
            return applied[0]
        assert self.halted is not None
        return Applied(seq=message.seq, skipped=f"not applied: the projection stopped at {self.halted[1]}")

    def apply_page(self, messages: Sequence[StreamMessage]) -> list[Applied]:
        """Apply LOG messages in order, in one transaction (blocking SQLite; the caller runs it off
        the event loop): each message's effects in a savepoint of their own, so that one that is
        skipped leaves the others be, and the last sequence written once, in the same transaction.
        One commit (one fsync) per page rather than per message is what lets the projection keep up
        with a fleet's records.

        Nearly every page has no message to skip, so a page is first applied without savepoints
        (two statements fewer per fact: each statement gives up the interpreter, which a busy
        controller then takes a while to hand back); a page in which a message does not parse or
        is skipped is rolled back whole and applied again with them. Either way the effects are
        the same: a savepoint released changes nothing.

        A controller fact in a newer fleet protocol (a newer controller wrote it) is neither
        applied nor skipped: the page is applied up to it, and the projection stops there
        (:attr:`halted`), for the facts after it may build on it. A host's fact in a newer protocol
        is skipped as any malformed message is: no agent writes one for a controller that cannot
        read it, and a host must not be able to stop the controllers."""
        if self.halted is not None:
            return []
        try:
            return self._page(messages, careful=False)
        except _Unusual:
            return self._page(messages, careful=True)

    def _page(self, messages: Sequence[StreamMessage], *, careful: bool) -> list[Applied]:
        self._careful = careful
        outs: list[Applied] = []
        known = self.known
        with _forgotten_on_error(known), self.journal.transaction() as db:
            last = _get(db, "last_seq")
            for message in messages:
                out = Applied(seq=message.seq)
                outs.append(out)
                if message.seq <= last:
                    out.skipped = "applied already"
                    continue
                try:
                    self._one(db, message, out)
                except _Halt as halt:
                    outs.pop()
                    self.halted = (message.seq, str(halt))
                    break
                last = message.seq
            _put(db, "last_seq", last)
        return outs

    def _one(self, db: sqlite3.Connection, message: StreamMessage, out: Applied) -> None:
        if not self._careful:
            self._usual(db, message, out)
            return
        try:
            fact = _parse(message)
        except NewerProtocolError as exc:
            if message.subject == CTL_SUBJECT:
                raise _Halt(f"log message {message.seq}: {exc.message}") from None
            log.warning("bad log message", extra={"event": "bad-message", "seq": message.seq, "error": exc.message})
            out.skipped = exc.message
            _bump(db, "bad_messages")
            return
        except FleetMessageError as exc:
            log.warning("bad log message", extra={"event": "bad-message", "seq": message.seq, "error": exc.message})
            out.skipped = exc.message
            _bump(db, "bad_messages")
            return
        out.fact = fact
        parts = fact.batches if isinstance(fact, BatchesFact) else (fact,)
        skipped: list[str] = []
        for part in parts:
            db.execute("SAVEPOINT fact")
            mark = (len(out.records), len(out.events), len(out.ended))
            try:
                _Apply(db, out, self.owner, self.known).fact(part)
                db.execute("RELEASE fact")
                out.bounds.append((len(out.records), len(out.events)))
            except Skip as skip:
                db.execute("ROLLBACK TO fact")
                db.execute("RELEASE fact")
                self.known.clear()
                del out.records[mark[0] :], out.events[mark[1] :], out.ended[mark[2] :]
                out.created = None if isinstance(part, JobFact) else out.created
                skipped.append(skip.reason)
                _bump(db, skip.counter)
                level = logging.WARNING if skip.counter == "bad_messages" else logging.INFO
                log.log(level, "log message skipped", extra={
                    "event": "skipped", "seq": message.seq, "counter": skip.counter, "why": skip.reason,
                })  # fmt: skip
        if skipped and len(skipped) == len(parts):
            out.skipped = "; ".join(skipped)


    def _usual(self, db: sqlite3.Connection, message: StreamMessage, out: Applied) -> None:
        """:meth:`_one` without savepoints, for a message that parses and whose facts all apply;
        :class:`_Unusual` (the page is rolled back) for any other."""
        try:
            fact = _parse(message)
        except FleetMessageError:
            raise _Unusual from None
        out.fact = fact
        for part in fact.batches if isinstance(fact, BatchesFact) else (fact,):
            try:
                _Apply(db, out, self.owner, self.known).fact(part)
            except Skip:
                raise _Unusual from None
            out.bounds.append((len(out.records), len(out.events)))


def _parse(message: StreamMessage) -> LogFact:
    if message.subject == CTL_SUBJECT:
        return parse_ctl(message.data)
    host = host_of_log_subject(message.subject)
    if host is None:
        raise FleetMessageError(f"a log message on the unknown subject {message.subject!r}")
    return parse_host(message.data, host=host)


def _get(db: sqlite3.Connection, key: str) -> int:
    row = db.execute("SELECT value FROM fleet_state WHERE key = ?", (key,)).fetchone()
    return int(row[0]) if row else 0


def _put(db: sqlite3.Connection, key: str, value: int) -> None:
    db.execute(
        "INSERT INTO fleet_state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def _bump(db: sqlite3.Connection, key: str) -> None:
    _put(db, key, _get(db, key) + 1)


class _Known:
    """What the projection's own writes made true, kept between messages to spare a query per
    batch: a run's step names (fixed at the job's creation), a run's last record seq and a job's
    last record ``n`` (only the projection adds records). Cleared whenever a transaction or a
    savepoint is rolled back; a run's entries go when it ends."""

    def __init__(self) -> None:
        self.steps: dict[int, list[str]] = {}
        self.last_seq: dict[int, int] = {}
        self.last_n: dict[int, int] = {}

    def clear(self) -> None:
        self.steps.clear()
        self.last_seq.clear()
        self.last_n.clear()

    def ended(self, run_id: int) -> None:
        self.steps.pop(run_id, None)
        self.last_seq.pop(run_id, None)


@contextmanager
def _forgotten_on_error(known: _Known) -> Iterator[None]:
    try:
        yield
    except BaseException:
        known.clear()
        raise


@dataclass
class _Run:
    job_id: int
    run_id: int
    vm: str
    state: State
    current_step: str | None
    host: str
    epoch: int
    last_n: int
    waiting: str | None


class _Apply:
    """The effects of one fact, inside the projection's transaction."""

    def __init__(self, db: sqlite3.Connection, out: Applied, owner: Owner, known: _Known) -> None:
        self.db = db
        self.out = out
        self.owner = owner
        self.known = known

    def fact(self, fact: LogFact) -> None:
        match fact:
            case JobFact():
                self.job(fact)
            case DispatchFact():
                self.dispatch(fact)
            case BatchFact():
                self.batch(fact)
            case MovedFact() | LostFact():
                self.wait(fact)
            case RefusedFact():
                self.refused(fact)
            case SkipFact():
                self.skip(fact)
            case CancelFact():
                self.cancel(fact)

    # ------------------------------------------------------------------ facts
    def job(self, fact: JobFact) -> None:
        db = self.db
        if db.execute("SELECT 1 FROM fleet_jobs WHERE submission = ?", (fact.submission,)).fetchone():
            raise Skip(f"submission {fact.submission} was applied already", "duplicates")
        try:
            manifest = manifest_from_dict(json.loads(fact.manifest))
        except (ValueError, VmbusOpsError) as exc:
            raise Skip(f"job {fact.submission}: its manifest cannot be read: {exc}", "bad_messages") from None
        vms = [r.vm for r in fact.runs]
        if not vms or len({v.casefold() for v in vms}) != len(vms):
            raise Skip(f"job {fact.submission}: no runs, or a VM twice", "bad_messages")
        # The inserts of Journal.create_job, in its order: ids are SQLite's autoincrement over them.
        cur = db.execute(
            "INSERT INTO jobs (bundle_name, bundle_version, bundle_id, source, manifest, bundle_dir,"
            " enable_guest_services, envelope, submitter, host, state, created_at, owner_pid, owner_started,"
            " heartbeat_at, left_out) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                manifest.name, manifest.version, manifest.id, fact.source, fact.manifest, None,
                int(fact.enable_guest_services), fact.envelope, fact.submitter, FLEET_HOST, State.PENDING.value,
                fact.time, self.owner.pid, self.owner.started, fact.time, fact.left_out,
            ),
        )  # fmt: skip
        job_id = int(cur.lastrowid or 0)
        steps = [(s.name, s.kind.value) for s in manifest.steps]
        for idx, placed in enumerate(fact.runs):
            run_id = int(
                db.execute(
                    "INSERT INTO runs (job_id, vm, state) VALUES (?, ?, ?)", (job_id, placed.vm, State.PENDING.value)
                ).lastrowid
                or 0
            )
            db.executemany(
                "INSERT INTO steps (run_id, idx, name, kind, state) VALUES (?, ?, ?, ?, ?)",
                [(run_id, i, name, kind, State.PENDING.value) for i, (name, kind) in enumerate(steps)],
            )
            db.execute(
                "INSERT INTO fleet_runs (run_id, job_id, idx, vm_id, host) VALUES (?, ?, ?, ?, ?)",
                (run_id, job_id, idx, placed.vm_id, placed.host),
            )
        db.execute(
            "INSERT INTO fleet_jobs (job_id, submission, bundle, log_seq) VALUES (?, ?, ?, ?)",
            (job_id, fact.submission, fact.bundle, self.out.seq),
        )
        self.out.created = job_id

    def dispatch(self, fact: DispatchFact) -> None:
        run = self.run(fact.job, fact.run)
        if run.state.terminal:
            raise Skip(f"run {run.run_id} has ended; not dispatched")
        if fact.epoch <= run.epoch:
            raise Skip(f"run {run.run_id} is at epoch {run.epoch}; dispatch of epoch {fact.epoch} is stale", "duplicates")
        state = State(self.db.execute("SELECT state FROM jobs WHERE id = ?", (run.job_id,)).fetchone()[0])
        if state is State.PENDING:
            self.write([JobChange(job_id=run.job_id, state=State.IN_PROGRESS, started_at=fact.time)])
        if run.epoch > 0:
            self.note(run, Stream.WARNING, f"run moved to host {fact.host}: {fact.reason}", fact.time)
        self.db.execute(
            "UPDATE fleet_runs SET host = ?, epoch = ?, last_n = 0, waiting = NULL WHERE run_id = ?",
            (fact.host, fact.epoch, run.run_id),
        )

    def batch(self, fact: BatchFact) -> None:
        db = self.db
        run = self.run(fact.job, fact.run)
        if fact.epoch != run.epoch or fact.host != run.host or run.waiting is not None:
            raise Skip(f"batch {fact.msg_id()}: run {run.run_id} is at epoch {run.epoch} on {run.host}", "fenced")
        if fact.n != run.last_n + 1:
            raise Skip(f"batch {fact.msg_id()}: expected n = {run.last_n + 1}", "fenced")
        if run.state.terminal:
            raise Skip(f"batch {fact.msg_id()}: run {run.run_id} has ended", "fenced")
        steps = self.steps_of(run.run_id)
        last_seq = self.seq_of(run) - 1
        rows: list[tuple[Any, ...]] = []
        for record in fact.records:
            seq, step, attempt, stream, at, content = record
            why = _bad_record(record, last_seq, steps)
            if why is not None:
                raise Skip(f"batch {fact.msg_id()}: {why}", "bad_messages")
            last_seq = seq
            rows.append((run.job_id, run.run_id, seq, step, attempt, stream, at, content))
        changes: list[Change] = []
        for raw in fact.changes:
            try:
                changes.append(_change(raw, run.run_id, len(steps)))
            except (ValueError, TypeError) as exc:
                raise Skip(f"batch {fact.msg_id()}: {exc}", "bad_messages") from None
        self.records(rows)
        self.write(changes)
        for change in changes:
            if isinstance(change, RunChange):
                now = self.run(fact.job, fact.run)
                self.out.events.append(
                    RunChanged(now.job_id, now.vm, now.state, now.current_step, change.error, change.code)
                )
        db.execute("UPDATE fleet_runs SET last_n = ? WHERE run_id = ?", (fact.n, run.run_id))
        if any(isinstance(c, RunChange) and c.state is not None and c.state.terminal for c in changes):
            self.known.ended(run.run_id)
            self.maybe_end(run.job_id, fact.time)

    def wait(self, fact: MovedFact | LostFact) -> None:
        run = self.run(fact.job, fact.run)
        if fact.epoch != run.epoch or run.waiting is not None or run.state.terminal:
            raise Skip(f"{fact.kind} of run {run.run_id} epoch {fact.epoch}: the run is not there", "fenced")
        if isinstance(fact, MovedFact) and fact.host != run.host:
            raise Skip(f"moved from {fact.host}, but run {run.run_id} is on {run.host}", "fenced")
        what = "left host" if isinstance(fact, MovedFact) else "lost host"
        self.note(run, Stream.WARNING, f"run {what} {run.host}: {fact.reason}; waiting for the VM", fact.time)
        self.write([RunChange(run_id=run.run_id, state=State.DELAYED, current_step=run.current_step, records=self.seq_of(run) - 1)])
        self.out.events.append(RunChanged(run.job_id, run.vm, State.DELAYED, run.current_step))
        self.db.execute("UPDATE fleet_runs SET waiting = ? WHERE run_id = ?", (fact.kind, run.run_id))

    def refused(self, fact: RefusedFact) -> None:
        run = self.run(fact.job, fact.run)
        if fact.epoch != run.epoch or fact.host != run.host or run.state.terminal:
            raise Skip(f"refusal of run {run.run_id} epoch {fact.epoch}: stale", "fenced")
        self.end_run(run, Event.FAIL, f"{run.vm}: refused by host {fact.host}: {fact.reason}", fact.code, fact.time)
        self.maybe_end(run.job_id, fact.time)

    def skip(self, fact: SkipFact) -> None:
        run = self.run(fact.job, fact.run)
        if run.state.terminal or (run.epoch > 0 and run.waiting is None):
            raise Skip(f"run {run.run_id} is dispatched or ended; not skipped")
        self.end_run(run, Event.SKIP, f"{run.vm}: not started: {fact.reason}", fact.code, fact.time)
        self.maybe_end(run.job_id, fact.time)

    def cancel(self, fact: CancelFact) -> None:
        db = self.db
        if db.execute("SELECT 1 FROM fleet_jobs WHERE job_id = ?", (fact.job,)).fetchone() is None:
            raise Skip(f"cancel of unknown job {fact.job}", "bad_messages")
        if fact.run is None:
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (fact.job,))
            ids = [int(r[0]) for r in db.execute("SELECT id FROM runs WHERE job_id = ? ORDER BY id", (fact.job,))]
        else:
            ids = [self.run(fact.job, fact.run).run_id]
        for run_id in ids:
            db.execute("UPDATE runs SET cancel_requested = 1 WHERE id = ?", (run_id,))
            run = self.run(fact.job, run_id)
            if not run.state.terminal and (run.epoch == 0 or run.waiting is not None):
                self.end_run(run, Event.CANCEL, f"{run.vm}: cancelled", FailureCode.CANCELLED, fact.time)
        self.maybe_end(fact.job, fact.time)

    # ------------------------------------------------------------------ helpers
    def run(self, job_id: int, run_id: int) -> _Run:
        row = self.db.execute(
            "SELECT r.job_id, r.id, r.vm, r.state, r.current_step, f.host, f.epoch, f.last_n, f.waiting"
            " FROM runs r JOIN fleet_runs f ON f.run_id = r.id WHERE r.id = ? AND r.job_id = ?",
            (run_id, job_id),
        ).fetchone()
        if row is None:
            raise Skip(f"no run {run_id} in fleet job {job_id}", "bad_messages")
        return _Run(int(row[0]), int(row[1]), row[2], State(row[3]), row[4], row[5], int(row[6]), int(row[7]), row[8])

    def seq_of(self, run: _Run) -> int:
        """The seq the run's next record takes."""
        last = self.known.last_seq.get(run.run_id)
        if last is None:
            row = self.db.execute(journal_records.LAST_SEQ_OF_RUN, (run.run_id,)).fetchone()
            last = self.known.last_seq[run.run_id] = int(row[0])
        return last + 1

    def steps_of(self, run_id: int) -> list[str]:
        steps = self.known.steps.get(run_id)
        if steps is None:
            rows = self.db.execute("SELECT name FROM steps WHERE run_id = ? ORDER BY idx", (run_id,))
            steps = self.known.steps[run_id] = [r[0] for r in rows]
        return steps

    def records(self, rows: Sequence[tuple[Any, ...]]) -> None:
        if not rows:
            return
        job_id = rows[0][0]
        known = self.known
        n = known.last_n.get(job_id)
        if n is None:
            n = int(self.db.execute(journal_records.LAST_N_OF_JOB, (job_id,)).fetchone()[0] or 0)
        stored: list[StoredRecord] = []
        for row in rows:
            n += 1
            stored.append((row[0], n, *row[1:]))
            known.last_seq[row[1]] = row[2]
        known.last_n[job_id] = n
        # A batch is one run's: its records of a step and attempt are one chunk, inserted with
        # the others by one statement (each step gives up the interpreter, and a busy
        # controller takes a while to hand it back).
        journal_records.insert(self.db, stored)
        self.out.records.extend(stored)

    def note(self, run: _Run, stream: Stream, text: str, at: float) -> None:
        """A record of the controller's own on the run (numbered after the run's last)."""
        record = WarningRecord(message=text) if stream is Stream.WARNING else VerboseRecord(message=text)
        seq = self.seq_of(run)
        self.records([(run.job_id, run.run_id, seq, None, 0, stream.value, at, record_json(record))])
        self.db.execute("UPDATE runs SET records = ? WHERE id = ?", (seq, run.run_id))

    def write(self, changes: Sequence[Change]) -> None:
        for change in changes:
            self.db.execute(*update_sql(change))

    def end_run(self, run: _Run, event: Event, message: str, code: str, at: float) -> None:
        """End a run the controller decides for (no host is running it): steps not reached are
        skipped, one left running ends with the run's event."""
        try:
            state = next_state(Level.RUN, run.state, event)
        except TransitionError as exc:
            raise Skip(str(exc)) from None
        changes: list[Change] = []
        for idx, step_state in self.db.execute(
            "SELECT idx, state FROM steps WHERE run_id = ? ORDER BY idx", (run.run_id,)
        ).fetchall():
            current = State(step_state)
            if current in _NOT_STARTED:
                changes.append(StepChange(run_id=run.run_id, index=idx, state=State.SKIPPED, finished_at=at))
            elif current is State.IN_PROGRESS:
                step_event = Event.CANCEL if event is Event.CANCEL else Event.FAIL
                changes.append(
                    StepChange(
                        run_id=run.run_id, index=idx, state=next_state(Level.STEP, current, step_event),
                        finished_at=at, error=message, code=code,
                    )
                )  # fmt: skip
        self.known.ended(run.run_id)
        changes.append(
            RunChange(
                run_id=run.run_id, state=state, current_step=None, records=self.seq_of(run) - 1,
                error=message, code=code, finished_at=at, excerpt=[],
            )
        )  # fmt: skip
        self.write(changes)
        self.out.events.append(RunChanged(run.job_id, run.vm, state, None, message, code))

    def maybe_end(self, job_id: int, at: float) -> None:
        """End the job if every run has ended (``states.job_outcome``); called when a run ended."""
        db = self.db
        job = db.execute("SELECT state, cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        state = State(job[0])
        if not state.active:
            return
        if db.execute(_ANY_LIVE_RUN, (job_id, *_LIVE)).fetchone():
            return
        runs = [State(r[0]) for r in db.execute("SELECT state FROM runs WHERE job_id = ?", (job_id,))]
        outcome = job_outcome(runs, cancel_requested=bool(job[1]))
        final = next_state(Level.JOB, State.IN_PROGRESS, outcome)
        self.write([JobChange(job_id=job_id, state=final, started_at=at, finished_at=at)])
        self.out.ended.append((job_id, final))
        self.known.last_n.pop(job_id, None)


def _bad_record(record: WireRecord, last: int, steps: list[str]) -> str | None:
    """Why a record of a batch cannot be kept as it is (None: it can)."""
    seq, step, _, stream, _, content = record
    if seq != last + 1:
        return f"record seq {seq} does not follow {last}"
    if step is not None and step not in steps:
        return f"record of unknown step {step!r}"
    if stream not in _STREAMS:
        return f"record of unknown stream {stream!r}"
    # The API splices the stored JSON after its stream (api.follow.RecordText): it must start so;
    # and it is stored as a line of its chunk (engine.journal_records), which a line feed would end.
    if "\n" in content:
        return "record content spans lines"
    if not content.startswith(f'{{"stream":"{stream}"'):
        return "record content does not start with its stream"
    try:
        body = json.loads(content)
    except ValueError:
        return "record content is not JSON"
    if not isinstance(body, dict) or body.get("stream") != stream:
        return "record content is not a record object"
    return None


def _change(raw: dict[str, Any], run_id: int, steps: int) -> Change:
    """A run or step change of a batch (the host's word, never trusted): parsed strictly by
    :func:`~vmbusops.engine.changes_json.change_from_json`, for this run and one of its steps
    (a job's state is the projection's own)."""
    if raw.get("t") not in ("run", "step"):
        raise ValueError("a batch carries run and step changes only")
    change = change_from_json(raw, run_id=run_id)
    if isinstance(change, StepChange) and not 0 <= change.index < steps:
        raise ValueError(f"a step change names no step of the run ({change.index})")
    return change


__all__ = ["FLEET_HOST", "Applied", "Projection"]
