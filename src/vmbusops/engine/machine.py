"""A job's and its runs' bookkeeping as a sans-IO state machine.

Theory of operation
-------------------
In the spirit of h11's ``_state.py``: a :class:`RunMachine` holds everything the engine knows about
one run (its state, each step's state and attempts, the current step, the numbering of its
records, the excerpt kept for ``vmbusops jobs``, what its steps reported) and changes only when it
is told that something happened: the run waits, starts, a step begins, a record arrives, a step
succeeds, fails, times out, is cancelled; the run ends; after a crash it is resumed or abandoned;
a fleet run that another host began carries on from where it stood there.
Each such method returns what follows from it: the journal changes (:mod:`.changes`) to write, in
order, and the events (:mod:`.events`) to show. It reads no clock of its own (``clock`` is given),
does no I/O and never waits; every state change goes through :func:`.states.next_state`, so an
event its state does not allow raises :class:`~.states.TransitionError` before anything changed.

The trio side (:mod:`.engine`, :mod:`.context`) decides *when* things happen (leases, slots,
timeouts, guest pipelines) and hands the outputs to the journal writer and the watchers. So
everything the journal and the watchers ever see of a run is decided here, and is tested here
(``tests/engine/test_machine.py``) without a process, a host or a database.

Records are numbered here and only here: :meth:`RunMachine.records` numbers the records it is told
of (a guest's, a run of them at a time, and the agent's own notes alike) on from :attr:`~RunMachine.next_seq`,
which continues after the highest one the journal holds when a run is resumed, and after the
fleet run's last one when it carries on from another host.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from vmbusops.engine.changes import (
    WAITING_SESSION,
    Change,
    JobChange,
    PendingRecord,
    RunChange,
    StepChange,
    pending_rows,
)
from vmbusops.engine.events import RecordArrived, RunChanged
from vmbusops.engine.run_start import CARRIED_STATES
from vmbusops.engine.states import (
    ERRORS,
    Event,
    Level,
    State,
    TransitionError,
    allowed_events,
    job_outcome,
    next_state,
)
from vmbusops.errors import FailureCode
from vmbusops.records import GuestRecord, PipelineStateRecord, ProgressRecord, Record, display_text

Output = Change | RunChanged
"""What a machine's method returns: journal changes and view events, in the order they happen."""

#: The live view's note for a run whose step waits for a session (:meth:`RunMachine.wait_for_session`).
WAITING_SESSION_NOTE: Final = "waiting for a host session"
#: Steps a run can still start (a delayed one waits out a retry's backoff).
_STARTABLE = (State.PENDING, State.DELAYED)
#: A step's state where a run stood on another host -> its state when the run carries on here
#: (see :meth:`RunMachine.carry_on`): one that was running is interrupted, as by a crash.
_CARRIED: Final = {
    s: State.INTERRUPTED if s in (State.IN_PROGRESS, State.DELAYED) else s for s in CARRIED_STATES
}
#: Records shown live but never in a run's excerpt.
_NOT_IN_EXCERPT = frozenset((PipelineStateRecord, ProgressRecord))


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What the machine needs to know of a bundle step."""

    name: str
    #: May run again after an interruption under the ``resume`` policy (idempotent, or a kind
    #: that converges by nature, like DSC).
    resumable: bool = False


@dataclass(eq=False)
class RunMachine:
    """One run of a job: the run's and its steps' states, records and excerpt."""

    job_id: int
    id: int
    vm: str
    steps: Sequence[StepInfo]
    state: State = State.PENDING
    step_states: list[State] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    #: The number the next record of the run gets.
    next_seq: int = 1
    current: int | None = None
    error: str | None = None
    #: The run's failure code (a :class:`~vmbusops.errors.FailureCode`) when it did not succeed.
    code: str | None = None
    excerpt_lines: int = 10
    clock: Callable[[], float] = time.time
    #: Per step name, what the step reported (dsc resources, patch updates, script reboots).
    details: dict[str, Any] = field(default_factory=dict)
    #: (step index, exit code) of a script step that exited asking for a reboot it may have.
    reboot_for: tuple[int, int] | None = None
    _head: list[str] = field(default_factory=list)
    _tail: deque[Record] = field(init=False)
    #: Records that went to the tail, the ones it no longer holds included.
    _tailed: int = 0

    def __post_init__(self) -> None:
        n = len(self.steps)
        self.step_states = self.step_states or [State.PENDING] * n
        self.attempts = self.attempts or [0] * n
        if len(self.step_states) != n or len(self.attempts) != n:
            raise ValueError(f"run {self.id} has {len(self.step_states)} step states for {n} steps")
        self._tail = deque(maxlen=self.excerpt_lines)

    # ------------------------------------------------------------------ reading
    @property
    def current_step(self) -> str | None:
        return self.steps[self.current].name if self.current is not None else None

    def next_step(self) -> int | None:
        """The first step the run has not carried out yet (None: all are done)."""
        return next((i for i, s in enumerate(self.step_states) if s in _STARTABLE), None)

    def excerpt(self) -> list[str]:
        """The first and last lines the run printed, for ``vmbusops jobs show``."""
        tail = [line for r in self._tail for line in (display_text(r).splitlines() or [""])]
        tail = tail[-self.excerpt_lines :]
        dropped = self._tailed - len(self._tail)
        if dropped:
            return [*self._head, f"... ({dropped} records not shown) ...", *tail]
        return [*self._head, *tail]

    # ------------------------------------------------------------------ records
    def records(
        self, records: Sequence[Record], at: float, index: int | None, *, watched: bool = True
    ) -> tuple[list[PendingRecord], list[RecordArrived]]:
        """Consecutive records of step ``index`` (None: outside any step), taken at ``at``: numbered
        on from the run's last, their rows for the journal writer and their events for the watchers.

        On the path of every record, so it does as little as it can, and per run of records (a
        guest's packet carries dozens) rather than per record where it can: their JSON, which the
        journal stores, now (see :func:`~.changes.pending_rows`); display text later (for the
        excerpt when the run ends) but for the run's first lines, and the events for the watchers
        only when there are some (``watched``).
        """
        if index is None:
            name, attempt = None, 0
        else:
            name, attempt = self.steps[index].name, self.attempts[index]
        first = self.next_seq
        self.next_seq = first + len(records)
        self._excerpt([record for record in records if type(record) not in _NOT_IN_EXCERPT])
        arrived = []
        if watched:
            job_id, vm = self.job_id, self.vm
            arrived = [
                RecordArrived(job_id, GuestRecord(vm=vm, seq=seq, time=at, record=record, step=name))
                for seq, record in enumerate(records, first)
            ]
        rows = pending_rows(
            records, job_id=self.job_id, run_id=self.id, step=name, attempt=attempt, first_seq=first, at=at
        )
        return rows, arrived

    def _excerpt(self, shown: Sequence[Record]) -> None:
        """Records shown in the excerpt: the first lines of the run in full, then the last."""
        head, taken = self._head, 0
        while taken < len(shown) and len(head) < self.excerpt_lines:
            head.extend(display_text(shown[taken]).splitlines() or [""])
            taken += 1
        if taken < len(shown):
            self._tail.extend(shown[taken:] if taken else shown)
            self._tailed += len(shown) - taken

    # ------------------------------------------------------------------ the run
    def wait(self) -> list[Output]:
        """The run waits for its VM's lease or a concurrency slot (said once)."""
        if self.state is not State.PENDING:
            return []
        return self._run(Event.WAIT)

    def start(self) -> list[Output]:
        return self._run(Event.START, started=True)

    def succeed(self) -> list[Output]:
        """Every step succeeded."""
        self._check(Event.SUCCEED)
        for i, s in enumerate(self.step_states):
            if s is not State.SUCCESS:
                raise TransitionError(
                    Level.RUN, self.state, Event.SUCCEED, why=f"a run cannot succeed while step {self.steps[i].name} is {s.value}"
                )
        self.current = None
        return self._finish(Event.SUCCEED, None, None)

    def delivery_timed_out(self, timeout: float, *, start_by: float | None = None) -> list[Output]:
        """Not started within ``timeout`` seconds, or (``start_by``, a schedule tick's cut-off,
        epoch seconds) by then, whichever came first."""
        if start_by is not None and self.clock() >= start_by - 0.001:
            when = datetime.fromtimestamp(start_by, UTC).isoformat(timespec="seconds")
            why = f"{self.vm}: not started by its schedule's cut-off ({when})"
        else:
            why = f"{self.vm}: not started within the delivery timeout ({timeout:g}s)"
        return self._finish(Event.DELIVERY_TIMEOUT, why, FailureCode.DELIVERY_TIMEOUT)

    def skip(self, errors: int, max_errors: int) -> list[Output]:
        """Not started: max errors was exceeded."""
        message = f"not started: {errors} runs failed, more than max errors ({max_errors})"
        self._check(Event.SKIP)
        return [*self.skip_steps(), *self._finish(Event.SKIP, message, FailureCode.SKIPPED)]

    def fail(self, event: Event, message: str, code: str) -> list[Output]:
        """A step ended the run (failed, or timed out) with ``code``: the steps after it are skipped."""
        self._check(event)
        return [
            *self._end_current_step(event, message, code),
            *self.skip_steps(),
            *self._finish(event, message, code),
        ]

    def roll_back(self, message: str, step_event: Event = Event.FAIL, step_code: str | None = None) -> list[Output]:
        """A guarded span failed and its checkpoint was restored (``message``: why, and which
        checkpoint): a step still running ends with ``step_event`` (the timeout or cancel that
        caused it), the steps after it are skipped, and the run ends rolled-back."""
        self._check(Event.ROLL_BACK)
        return [
            *self._end_current_step(step_event, message, step_code or FailureCode.ROLLED_BACK),
            *self.skip_steps(),
            *self._finish(Event.ROLL_BACK, message, FailureCode.ROLLED_BACK),
        ]

    def fail_outside_steps(self, message: str, code: str) -> list[Output]:
        """Something outside any step failed (the journal, the host connection)."""
        self._check(Event.FAIL)
        return [*self._end_current_step(Event.FAIL, message, code), *self._finish(Event.FAIL, message, code)]

    def execution_timed_out(self, timeout: float) -> list[Output]:
        message = f"{self.vm}: the run did not finish within its execution timeout ({timeout:g}s)"
        self._check(Event.EXECUTION_TIMEOUT)
        return [
            *self._end_current_step(Event.EXECUTION_TIMEOUT, message, FailureCode.TIMEOUT),
            *self.skip_steps(),
            *self._finish(Event.EXECUTION_TIMEOUT, message, FailureCode.TIMEOUT),
        ]

    def cancel(self) -> list[Output]:
        self._check(Event.CANCEL)
        return [
            *self._end_current_step(Event.CANCEL, "cancelled", FailureCode.CANCELLED),
            *self.skip_steps(),
            *self._finish(Event.CANCEL, f"{self.vm}: cancelled", FailureCode.CANCELLED),
        ]

    def resume(
        self, *, abandon: bool, cause: str = "the agent stopped under this run", rolling_back: str | None = None
    ) -> list[Output]:
        """After an interruption: run again from the interrupted step, or abandon the run.

        ``abandon`` is the bundle's resume policy saying so; a step that is not resumable
        abandons the run too (it may have done half its work). ``cause`` says what interrupted
        the run, in the message of a run abandoned by the policy. ``rolling_back`` (why) says
        that the run's checkpoint guard will restore its change when the run starts again
        (:mod:`.guard`): the interrupted step is not run again but ends failed, as it was cut
        short, and the run resumes so that its guard can roll back."""
        if self.state is not State.INTERRUPTED:
            return []
        self._check(Event.RESUME)
        if abandon:
            return self._abandon(f"{cause} and the bundle's resume policy is abandon")
        out: list[Output] = []
        for i, s in enumerate(self.step_states):
            if s is not State.INTERRUPTED:
                continue
            if rolling_back is not None:
                out += self._step(i, Event.ABANDON, error=rolling_back, code=FailureCode.ROLLED_BACK)
                continue
            if not self.steps[i].resumable:
                return self._abandon(
                    f"step {self.steps[i].name} was interrupted and is not idempotent, so it is not run again"
                )
            out += self._step(i, Event.RESUME)
        return [*out, *self._run(Event.RESUME)]

    def carry_on(
        self,
        step_states: Sequence[State],
        attempts: Sequence[int],
        next_seq: int,
        *,
        abandon: bool,
        cause: str,
    ) -> list[Output]:
        """A run that began elsewhere (a fleet run that another host ran part of) goes on here
        from where it stands: its steps' states and attempts there, its records numbered on from
        ``next_seq``. A step that succeeded stays so and is not run again; a step that was
        running there (in progress, or waiting out a retry's backoff) is interrupted, and the run
        is then resumed or abandoned exactly as after a crash (:meth:`resume`, with ``abandon``
        and ``cause``). Only a run that has not begun here can carry on."""
        if self.state is not State.PENDING or any(s is not State.PENDING for s in self.step_states):
            raise TransitionError(Level.RUN, self.state, Event.RESUME, why=f"run {self.id} has begun here already")
        n = len(self.steps)
        if len(step_states) != n or len(attempts) != n:
            raise ValueError(
                f"run {self.id}: {len(step_states)} step states and {len(attempts)} attempts for {n} steps"
            )
        self.next_seq = next_seq
        out: list[Output] = []
        for i, (s, tries) in enumerate(zip(step_states, attempts, strict=True)):
            state = _CARRIED.get(s)
            if state is None:
                raise ValueError(f"run {self.id}: step {self.steps[i].name} cannot go on from {s.value}")
            self.attempts[i] = tries
            if state is not State.PENDING or tries:
                self.step_states[i] = state
                out.append(StepChange(run_id=self.id, index=i, state=state, attempts=tries))
        if State.INTERRUPTED not in self.step_states:
            return [*out, self._where()]
        return [*out, *self._run(Event.INTERRUPT), *self.resume(abandon=abandon, cause=cause)]

    def refuse(self, message: str) -> list[Output]:
        """After an interruption, the job's bundle no longer passes verification: the run ends
        with ``message``, coded as the rejected bundle it is, and nothing of it runs again."""
        if self.state is not State.INTERRUPTED:
            return []
        return self._abandon(message, FailureCode.BUNDLE_REJECTED)

    def _abandon(self, message: str, code: FailureCode = FailureCode.ABANDONED) -> list[Output]:
        self._check(Event.ABANDON)
        out: list[Output] = []
        for i, s in enumerate(self.step_states):
            if s is State.INTERRUPTED:
                out += self._step(i, Event.ABANDON, error=message, code=code)
            elif s in _STARTABLE:
                out += self._step(i, Event.SKIP)
        return [*out, *self._finish(Event.ABANDON, message, code)]

    # ------------------------------------------------------------------ steps
    def begin_step(self, index: int) -> list[Output]:
        """Step ``index`` starts an attempt (a no-op if it already is in progress)."""
        if self.step_states[index] is State.IN_PROGRESS:
            return []
        if self.state is not State.IN_PROGRESS:
            raise TransitionError(
                Level.STEP, self.step_states[index], Event.START, why=f"a step cannot start in a {self.state.value} run"
            )
        busy = self.current
        if busy is not None and busy != index and self.step_states[busy] is State.IN_PROGRESS:
            raise TransitionError(
                Level.STEP,
                self.step_states[index],
                Event.START,
                why=f"step {self.steps[index].name} cannot start while step {self.steps[busy].name} is in progress",
            )
        self.current = index
        out = self._step(index, Event.START)
        out.append(self._where())
        out.append(RunChanged(self.job_id, self.vm, self.state, self.current_step))
        return out

    def succeed_step(self, index: int) -> list[Output]:
        return self._step(index, Event.SUCCEED)

    def retry_step(self, index: int, message: str, code: str) -> list[Output]:
        """The attempt failed with a transient error and the step has attempts left: it waits."""
        return self._step(index, Event.WAIT, error=message, code=code)

    def step_exited(self, index: int, exit_code: int) -> list[Output]:
        """The guest script of step ``index`` exited with ``exit_code`` (kept with the step)."""
        return [StepChange(run_id=self.id, index=index, state=self.step_states[index], exit_code=exit_code)]

    def fail_step(self, index: int, message: str, code: str) -> list[Output]:
        return self._step(index, Event.FAIL, error=message, code=code)

    def time_out_step(self, index: int, timeout: float | None) -> tuple[str, list[Output]]:
        limit = f"{timeout:g}s" if timeout is not None else "no limit"
        message = f"step {self.steps[index].name}: did not finish within its timeout ({limit})"
        return message, self._step(index, Event.EXECUTION_TIMEOUT, error=message, code=FailureCode.TIMEOUT)

    def skip_steps(self) -> list[Output]:
        out: list[Output] = []
        for i, s in enumerate(self.step_states):
            if s in _STARTABLE:
                out += self._step(i, Event.SKIP)
        return out

    def wait_for_session(self, waiting: bool) -> list[Output]:
        """The run waits (or, ``waiting`` False, no longer waits) for one of its process's
        PowerShell Direct sessions, all of them in use: journaled as the run's ``waiting``
        (:data:`WAITING_SESSION`), told to the live view in the step column. Any later change of
        the run's state or place clears it."""
        where = self._where()
        change = RunChange(
            run_id=self.id, state=None, current_step=where.current_step, records=where.records,
            waiting=WAITING_SESSION if waiting else None,
        )  # fmt: skip
        step = self.current_step
        if waiting:
            step = f"{step}: {WAITING_SESSION_NOTE}" if step else WAITING_SESSION_NOTE
        return [change, RunChanged(self.job_id, self.vm, self.state, step)]

    def progress(self, index: int, text: str) -> RunChanged:
        """Where a step is (shown in the run view's step column; not journaled)."""
        return RunChanged(self.job_id, self.vm, self.state, f"{self.steps[index].name}: {text}")

    # ------------------------------------------------------------------ plumbing
    def _check(self, event: Event) -> None:
        """Raise TransitionError now if the run cannot take ``event``, before anything changes."""
        next_state(Level.RUN, self.state, event)

    def _end_current_step(self, event: Event, message: str, code: str) -> list[Output]:
        index = self.current
        if index is None or self.step_states[index] not in (State.IN_PROGRESS, State.DELAYED):
            return []
        out: list[Output] = []
        if self.step_states[index] is State.DELAYED and event not in allowed_events(Level.STEP, State.DELAYED):
            # Waiting out a retry's backoff: the step fails or times out as the attempt it waited for.
            out += self._step(index, Event.START)
        return [*out, *self._step(index, event, error=message, code=code)]

    def _finish(self, event: Event, error: str | None, code: str | None) -> list[Output]:
        self.error = error if event is not Event.SUCCEED else None
        self.code = code if event is not Event.SUCCEED else None
        return self._run(event, error=self.error, code=self.code, finished=True)

    def _run(
        self,
        event: Event,
        *,
        error: str | None = None,
        code: str | None = None,
        started: bool = False,
        finished: bool = False,
    ) -> list[Output]:
        self.state = next_state(Level.RUN, self.state, event)
        now = self.clock() if started or finished else None
        change = RunChange(
            run_id=self.id,
            state=self.state,
            current_step=self.current_step,
            records=self.next_seq - 1,
            error=error,
            code=code,
            started_at=now if started else None,
            finished_at=now if finished else None,
            excerpt=self.excerpt() if finished else None,
        )
        return [change, RunChanged(self.job_id, self.vm, self.state, self.current_step, error, code)]

    def _where(self) -> RunChange:
        return RunChange(
            run_id=self.id, state=None, current_step=self.current_step, records=self.next_seq - 1
        )

    def _step(
        self, index: int, event: Event, *, error: str | None = None, code: str | None = None
    ) -> list[Output]:
        new = next_state(Level.STEP, self.step_states[index], event)
        self.step_states[index] = new
        now = self.clock()
        attempts: int | None = None
        if event is Event.START:
            self.attempts[index] += 1
            attempts = self.attempts[index]
        change = StepChange(
            run_id=self.id,
            index=index,
            state=new,
            attempts=attempts,
            started_at=now if event is Event.START else None,
            finished_at=now if new.terminal else None,
            error=error,
            code=code,
            clear=event is Event.START,
        )
        return [change]


@dataclass(eq=False)
class JobMachine:
    """A job: its state, and the max-errors count over its runs."""

    id: int
    runs: list[RunMachine]
    max_errors: int
    state: State = State.PENDING
    cancel_requested: bool = False
    clock: Callable[[], float] = time.time
    errors: int = field(init=False)

    def __post_init__(self) -> None:
        self.errors = sum(1 for r in self.runs if r.state in ERRORS)

    @property
    def over_max_errors(self) -> bool:
        return self.errors > self.max_errors

    def run_ended(self, run: RunMachine) -> None:
        if run.state in ERRORS:
            self.errors += 1

    def resume(self) -> list[Output]:
        return [self._event(Event.RESUME)]

    def refuse(self, message: str) -> list[Output]:
        """An interrupted job whose bundle no longer passes verification ends failed, with why."""
        return [self._event(Event.ABANDON, finished=True, error=message)]

    def start(self) -> list[Output]:
        return [self._event(Event.START, started=True)]

    def finish(self) -> list[Output]:
        """Every run has ended: the job ends with what they came to (see :func:`.states.job_outcome`)."""
        outcome = job_outcome((r.state for r in self.runs), cancel_requested=self.cancel_requested)
        return [self._event(outcome, finished=True)]

    def _event(
        self, event: Event, *, started: bool = False, finished: bool = False, error: str | None = None
    ) -> JobChange:
        self.state = next_state(Level.JOB, self.state, event)
        return JobChange(
            job_id=self.id,
            state=self.state,
            started_at=self.clock() if started else None,
            finished_at=self.clock() if finished else None,
            error=error,
        )


__all__ = ["JobMachine", "Output", "RunMachine", "StepInfo"]
