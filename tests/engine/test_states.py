"""Every (level, state, event) triple of the lifecycle, allowed or refused.

The expected table is written out here by hand, from the issue's status model, rather than derived
from the module: a change to the module that nobody meant shows up as a failing row.
"""

from __future__ import annotations

import itertools

import pytest

from vmbusops.engine.states import (
    TERMINAL,
    Event,
    Level,
    State,
    TransitionError,
    allowed_events,
    job_outcome,
    next_state,
    states_of,
)

S, E = State, Event

EXPECTED: dict[tuple[Level, State, Event], State] = {
    # runs
    (Level.RUN, S.PENDING, E.WAIT): S.DELAYED,
    (Level.RUN, S.PENDING, E.START): S.IN_PROGRESS,
    (Level.RUN, S.PENDING, E.SKIP): S.SKIPPED,
    (Level.RUN, S.PENDING, E.DELIVERY_TIMEOUT): S.DELIVERY_TIMED_OUT,
    (Level.RUN, S.PENDING, E.CANCEL): S.CANCELLED,
    (Level.RUN, S.PENDING, E.INTERRUPT): S.INTERRUPTED,
    (Level.RUN, S.PENDING, E.FAIL): S.FAILED,
    (Level.RUN, S.DELAYED, E.START): S.IN_PROGRESS,
    (Level.RUN, S.DELAYED, E.SKIP): S.SKIPPED,
    (Level.RUN, S.DELAYED, E.DELIVERY_TIMEOUT): S.DELIVERY_TIMED_OUT,
    (Level.RUN, S.DELAYED, E.CANCEL): S.CANCELLED,
    (Level.RUN, S.DELAYED, E.INTERRUPT): S.INTERRUPTED,
    (Level.RUN, S.DELAYED, E.FAIL): S.FAILED,
    (Level.RUN, S.IN_PROGRESS, E.SUCCEED): S.SUCCESS,
    (Level.RUN, S.IN_PROGRESS, E.FAIL): S.FAILED,
    (Level.RUN, S.IN_PROGRESS, E.EXECUTION_TIMEOUT): S.EXECUTION_TIMED_OUT,
    (Level.RUN, S.IN_PROGRESS, E.CANCEL): S.CANCELLED,
    (Level.RUN, S.IN_PROGRESS, E.INTERRUPT): S.INTERRUPTED,
    (Level.RUN, S.IN_PROGRESS, E.ROLL_BACK): S.ROLLED_BACK,
    (Level.RUN, S.INTERRUPTED, E.RESUME): S.PENDING,
    (Level.RUN, S.INTERRUPTED, E.ABANDON): S.FAILED,
    # steps
    (Level.STEP, S.PENDING, E.START): S.IN_PROGRESS,
    (Level.STEP, S.PENDING, E.SKIP): S.SKIPPED,
    (Level.STEP, S.PENDING, E.CANCEL): S.CANCELLED,
    (Level.STEP, S.PENDING, E.INTERRUPT): S.INTERRUPTED,
    (Level.STEP, S.DELAYED, E.START): S.IN_PROGRESS,
    (Level.STEP, S.DELAYED, E.SKIP): S.SKIPPED,
    (Level.STEP, S.DELAYED, E.CANCEL): S.CANCELLED,
    (Level.STEP, S.DELAYED, E.INTERRUPT): S.INTERRUPTED,
    (Level.STEP, S.IN_PROGRESS, E.WAIT): S.DELAYED,
    (Level.STEP, S.IN_PROGRESS, E.SUCCEED): S.SUCCESS,
    (Level.STEP, S.IN_PROGRESS, E.FAIL): S.FAILED,
    (Level.STEP, S.IN_PROGRESS, E.EXECUTION_TIMEOUT): S.EXECUTION_TIMED_OUT,
    (Level.STEP, S.IN_PROGRESS, E.CANCEL): S.CANCELLED,
    (Level.STEP, S.IN_PROGRESS, E.INTERRUPT): S.INTERRUPTED,
    (Level.STEP, S.INTERRUPTED, E.RESUME): S.PENDING,
    (Level.STEP, S.INTERRUPTED, E.ABANDON): S.FAILED,
    # jobs
    (Level.JOB, S.PENDING, E.START): S.IN_PROGRESS,
    (Level.JOB, S.PENDING, E.CANCEL): S.CANCELLED,
    (Level.JOB, S.PENDING, E.INTERRUPT): S.INTERRUPTED,
    (Level.JOB, S.IN_PROGRESS, E.SUCCEED): S.SUCCESS,
    (Level.JOB, S.IN_PROGRESS, E.FAIL): S.FAILED,
    (Level.JOB, S.IN_PROGRESS, E.CANCEL): S.CANCELLED,
    (Level.JOB, S.IN_PROGRESS, E.INTERRUPT): S.INTERRUPTED,
    (Level.JOB, S.INTERRUPTED, E.RESUME): S.PENDING,
    (Level.JOB, S.INTERRUPTED, E.ABANDON): S.FAILED,
}

ALL = list(itertools.product(Level, State, Event))


@pytest.mark.parametrize(("level", "state", "event"), [t for t in ALL if t in EXPECTED])
def test_allowed_transition(level: Level, state: State, event: Event) -> None:
    assert next_state(level, state, event) is EXPECTED[(level, state, event)]
    assert event in allowed_events(level, state)


@pytest.mark.parametrize(("level", "state", "event"), [t for t in ALL if t not in EXPECTED])
def test_refused_transition(level: Level, state: State, event: Event) -> None:
    with pytest.raises(TransitionError) as info:
        next_state(level, state, event)
    assert info.value.state is state
    assert info.value.event is event
    assert event not in allowed_events(level, state)


def test_terminal_states_accept_nothing() -> None:
    for level, state in itertools.product(Level, TERMINAL):
        assert allowed_events(level, state) == frozenset()
        assert state.terminal
        assert not state.active


def test_interrupted_is_neither_active_nor_terminal() -> None:
    assert not S.INTERRUPTED.active
    assert not S.INTERRUPTED.terminal


def test_every_state_of_a_level_is_reachable_from_pending() -> None:
    for level in Level:
        seen = {S.PENDING}
        frontier = [S.PENDING]
        while frontier:
            state = frontier.pop()
            for event in allowed_events(level, state):
                new = next_state(level, state, event)
                if new not in seen:
                    seen.add(new)
                    frontier.append(new)
        assert seen == states_of(level)


def test_delivery_and_execution_timeouts_are_kept_apart() -> None:
    # A run that never started can only time out in delivery; a started one only in execution.
    for state in (S.PENDING, S.DELAYED):
        with pytest.raises(TransitionError):
            next_state(Level.RUN, state, E.EXECUTION_TIMEOUT)
    with pytest.raises(TransitionError):
        next_state(Level.RUN, S.IN_PROGRESS, E.DELIVERY_TIMEOUT)


@pytest.mark.parametrize(
    ("runs", "cancel", "expected"),
    [
        ([S.SUCCESS, S.SUCCESS], False, E.SUCCEED),
        ([S.SUCCESS, S.SUCCESS], True, E.SUCCEED),
        ([S.SUCCESS, S.FAILED], False, E.FAIL),
        ([S.SUCCESS, S.EXECUTION_TIMED_OUT], False, E.FAIL),
        ([S.SUCCESS, S.DELIVERY_TIMED_OUT], False, E.FAIL),
        ([S.FAILED, S.SKIPPED], False, E.FAIL),
        ([S.SUCCESS, S.CANCELLED], False, E.CANCEL),
        ([S.FAILED, S.CANCELLED], True, E.CANCEL),
        ([], False, E.SUCCEED),
    ],
)
def test_job_outcome(runs: list[State], cancel: bool, expected: Event) -> None:
    assert job_outcome(runs, cancel_requested=cancel) is expected


def test_job_outcome_refuses_unfinished_runs() -> None:
    for state in (S.PENDING, S.DELAYED, S.IN_PROGRESS, S.INTERRUPTED):
        with pytest.raises(ValueError, match="cannot end"):
            job_outcome([S.SUCCESS, state])
