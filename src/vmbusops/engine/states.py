"""The lifecycle of jobs, runs and steps: one sans-IO state machine.

Theory of operation
-------------------
A *job* is one bundle resolved against the host's VMs; it has one *run* per target VM; a run
executes the bundle's *steps* in order. All three move through the same set of states, modelled on
AWS Systems Manager Run Command:

==========================  ==================================================================
state                       meaning
==========================  ==================================================================
pending                     accepted, not started
delayed                     waiting: for a concurrency slot or the VM's lease (run), for a
                            retry's backoff (step)
in-progress                 running
success                     finished, and did what was asked
failed                      finished with an error (the real message is kept)
delivery-timed-out          never started: no slot / lease within the delivery timeout
execution-timed-out         started, and did not finish within its timeout
cancelled                   someone asked it to stop; the guest pipeline was stopped
interrupted                 the process that owned it died under it
skipped                     never started: max errors was exceeded (run), or an earlier step
                            ended the run (step)
rolled-back                 (run) a guarded change failed, and the VM was put back to the
                            checkpoint taken before it (see :mod:`vmbusops.engine.guard`)
==========================  ==================================================================

Things happen to them as :class:`Event` values; :func:`next_state` gives the state an event
leads to, or raises :class:`TransitionError` when the event is not allowed in that state (a
terminal state accepts nothing). The tables below are the whole truth: the engine, the journal's
reconciliation and the readers all go through them, and ``tests/engine/test_states.py`` checks
every (level, state, event) triple, allowed or refused.

``interrupted`` is the only state a finished thing can leave, and only by ``resume`` (back to
pending) or ``abandon`` (to failed); that is how the bundle's resume policy is applied after a
crash. Nothing here reads the clock or touches the journal.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Final

from vmbusops.errors import VmbusOpsError


class Level(enum.StrEnum):
    JOB = "job"
    RUN = "run"
    STEP = "step"


class State(enum.StrEnum):
    PENDING = "pending"
    DELAYED = "delayed"
    IN_PROGRESS = "in-progress"
    SUCCESS = "success"
    FAILED = "failed"
    DELIVERY_TIMED_OUT = "delivery-timed-out"
    EXECUTION_TIMED_OUT = "execution-timed-out"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    ROLLED_BACK = "rolled-back"

    @property
    def active(self) -> bool:
        """Not finished: someone (a live owner) is expected to move it on."""
        return self in ACTIVE

    @property
    def terminal(self) -> bool:
        """Finished for good: no event is accepted."""
        return self in TERMINAL


class Event(enum.StrEnum):
    WAIT = "wait"  # a run waits for a slot or lease; a step waits out a retry's backoff
    START = "start"
    SUCCEED = "succeed"
    FAIL = "fail"
    DELIVERY_TIMEOUT = "delivery-timeout"
    EXECUTION_TIMEOUT = "execution-timeout"
    CANCEL = "cancel"
    INTERRUPT = "interrupt"  # the owner died (found by reconciliation)
    SKIP = "skip"
    RESUME = "resume"  # after an interruption, per the bundle's resume policy
    ABANDON = "abandon"  # after an interruption, when the policy (or a step) forbids resuming
    ROLL_BACK = "roll-back"  # a guarded span failed and its checkpoint was restored


ACTIVE: Final = frozenset({State.PENDING, State.DELAYED, State.IN_PROGRESS})
TERMINAL: Final = frozenset(
    {
        State.SUCCESS,
        State.FAILED,
        State.DELIVERY_TIMED_OUT,
        State.EXECUTION_TIMED_OUT,
        State.CANCELLED,
        State.SKIPPED,
        State.ROLLED_BACK,
    }
)
#: What counts towards a job's max errors (a rolled-back run's change failed, too).
ERRORS: Final = frozenset(
    {State.FAILED, State.DELIVERY_TIMED_OUT, State.EXECUTION_TIMED_OUT, State.ROLLED_BACK}
)

S, E = State, Event

_NOT_STARTED = {
    E.START: S.IN_PROGRESS,
    E.CANCEL: S.CANCELLED,
    E.INTERRUPT: S.INTERRUPTED,
}
_RUNNING = {
    E.SUCCEED: S.SUCCESS,
    E.FAIL: S.FAILED,
    E.EXECUTION_TIMEOUT: S.EXECUTION_TIMED_OUT,
    E.CANCEL: S.CANCELLED,
    E.INTERRUPT: S.INTERRUPTED,
}
_AFTER_INTERRUPT = {E.RESUME: S.PENDING, E.ABANDON: S.FAILED}

_RUN: Mapping[State, Mapping[Event, State]] = {
    S.PENDING: {
        **_NOT_STARTED,
        E.WAIT: S.DELAYED,
        E.SKIP: S.SKIPPED,
        E.DELIVERY_TIMEOUT: S.DELIVERY_TIMED_OUT,
        # A run can fail before it starts: its VM does not exist, its credential is unknown.
        E.FAIL: S.FAILED,
    },
    S.DELAYED: {
        **_NOT_STARTED,
        E.SKIP: S.SKIPPED,
        E.DELIVERY_TIMEOUT: S.DELIVERY_TIMED_OUT,
        E.FAIL: S.FAILED,
    },
    # Only a run rolls back: its steps keep the states they ended in.
    S.IN_PROGRESS: {**_RUNNING, E.ROLL_BACK: S.ROLLED_BACK},
    S.INTERRUPTED: _AFTER_INTERRUPT,
}

_STEP: Mapping[State, Mapping[Event, State]] = {
    # A step that is never reached is skipped; a step is never delivered on its own, so it has no
    # delivery timeout.
    S.PENDING: {**_NOT_STARTED, E.SKIP: S.SKIPPED},
    S.DELAYED: {**_NOT_STARTED, E.SKIP: S.SKIPPED},
    S.IN_PROGRESS: {**_RUNNING, E.WAIT: S.DELAYED},  # a transient error: wait, then retry
    S.INTERRUPTED: _AFTER_INTERRUPT,
}

_JOB: Mapping[State, Mapping[Event, State]] = {
    S.PENDING: {**_NOT_STARTED},
    # A job's timeouts are its runs'; the job itself fails (see job_outcome).
    S.IN_PROGRESS: {k: v for k, v in _RUNNING.items() if k is not E.EXECUTION_TIMEOUT},
    S.INTERRUPTED: _AFTER_INTERRUPT,
}

_TABLES: Mapping[Level, Mapping[State, Mapping[Event, State]]] = {
    Level.JOB: _JOB,
    Level.RUN: _RUN,
    Level.STEP: _STEP,
}


class TransitionError(VmbusOpsError):
    """An event that the state it happened in does not allow (a bug, or a corrupt journal)."""

    def __init__(self, level: Level, state: State, event: Event, *, why: str | None = None) -> None:
        super().__init__(why or f"a {level.value} in state {state.value!r} cannot take the event {event.value!r}")
        self.level = level
        self.state = state
        self.event = event


def next_state(level: Level, state: State, event: Event) -> State:
    """The state ``event`` leads to from ``state``; raises :class:`TransitionError` if refused."""
    new = _TABLES[level].get(state, {}).get(event)
    if new is None:
        raise TransitionError(level, state, event)
    return new


def allowed_events(level: Level, state: State) -> frozenset[Event]:
    return frozenset(_TABLES[level].get(state, {}))


def states_of(level: Level) -> frozenset[State]:
    """Every state a thing of ``level`` can be in."""
    table = _TABLES[level]
    return frozenset(table) | frozenset(s for row in table.values() for s in row.values())


def job_outcome(run_states: Iterable[State], *, cancel_requested: bool = False) -> Event:
    """The event that ends a job whose runs all ended in ``run_states``.

    Success only if every run succeeded. Otherwise a cancel request wins (the operator asked for
    it and the runs that did not finish say so); then any error (failed, either timeout) or a skip
    (max errors stopped the job) fails it; a job whose only non-successes are cancellations is
    cancelled.
    """
    states = list(run_states)
    for s in states:
        if not s.terminal:
            raise ValueError(f"a job cannot end while a run is {s.value}")
    if all(s is State.SUCCESS for s in states):
        return Event.SUCCEED
    if cancel_requested:
        return Event.CANCEL
    if any(s in ERRORS or s is State.SKIPPED for s in states):
        return Event.FAIL
    return Event.CANCEL
