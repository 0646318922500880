"""A fleet run carried on by this host's engine, and the commits a fleet agent forwards from it.

The engine runs over the simulator; the "controller" here is a second journal that applies the
batches the first engine's commit tap gave, through the JSON form they cross the broker in: the
path the fleet's controller takes.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import credential_for, harness_for, source

from vmbusops.bundle.manifest import Manifest
from vmbusops.engine import Journal, RecordArrived, RunChanged, RunStart, State
from vmbusops.engine.changes import Change, JobChange, PendingRecord, RunChange, StepChange
from vmbusops.engine.changes_json import change_from_json, change_to_json
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.machine import RunMachine, StepInfo
from vmbusops.engine.states import TransitionError
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import FailureCode
from vmbusops.guestops.host import HyperVHost
from vmbusops.owner import current_owner
from vmbusops.records import OutputRecord

S = State
Batch = tuple[list[StoredRecord], list[Change]]


def three_steps(*, idempotent: bool = False, execution: dict[str, object] | None = None) -> Manifest:
    return manifest(
        ["vm01"],
        [
            script("one", "Set-Content -Path 'C:\\one.txt' -Value 'ran'\nWrite-Output 'one'"),
            script("two", "Write-Output 'two a'\nWrite-Output 'two b'", idempotent=idempotent),
            script("three", "Write-Output 'three'"),
        ],
        execution=execution,
    )


def steps_of(journal: Journal, job_id: int) -> list[tuple[str, State, int]]:
    run = journal.runs(job_id)[0]
    return [(s.name, s.state, s.attempts) for s in journal.steps(run.id)]


async def one_ran(host: HyperVHost) -> bool:
    """Whether step one's script ran in vm01 (it leaves a file)."""
    done, outcome = await host.run_in_guest("vm01", "Test-Path 'C:\\one.txt'", credential_for("x"))
    assert outcome.ok
    return [r.record.value for r in done if isinstance(r.record, OutputRecord)] == [True]


# ------------------------------------------------------------------ carrying a run on


async def test_a_run_whose_first_step_succeeded_elsewhere_runs_only_the_rest(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    start = RunStart((S.SUCCESS, S.PENDING, S.PENDING), (1, 0, 0), next_seq=7)
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_fleet_run(source(three_steps()), "vm01", start)
        ran_one = await one_ran(h.host)
    assert result.state is S.SUCCESS, result.errors
    assert not ran_one  # step one's script never ran on this host
    assert steps_of(h.journal, result.job_id) == [("one", S.SUCCESS, 1), ("two", S.SUCCESS, 1), ("three", S.SUCCESS, 1)]
    records = h.journal.records(result.job_id)
    # Numbered on from the fleet run's next seq: no number it used is used again, none is skipped.
    assert [r.seq for r in records] == list(range(7, 7 + len(records)))
    assert {r.step for r in records} - {None} == {"two", "three"}  # None: the pipeline's own end
    run = h.journal.runs(result.job_id)[0]
    assert (run.state, run.records) == (S.SUCCESS, 6 + len(records))
    assert h.journal.job(result.job_id).state is S.SUCCESS


async def test_a_step_running_elsewhere_that_is_not_idempotent_abandons_the_run(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    start = RunStart((S.SUCCESS, S.IN_PROGRESS, S.PENDING), (1, 1, 0), next_seq=4)
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_fleet_run(source(three_steps()), "vm01", start)
    assert result.state is S.FAILED
    assert result.errors["vm01"] == "step two was interrupted and is not idempotent, so it is not run again"
    assert steps_of(h.journal, result.job_id) == [("one", S.SUCCESS, 1), ("two", S.FAILED, 1), ("three", S.SKIPPED, 0)]
    run = h.journal.runs(result.job_id)[0]
    assert (run.state, run.code, run.records) == (S.FAILED, FailureCode.ABANDONED, 3)
    assert h.journal.steps(run.id)[1].code == FailureCode.ABANDONED
    assert h.journal.records(result.job_id) == []
    assert h.journal.job(result.job_id).state is S.FAILED


async def test_a_step_running_elsewhere_that_is_idempotent_runs_again(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    # Waiting out a retry's backoff there is running too: the step's attempt goes on counting.
    start = RunStart((S.SUCCESS, S.DELAYED, S.PENDING), (1, 2, 0), next_seq=4)
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_fleet_run(source(three_steps(idempotent=True)), "vm01", start)
    assert result.state is S.SUCCESS, result.errors
    assert steps_of(h.journal, result.job_id) == [("one", S.SUCCESS, 1), ("two", S.SUCCESS, 3), ("three", S.SUCCESS, 1)]
    records = h.journal.records(result.job_id)
    assert [r.seq for r in records] == list(range(4, 4 + len(records)))
    assert {r.attempt for r in records if r.step == "two"} == {3}


async def test_the_abandon_policy_abandons_a_run_whose_step_was_running_elsewhere(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    m = three_steps(idempotent=True, execution={"resume": "abandon"})
    start = RunStart((S.SUCCESS, S.IN_PROGRESS, S.PENDING), (1, 1, 0), next_seq=4)
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_fleet_run(source(m), "vm01", start)
        # A start with nothing running goes on even under that policy.
        ok = await h.engine.run_fleet_run(source(m), "vm01", RunStart((S.SUCCESS, S.PENDING, S.PENDING), (1, 0, 0), 4))
    assert result.state is S.FAILED
    assert result.errors["vm01"] == (
        "the run left its previous host while it ran and the bundle's resume policy is abandon"
    )
    assert ok.state is S.SUCCESS


async def test_a_run_without_a_start_is_a_fresh_one_vm_job(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(["vm*"], [script("hi", "Write-Output 'hi'")])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_fleet_run(source(m), "vm02", None)
    assert result.state is S.SUCCESS and result.runs == {"vm02": S.SUCCESS}
    assert [r.seq for r in h.journal.records(result.job_id)] == [1, 2]  # the output and the pipeline's end


async def test_a_start_that_does_not_fit_the_bundle_is_refused_before_anything_is_journaled(
    lab_dir: Path, tmp_path: Path
) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        with pytest.raises(ValueError, match="the run start has 2 step states but the bundle has 3 steps"):
            await h.engine.run_fleet_run(source(three_steps()), "vm01", RunStart((S.SUCCESS, S.PENDING), (1, 0), 3))
        assert h.journal.jobs() == []


@pytest.mark.parametrize(
    ("states", "attempts", "next_seq", "message"),
    [
        ((S.SUCCESS,), (1, 0), 1, "1 step states but 2 attempt counts"),
        ((S.FAILED,), (1,), 1, "cannot go on from a step in state"),
        ((S.PENDING,), (-1,), 1, "attempts must be a whole number >= 0"),
        ((S.PENDING,), (0,), 0, "next_seq must be a whole number >= 1"),
    ],
)
def test_a_run_start_that_makes_no_sense_is_refused(
    states: tuple[State, ...], attempts: tuple[int, ...], next_seq: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RunStart(states, attempts, next_seq)


def test_only_a_run_that_has_not_begun_here_carries_on() -> None:
    run = RunMachine(job_id=1, id=2, vm="vm01", steps=[StepInfo("a"), StepInfo("b")], clock=lambda: 5.0)
    out = run.carry_on([S.SUCCESS, S.PENDING], [1, 0], 4, abandon=False, cause="moved")
    assert out == [
        StepChange(run_id=2, index=0, state=S.SUCCESS, attempts=1),
        RunChange(run_id=2, state=None, current_step=None, records=3),
    ]
    assert run.next_step() == 1 and run.next_seq == 4
    run.start()
    with pytest.raises(TransitionError, match="has begun here already"):
        run.carry_on([S.SUCCESS, S.PENDING], [1, 0], 4, abandon=False, cause="moved")


async def test_cancel_stops_a_carried_on_run(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    loop = "1..200 | ForEach-Object { Write-Output $_; Start-Sleep -Milliseconds 20 }"
    m = manifest(["vm01"], [script("one", "Write-Output 1"), script("loop", loop), script("after", "Write-Output 2")])
    start = RunStart((S.SUCCESS, S.PENDING, S.PENDING), (1, 0, 0), next_seq=10)
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        created: list[int] = []
        results = []
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:

                async def run() -> None:
                    results.append(await h.engine.run_fleet_run(source(m), "vm01", start, on_created=created.append))

                nursery.start_soon(run)
                while not any(isinstance(e, RecordArrived) for e in h.events):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                h.engine.cancel(created[0])
    [result] = results
    assert result.state is S.CANCELLED and result.runs == {"vm01": S.CANCELLED}
    assert steps_of(h.journal, created[0]) == [("one", S.SUCCESS, 1), ("loop", S.CANCELLED, 1), ("after", S.SKIPPED, 0)]
    records = h.journal.records(created[0])
    assert 0 < len(records) < 200
    assert records[0].seq == 10


# ------------------------------------------------------------------ the commit tap


def tap(writer: JournalWriter) -> list[Batch]:
    """Every commit the writer makes from now on, as its tap tells it."""
    batches: list[Batch] = []
    writer.on_applied = lambda stored, changes: batches.append((list(stored), list(changes)))
    return batches


def through_the_broker(changes: Sequence[Change], *, run_id: int, job_id: int) -> list[Change]:
    """The changes as a fleet agent sends them (no ids: the batch names the run) and the
    controller reads them back, bound to its own run."""
    wire = json.loads(json.dumps([change_to_json(c, ids=False) for c in changes]))
    return [change_from_json(d, run_id=run_id, job_id=job_id) for d in wire]


def new_job(journal: Journal, vms: Sequence[str], steps: Sequence[str]) -> tuple[int, dict[str, int]]:
    return journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id="id", source="fleet", manifest="{}", bundle_dir=None,
        enable_guest_services=False, envelope=None, host="fleet", vms=vms,
        steps=[(s, "script") for s in steps], owner=current_owner(), now=1.0,
    )  # fmt: skip


def rows_for(stored: Sequence[StoredRecord], job_id: int, run_id: int) -> list[PendingRecord]:
    return [(job_id, run_id, *r[3:]) for r in stored]


def as_shown(journal: Journal, job_id: int) -> list[tuple[object, ...]]:
    """A job's runs, steps and records, without their ids."""
    out: list[tuple[object, ...]] = []
    for run in journal.runs(job_id):
        out.append(("run", dataclasses.replace(run, id=0, job_id=0)))
        out += [("step", dataclasses.replace(s, run_id=0)) for s in journal.steps(run.id)]
        out += [("record", dataclasses.replace(r, run_id=0)) for r in journal.records(job_id, vm=run.vm)]
    return out


async def test_the_commit_tap_tells_every_change_in_the_order_the_journal_applied_it(
    lab_dir: Path, tmp_path: Path
) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(
        ["vm*"],
        [script("one", "1..30 | ForEach-Object { Write-Output $_ }"), script("two", "Write-Warning 'w'\nWrite-Output 2")],
        execution={"max_concurrency": 2},
    )
    async with harness_for(lab, tmp_path / "j.sqlite", flush_records=7) as h:
        batches = tap(h.engine.writer)
        result = await h.engine.run_job(source(m))
    assert result.state is S.SUCCESS, result.errors
    assert batches and all(stored or changes for stored, changes in batches)
    # The records, as stored, numbered, in commit order: all the journal holds, each once.
    assert [r for stored, _ in batches for r in stored] == h.journal.stored_records(result.job_id)
    changes = [c for _, cs in batches for c in cs]
    assert isinstance(changes[0], JobChange) and changes[-1] == JobChange(
        job_id=result.job_id, state=S.SUCCESS, finished_at=h.journal.job(result.job_id).finished_at
    )
    # Applying the same batches to another journal, under its own ids, gives the same job: what a
    # fleet controller's journal does with a host's forwarded commits.
    other = Journal(tmp_path / "other.sqlite")
    new_job(other, ["vmx"], ["x"])  # ids there differ from the engine's
    job_id, runs = new_job(other, ["vm01", "vm02"], ["one", "two"])
    run_of = {h.journal.run_ids(result.job_id)[vm]: runs[vm] for vm in runs}
    for stored, cs in batches:
        rows = [(job_id, run_of[r[2]], *r[3:]) for r in stored]
        mapped = [
            dataclasses.replace(c, job_id=job_id) if isinstance(c, JobChange) else dataclasses.replace(c, run_id=run_of[c.run_id])
            for c in cs
        ]
        other.apply(rows, mapped)
    assert as_shown(other, job_id) == as_shown(h.journal, result.job_id)  # the same n included
    copy, original = other.job(job_id), h.journal.job(result.job_id)
    assert (copy.state, copy.started_at, copy.finished_at) == (original.state, original.started_at, original.finished_at)


async def test_a_controller_journal_applies_two_hosts_runs_as_their_journals_hold_them(
    lab_dir: Path, tmp_path: Path
) -> None:
    """A fleet job of two runs: one from its start on host A, one carried on at host B after its
    first step and four records elsewhere. The controller's journal gets each host's batches
    through JSON, bound to its own run ids; each run then reads as the host that ran it has it,
    after what came before, and the job's record numbers follow commit order with no gap."""
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(["vm*"], [script("one", "Write-Output 1"), script("two", "1..5 | ForEach-Object { Write-Output $_ }", idempotent=True)])
    async with harness_for(lab, tmp_path / "a.sqlite") as a, harness_for(lab, tmp_path / "b.sqlite") as b:
        batches_a, batches_b = tap(a.engine.writer), tap(b.engine.writer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.engine.run_fleet_run, source(m), "vm01", None)
            start = RunStart((S.SUCCESS, S.IN_PROGRESS), (1, 1), next_seq=5)
            nursery.start_soon(b.engine.run_fleet_run, source(m), "vm02", start)
    [job_a] = [j.id for j in a.journal.jobs()]
    [job_b] = [j.id for j in b.journal.jobs()]
    controller = Journal(tmp_path / "controller.sqlite")
    job_id, runs = new_job(controller, ["vm01", "vm02"], ["one", "two"])
    # What the controller had of vm02 before host B: four records from the host that lost it.
    earlier = [(job_id, runs["vm02"], seq, "one", 1, "output", 1.0, '{"value": 1}') for seq in range(1, 5)]
    controller.apply(earlier, [StepChange(run_id=runs["vm02"], index=0, state=S.SUCCESS, attempts=1)])
    # The hosts' batches interleave at the controller; each host's stay in their order.
    from_a = [(runs["vm01"], a.journal.run_ids(job_a)["vm01"], batch) for batch in batches_a]
    from_b = [(runs["vm02"], b.journal.run_ids(job_b)["vm02"], batch) for batch in batches_b]
    order = [x for pair in itertools.zip_longest(from_a, from_b) for x in pair if x is not None]
    for fleet_run, local_run, (stored, cs) in order:
        # What a fleet agent forwards of a commit: its run's records and run and step changes.
        of_run = [c for c in cs if not isinstance(c, JobChange) and c.run_id == local_run]
        if stored or of_run:
            controller.apply(rows_for(stored, job_id, fleet_run), through_the_broker(of_run, run_id=fleet_run, job_id=job_id))
    stored_all = controller.stored_records(job_id)
    assert [r[1] for r in stored_all] == list(range(1, len(stored_all) + 1))
    for vm, journal_of, local_job in (("vm01", a.journal, job_a), ("vm02", b.journal, job_b)):
        fleet_run, local_run = runs[vm], journal_of.run_ids(local_job)[vm]
        [at_host] = [dataclasses.replace(r, id=0, job_id=0) for r in journal_of.runs(local_job)]
        [at_controller] = [dataclasses.replace(r, id=0, job_id=0) for r in controller.runs(job_id) if r.vm == vm]
        assert at_controller == at_host
        assert [dataclasses.replace(s, run_id=0) for s in controller.steps(fleet_run)] == [
            dataclasses.replace(s, run_id=0) for s in journal_of.steps(local_run)
        ]
        local = [(r.seq, r.step, r.attempt, r.content) for r in journal_of.records(local_job)]
        held = [(r.seq, r.step, r.attempt, r.content) for r in controller.records(job_id, vm=vm)]
        assert held[len(held) - len(local) :] == local
    vm02 = controller.records(job_id, vm="vm02")
    assert [r.seq for r in vm02] == list(range(1, len(vm02) + 1))
    assert [s.attempts for s in controller.steps(runs["vm02"])] == [1, 2]  # step two ran again on B
    assert {r.state for r in controller.runs(job_id)} == {S.SUCCESS}


async def test_the_tap_is_told_nothing_of_a_commit_that_wrote_nothing(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job_id, runs = new_job(journal, ["vm01"], ["one"])
    writer = JournalWriter(journal)
    batches = tap(writer)
    events: list[object] = []
    writer.on_commit = lambda stored, changed: events.append(changed)
    await writer.commit()  # nothing queued
    # A progress note: an event for the followers, no change to the journal.
    writer.change([], [RunChanged(job_id, "vm01", S.IN_PROGRESS, "one: 50%")])
    await writer.commit()
    assert batches == [] and len(events) == 1
    change = StepChange(run_id=runs["vm01"], index=0, state=S.IN_PROGRESS, attempts=1)
    writer.change([change])
    await writer.commit()
    assert batches == [([], [change])]
