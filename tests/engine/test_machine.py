"""The run machine and the batch tracker, without a process, a host or a database."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from vmbusops.engine.batch import BatchFailure, BatchTracker, Next
from vmbusops.engine.changes import JobChange, PendingRecord, RunChange, StepChange
from vmbusops.engine.events import RecordArrived, RunChanged
from vmbusops.engine.machine import JobMachine, Output, RunMachine, StepInfo
from vmbusops.engine.states import Event, State, TransitionError
from vmbusops.errors import GuestNotReadyError
from vmbusops.records import (
    GuestRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    ProgressRecord,
    Record,
)

S = State


def machine(*names: str, resumable: tuple[bool, ...] = (), excerpt_lines: int = 10) -> RunMachine:
    steps = [StepInfo(n, resumable=(resumable[i] if i < len(resumable) else False)) for i, n in enumerate(names)]
    return RunMachine(job_id=7, id=3, vm="web01", steps=steps, excerpt_lines=excerpt_lines, clock=lambda: 100.0)


def changes(outputs: list[Output]) -> list[object]:
    return [o for o in outputs if not isinstance(o, RunChanged)]


def record(
    run: RunMachine, rec: Record, index: int | None, *, at: float = 1.0, watched: bool = True
) -> tuple[PendingRecord, RecordArrived | None]:
    """One record through the machine: its row, and its event if watched."""
    rows, arrived = run.records([rec], at, index, watched=watched)
    assert len(rows) == 1 and len(arrived) == (1 if watched else 0)
    return rows[0], arrived[0] if arrived else None


def text(run: RunMachine, message: str, index: int | None = 0) -> GuestRecord:
    arrived = record(run, OutputRecord(value=message), index)[1]
    assert arrived is not None
    return arrived.record


def test_a_run_that_succeeds_says_each_change_once_in_order() -> None:
    run = machine("copy", "script")
    out = run.start()
    assert out == [
        RunChange(run_id=3, state=S.IN_PROGRESS, current_step=None, records=0, started_at=100.0),
        RunChanged(7, "web01", S.IN_PROGRESS, None),
    ]
    out = run.begin_step(0)
    assert out == [
        StepChange(run_id=3, index=0, state=S.IN_PROGRESS, attempts=1, started_at=100.0, clear=True),
        RunChange(run_id=3, state=None, current_step="copy", records=0),
        RunChanged(7, "web01", S.IN_PROGRESS, "copy"),
    ]
    assert run.begin_step(0) == []  # already in progress: nothing to say
    assert run.succeed_step(0) == [StepChange(run_id=3, index=0, state=S.SUCCESS, finished_at=100.0)]
    assert run.next_step() == 1
    run.begin_step(1)
    run.succeed_step(1)
    assert run.next_step() is None
    out = run.succeed()
    assert out[0] == RunChange(
        run_id=3, state=S.SUCCESS, current_step=None, records=0, finished_at=100.0, excerpt=[]
    )
    assert run.error is None and run.state is S.SUCCESS


def test_records_are_numbered_once_per_run_and_named_by_their_step() -> None:
    run = machine("a", "b")
    run.start()
    run.begin_step(0)
    first = text(run, "one")
    row, arrived = record(run, OutputRecord(value="two"), 0, at=2.0)
    assert arrived is not None
    assert (first.seq, arrived.record.seq) == (1, 2)
    assert row[:5] == (7, 3, 2, "a", 1)  # job id, run id, seq, step, attempt
    assert arrived.job_id == 7 and arrived.record.step == "a"
    outside = text(run, "three", None)
    assert (outside.seq, outside.step) == (3, None)
    # The journal's record count follows the numbering.
    run.succeed_step(0)
    assert run.begin_step(1)[1] == RunChange(run_id=3, state=None, current_step="b", records=3)


def test_with_no_watcher_a_record_is_journaled_and_kept_for_the_excerpt_but_no_event_is_made() -> None:
    run = machine("a")
    run.start()
    run.begin_step(0)
    row, arrived = record(run, OutputRecord(value="quiet"), 0, at=2.0, watched=False)
    assert arrived is None
    assert row == (7, 3, 1, "a", 1, "output", 2.0, '{"stream":"output","value":"quiet"}')
    assert run.excerpt() == ["quiet"]


def test_a_resumed_run_numbers_on_from_the_journal() -> None:
    run = machine("a")
    run.next_seq = 42
    assert [row[2] for row in run.records([OutputRecord(value="a"), OutputRecord(value="b")], 1.0, None)[0]] == [42, 43]
    assert run.next_seq == 44


def test_the_excerpt_keeps_the_head_and_the_tail_and_counts_what_it_dropped() -> None:
    run = machine("a", excerpt_lines=2)
    run.start()
    run.begin_step(0)
    for i in range(6):
        text(run, f"line {i}")
    record(run, ProgressRecord(activity="x"), 0)  # progress is shown live, never in the excerpt
    assert run.excerpt() == ["line 0", "line 1", "... (2 records not shown) ...", "line 4", "line 5"]


@pytest.mark.parametrize("watched", [True, False])
def test_a_run_of_records_at_once_is_told_as_each_alone_would_be(watched: bool) -> None:
    records: list[Record] = [OutputRecord(value=f"line {i}") for i in range(5)]
    records[2:2] = [ProgressRecord(activity="x"), InformationRecord(message_data="two\nlines")]
    alone, together = machine("a", excerpt_lines=3), machine("a", excerpt_lines=3)
    for run in (alone, together):
        run.start()
        run.begin_step(0)
        text(run, "first")
    one_by_one = [record(alone, r, 0, at=5.0, watched=watched) for r in records]
    rows, arrived = together.records(records, 5.0, 0, watched=watched)
    assert rows == [row for row, _ in one_by_one]
    assert arrived == [a for _, a in one_by_one if a is not None]
    assert [row[2] for row in rows] == [2, 3, 4, 5, 6, 7, 8]
    assert together.next_seq == alone.next_seq == 9
    assert together.excerpt() == alone.excerpt() == [
        "first", "line 0", "line 1", "... (1 records not shown) ...", "line 2", "line 3", "line 4",
    ]  # fmt: skip


def test_a_transient_failure_delays_the_step_and_the_next_attempt_starts_clean() -> None:
    run = machine("a")
    run.start()
    run.begin_step(0)
    assert run.retry_step(0, "not ready", "GuestNotReady") == [
        StepChange(run_id=3, index=0, state=S.DELAYED, error="not ready", code="GuestNotReady")
    ]
    assert run.next_step() == 0
    out = run.begin_step(0)
    assert out[0] == StepChange(run_id=3, index=0, state=S.IN_PROGRESS, attempts=2, started_at=100.0, clear=True)


def test_cancelling_ends_the_current_step_skips_the_rest_and_keeps_the_message() -> None:
    run = machine("a", "b", "c")
    run.start()
    run.begin_step(0)
    run.succeed_step(0)
    run.begin_step(1)
    out = changes(run.cancel())
    assert out[:2] == [
        StepChange(run_id=3, index=1, state=S.CANCELLED, finished_at=100.0, error="cancelled", code="Cancelled"),
        StepChange(run_id=3, index=2, state=S.SKIPPED, finished_at=100.0),
    ]
    assert isinstance(out[2], RunChange) and out[2].state is S.CANCELLED and out[2].error == "web01: cancelled"
    assert out[2].code == "Cancelled" and run.code == "Cancelled"
    assert run.step_states == [S.SUCCESS, S.CANCELLED, S.SKIPPED]


@pytest.mark.parametrize(
    ("end", "step_state", "run_state"),
    [
        (lambda r: r.fail_outside_steps("the host went away", "HostUnreachable"), S.FAILED, S.FAILED),
        (lambda r: r.execution_timed_out(5.0), S.EXECUTION_TIMED_OUT, S.EXECUTION_TIMED_OUT),
        (lambda r: r.cancel(), S.CANCELLED, S.CANCELLED),
    ],
)
def test_a_run_can_end_while_its_step_waits_out_a_retry(
    end: Callable[[RunMachine], list[Output]], step_state: State, run_state: State
) -> None:
    run = machine("a", "b")
    run.start()
    run.begin_step(0)
    run.retry_step(0, "transient", "SessionLost")
    end(run)
    assert run.step_states == [step_state, S.SKIPPED] if step_state is not S.FAILED else [step_state, S.PENDING]
    assert run.state is run_state


def test_an_event_the_run_cannot_take_changes_nothing() -> None:
    run = machine("a", "b")
    run.start()
    run.begin_step(0)
    run.cancel()
    before = (run.state, list(run.step_states), list(run.attempts))
    for end in (run.cancel, lambda: run.execution_timed_out(1), lambda: run.fail(Event.FAIL, "x", "ScriptFailed"), run.succeed):
        with pytest.raises(TransitionError):
            end()
        assert (run.state, run.step_states, run.attempts) == before


def test_delivery_timeout_and_max_errors_end_a_run_that_never_started() -> None:
    late = machine("a")
    assert late.wait()[0] == RunChange(run_id=3, state=S.DELAYED, current_step=None, records=0)
    assert late.wait() == []  # said once
    late.delivery_timed_out(30)
    assert (late.state, late.error) == (S.DELIVERY_TIMED_OUT, "web01: not started within the delivery timeout (30s)")
    skipped = machine("a", "b")
    skipped.skip(3, 2)
    assert skipped.step_states == [S.SKIPPED, S.SKIPPED]
    assert skipped.error == "not started: 3 runs failed, more than max errors (2)"


def interrupted(*resumable: bool) -> RunMachine:
    run = machine(*(f"s{i}" for i in range(len(resumable))), resumable=resumable)
    run.state = S.INTERRUPTED
    run.step_states = [S.SUCCESS, S.INTERRUPTED, *[S.PENDING] * (len(resumable) - 2)]
    return run


def test_resume_runs_an_interrupted_step_again_when_it_may() -> None:
    run = interrupted(False, True, False)
    run.resume(abandon=False)
    assert run.state is S.PENDING and run.step_states == [S.SUCCESS, S.PENDING, S.PENDING]
    assert run.next_step() == 1


def test_resume_abandons_a_run_whose_interrupted_step_may_not_run_again() -> None:
    run = interrupted(True, False, True)
    run.resume(abandon=False)
    assert run.state is S.FAILED
    assert run.error == "step s1 was interrupted and is not idempotent, so it is not run again"
    assert run.step_states == [S.SUCCESS, S.FAILED, S.SKIPPED]


def test_the_abandon_policy_abandons_even_a_resumable_step() -> None:
    run = interrupted(True, True)
    run.resume(abandon=True)
    assert run.state is S.FAILED and "resume policy is abandon" in (run.error or "")
    assert machine("a").resume(abandon=True) == []  # only an interrupted run is resumed


# Every sequence of up to four run-level events: each either is refused with nothing changed, or
# leaves the machine in the state its last journal change says.
_EVENTS: dict[str, Callable[[RunMachine], list[Output]]] = {
    "wait": lambda r: r.wait(),
    "start": lambda r: r.start(),
    "begin": lambda r: r.begin_step(r.next_step() if r.next_step() is not None else 0),
    "step-ok": lambda r: r.succeed_step(r.current if r.current is not None else 0),
    "retry": lambda r: r.retry_step(r.current if r.current is not None else 0, "transient", "SessionLost"),
    "succeed": lambda r: r.succeed(),
    "fail": lambda r: r.fail(Event.FAIL, "step failed", "ScriptFailed"),
    "outside": lambda r: r.fail_outside_steps("host gone", "HostUnreachable"),
    "timeout": lambda r: r.execution_timed_out(1.0),
    "cancel": lambda r: r.cancel(),
    "late": lambda r: r.delivery_timed_out(1.0),
}


def test_every_short_sequence_of_events_keeps_machine_and_journal_agreed() -> None:
    checked = 0
    for n in range(1, 5):
        for names in itertools.product(_EVENTS, repeat=n):
            run = machine("a", "b")
            journal_run: State = run.state
            journal_steps = list(run.step_states)
            for name in names:
                before = (run.state, list(run.step_states), list(run.attempts), run.next_seq)
                try:
                    out = _EVENTS[name](run)
                except TransitionError:
                    assert (run.state, run.step_states, run.attempts, run.next_seq) == before, names
                    continue
                for o in out:
                    if isinstance(o, RunChange) and o.state is not None:
                        journal_run = o.state
                    elif isinstance(o, StepChange):
                        journal_steps[o.index] = o.state
                assert (journal_run, journal_steps) == (run.state, run.step_states), names
                if run.state.terminal:
                    assert all(s.terminal or s is S.PENDING for s in run.step_states), names
                checked += 1
    assert checked > 10_000


def test_the_job_counts_errors_and_ends_with_its_runs() -> None:
    runs = [machine("a"), machine("a")]
    job = JobMachine(id=7, runs=runs, max_errors=0, clock=lambda: 5.0)
    assert job.start() == [JobChange(job_id=7, state=S.IN_PROGRESS, started_at=5.0)]
    runs[0].start()
    runs[0].fail(Event.FAIL, "boom", "ScriptFailed")
    job.run_ended(runs[0])
    assert job.over_max_errors
    runs[1].skip(job.errors, job.max_errors)
    job.run_ended(runs[1])
    assert job.finish() == [JobChange(job_id=7, state=S.FAILED, finished_at=5.0)]


# ---------------------------------------------------------------------- the batch tracker
def test_a_batch_whose_steps_all_end_well_has_no_failure() -> None:
    t = BatchTracker((2, 3))
    assert [t.begin(2), t.end(2, None), t.begin(3), t.end(3, None)] == [Next.BEGIN, Next.ENDED] * 2
    assert t.current is None and t.finish(None, PipelineState.COMPLETED) is None


def test_a_failed_step_stops_the_batch_with_its_first_error_as_headline() -> None:
    t = BatchTracker((0, 1))
    t.begin(0)
    t.error_record("Access is denied")
    t.error_record("a second error")
    assert t.end(0, "the script wrote 2 error record(s)") is Next.STOP
    assert t.finish(None, PipelineState.STOPPED) == BatchFailure(
        0, "Access is denied (the script wrote 2 error record(s))"
    )


def test_markers_of_other_steps_are_ignored_and_a_guest_that_goes_on_is_stopped() -> None:
    t = BatchTracker((4,))
    assert t.begin(9) is Next.IGNORE and t.end(9, None) is Next.IGNORE
    t.begin(4)
    t.end(4, "the script ended with exit code 2")
    assert t.end(4, None) is Next.STOP  # a second end of a failed step
    u = BatchTracker((0, 1))
    u.begin(0)
    u.failed[0] = "failed"  # as end() records it
    assert u.begin(1) is Next.STOP


def test_an_invocation_that_fails_blames_the_step_that_was_running_or_next() -> None:
    error = GuestNotReadyError("web01: PowerShell Direct is not ready", vm="web01")
    t = BatchTracker((0, 1, 2))
    t.begin(0)
    t.end(0, None)
    assert t.finish(error, None) == BatchFailure(1, str(error), error)
    t.begin(1)
    assert t.finish(error, None) == BatchFailure(1, str(error), error)


def test_a_pipeline_that_ends_mid_step_fails_that_step() -> None:
    t = BatchTracker((0,))
    t.begin(0)
    assert t.finish(None, PipelineState.STOPPED) == BatchFailure(0, "the pipeline ended Stopped", code="Cancelled")
    assert t.finish(None, None) == BatchFailure(0, "the pipeline ended without a state")
    # Completed without the step's end marker: no failure; the caller marks the step done.
    assert t.finish(None, PipelineState.COMPLETED) is None and t.current == 0


def test_agent_notes_are_journaled_as_information() -> None:
    run = machine("a")
    row, _ = record(run, InformationRecord(message_data="hi"), 0)
    assert row[2] == 1 and run.excerpt() == ["hi"]


# ---------------------------------------------------------------------- the executor registry
def test_every_step_kind_has_exactly_one_executor() -> None:
    from vmbusops.bundle.manifest import StepKind
    from vmbusops.engine.executors import EXECUTORS

    assert set(EXECUTORS) == set(StepKind)
    assert len({id(e) for e in EXECUTORS.values()}) == len(StepKind)
