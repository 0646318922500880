"""Rate control, timeouts, cancellation and VM exclusivity, measured over the simulator."""

from __future__ import annotations

import re
from pathlib import Path

import trio
from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import credential_for, harness_for, source

from vmbusops.engine import EngineEvent, Journal, RunChanged, State
from vmbusops.records import OutputRecord


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    peak = current = 0
    for _, delta in points:
        current += delta
        peak = max(peak, current)
    return peak


def run_story(events: list[EngineEvent], job_id: int | None = None) -> list[tuple[str, State]]:
    """Each run's state changes, in the order the engine made them (a step's progress left out)."""
    story: list[tuple[str, State]] = []
    last: dict[tuple[int, str], State] = {}
    for e in events:
        if isinstance(e, RunChanged) and (job_id is None or e.job_id == job_id):
            if last.get((e.job_id, e.vm)) is not e.state:
                story.append((e.vm, e.state))
            last[(e.job_id, e.vm)] = e.state
    return story


def peak_in_progress(story: list[tuple[str, State]]) -> int:
    """The most runs in progress at once, from the engine's own story."""
    active: set[str] = set()
    peak = 0
    for vm, state in story:
        if state is State.IN_PROGRESS:
            active.add(vm)
        elif state.terminal:
            active.discard(vm)
        peak = max(peak, len(active))
    return peak


def guest_intervals(journal: Journal, job_id: int) -> dict[str, tuple[float, float]]:
    """When each guest was producing records (times the agent received them)."""
    spans: dict[str, tuple[float, float]] = {}
    for rec in journal.records(job_id):
        if rec.stream == "state":
            continue
        a, b = spans.get(rec.vm, (rec.time, rec.time))
        spans[rec.vm] = (min(a, rec.time), max(b, rec.time))
    return spans


SLOW = "Write-Output 'start'\nStart-Sleep -Milliseconds 300\nWrite-Output 'end'"


async def test_max_concurrency_is_never_exceeded(lab_dir: Path, tmp_path: Path) -> None:
    vms = [VM(f"vm{i:02d}") for i in range(8)]
    lab = write_lab(lab_dir, vms)
    m = manifest(["vm*"], [script("slow", SLOW)], execution={"max_concurrency": "25%"})
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
        spans = guest_intervals(h.journal, result.job_id)
    assert result.state is State.SUCCESS
    assert len(spans) == 8
    # 25% of 8 is 2: the engine never has more than two runs in progress, and does have two...
    story = run_story(h.events)
    assert peak_in_progress(story) == 2, story
    # ...so the guests' output windows never overlap by more than two...
    assert max_overlap(list(spans.values())) == 2
    # ...every run but the first two was reported delayed while it waited for a slot...
    starts = [vm for vm, state in story if state is State.IN_PROGRESS]
    delayed = [vm for vm, state in story if state is State.DELAYED]
    assert sorted(starts) == [vm.name for vm in vms]
    assert sorted(delayed) == sorted(starts[2:]), story
    # ...and each of them started only after a run before it had ended and freed its slot.
    for vm in starts[2:]:
        at = story.index((vm, State.IN_PROGRESS))
        ended = sum(1 for _, state in story[:at] if state.terminal)
        started = sum(1 for _, state in story[:at] if state is State.IN_PROGRESS)
        assert started - ended < 2, f"{vm} started while two runs were in progress: {story}"


async def test_max_errors_stops_widening_exactly(lab_dir: Path, tmp_path: Path) -> None:
    # Every target fails. With one at a time and max errors 2, the third failure exceeds it:
    # three runs fail and every other run is skipped without starting.
    lab = write_lab(lab_dir, [VM(f"vm{i:02d}") for i in range(7)])
    m = manifest(
        ["vm*"],
        [script("bad", "Write-Error 'patch failed'")],
        execution={"max_concurrency": 1, "max_errors": 2},
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
        runs = h.journal.runs(result.job_id)
    states = sorted(r.state for r in runs)
    assert states.count(State.FAILED) == 3
    assert states.count(State.SKIPPED) == 4
    # One at a time, and nothing started after the third failure.
    story = run_story(h.events)
    assert peak_in_progress(story) == 1
    third_failure = [i for i, (_, state) in enumerate(story) if state is State.FAILED][2]
    assert not any(state is State.IN_PROGRESS for _, state in story[third_failure:]), story
    for run in runs:
        if run.state is State.SKIPPED:
            assert run.started_at is None
            assert "max errors" in (run.error or "")
        else:
            assert "patch failed" in (run.error or "")
    assert result.state is State.FAILED


async def test_max_errors_zero_with_two_in_flight(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM(f"vm{i:02d}") for i in range(6)])
    m = manifest(
        ["vm*"],
        [script("bad", "Start-Sleep -Milliseconds 200\nWrite-Error 'no'")],
        execution={"max_concurrency": 2, "max_errors": 0},
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
    states = list(result.runs.values())
    # The two that started together both fail; the first failure stops every later start.
    assert states.count(State.FAILED) == 2
    assert states.count(State.SKIPPED) == 4
    story = run_story(h.events)
    assert peak_in_progress(story) == 2, story
    first_failure = next(i for i, (_, state) in enumerate(story) if state is State.FAILED)
    assert [vm for vm, state in story if state is State.IN_PROGRESS] == [
        vm for vm, state in story[:first_failure] if state is State.IN_PROGRESS
    ], story


async def test_delivery_and_execution_timeouts_are_told_apart(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(
        ["vm01", "vm02"],
        [script("hang", "Write-Output 'begin'\nStart-Sleep -Seconds 30\nWrite-Output 'never'")],
        execution={"max_concurrency": 1, "target_timeout_seconds": 1, "delivery_timeout_seconds": 0.5},
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        with trio.fail_after(10):
            result = await h.engine.run_job(source(m))
        runs = {r.vm: r for r in h.journal.runs(result.job_id)}
        texts = [r.content.get("value") for r in h.journal.records(result.job_id)]
    states = sorted(r.state for r in runs.values())
    assert states == [State.DELIVERY_TIMED_OUT, State.EXECUTION_TIMED_OUT]
    started = next(r for r in runs.values() if r.state is State.EXECUTION_TIMED_OUT)
    waiting = next(r for r in runs.values() if r.state is State.DELIVERY_TIMED_OUT)
    assert started.started_at is not None
    assert waiting.started_at is None
    assert "begin" in texts
    assert "never" not in texts
    steps = h.journal.steps(started.id)
    assert steps[0].state is State.EXECUTION_TIMED_OUT


async def test_step_timeout_inside_a_batch_is_the_steps_own(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    m = manifest(
        ["vm01"],
        [
            script("quick", "Start-Sleep -Milliseconds 400\nWrite-Output 'a'", timeout_seconds=2),
            script("slow", "Start-Sleep -Seconds 20", timeout_seconds=0.5),
            script("after", "Write-Output 'b'"),
        ],
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        with trio.fail_after(10):
            result = await h.engine.run_job(source(m))
        run = h.journal.runs(result.job_id)[0]
        steps = h.journal.steps(run.id)
    assert result.runs["vm01"] is State.EXECUTION_TIMED_OUT
    assert [s.state for s in steps] == [State.SUCCESS, State.EXECUTION_TIMED_OUT, State.SKIPPED]


async def test_cancel_mid_step_stops_the_guest_pipeline(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01")])
    long_loop = (
        "1..200 | ForEach-Object { Write-Output $_; Start-Sleep -Milliseconds 20 }\n"
        "Set-Content -Path 'C:\\done.txt' -Value 'finished'"
    )
    m = manifest(["vm01"], [script("loop", long_loop), script("next", "Write-Output 'next'")])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                job_ids: list[int] = []

                async def run() -> None:
                    await h.engine.run_job(source(m), on_created=job_ids.append)

                nursery.start_soon(run)
                # Wait until the guest is mid-step, then cancel the way `vmbusops jobs cancel` does.
                while not any(getattr(e, "record", None) is not None for e in h.events):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                await trio.sleep(0.3)
                Journal(tmp_path / "j.sqlite").request_cancel(job_ids[0])
        count_at_end = len(h.journal.records(job_ids[0]))
        await trio.sleep(0.5)
        # Nothing more arrives, and the guest never reached the end of its script.
        assert len(h.journal.records(job_ids[0])) == count_at_end
        done, outcome = await h.host.run_in_guest(
            "vm01",
            "Test-Path 'C:\\done.txt'",
            credential_for("x"),
        )
        run = h.journal.runs(job_ids[0])[0]
        steps = h.journal.steps(run.id)
        job = h.journal.job(job_ids[0])
    assert 0 < count_at_end < 200
    assert outcome.ok
    # The step was stopped inside the guest: the line after its loop never ran.
    assert [r.record.value for r in done if isinstance(r.record, OutputRecord)] == [False]
    assert run.state is State.CANCELLED
    assert [s.state for s in steps] == [State.CANCELLED, State.SKIPPED]
    assert job.state is State.CANCELLED


async def test_vm_switched_off_mid_run_fails_that_run_only(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(
        ["vm01", "vm02"],
        [
            script("first", "Write-Output 'a'\nStart-Sleep -Milliseconds 600\nWrite-Output 'b'"),
            {"kind": "wait-ready", "name": "ready"},
            script("second", "Write-Output 'c'"),
        ],
        execution={"max_concurrency": 2, "max_errors": 5},
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        async with trio.open_nursery() as nursery:
            results = []

            async def run() -> None:
                results.append(await h.engine.run_job(source(m)))

            nursery.start_soon(run)
            await trio.sleep(0.3)
            await h.host.stop_vm("vm02", turn_off=True)
        result = results[0]
        steps = {r.vm: h.journal.steps(r.id) for r in h.journal.runs(result.job_id)}
    assert result.runs == {"vm01": State.SUCCESS, "vm02": State.FAILED}
    # Off in the middle of the first step, or just after it: either way the failure says so.
    assert re.fullmatch(
        r"step (first|ready): vm02: (The virtual machine vm02 is not in running state\.|the VM is Off, it will not become ready on its own)(\n.*)?",
        result.errors["vm02"],
        re.DOTALL,
    ), result.errors["vm02"]
    assert [s.state for s in steps["vm01"]] == [State.SUCCESS] * 3
    assert steps["vm02"][2].state is State.SKIPPED


async def test_two_jobs_never_touch_one_vm_at_once(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    body = "Write-Output 'in'\nStart-Sleep -Milliseconds 300\nWrite-Output 'out'"
    a = manifest(["vm01", "vm02"], [script("a", body)], execution={"max_concurrency": 2}, name="job-a")
    b = manifest(["vm01"], [script("b", body)], name="job-b")
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        results = []

        async def run(m: object) -> None:
            results.append(await h.engine.run_job(source(m)))  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, a)
            nursery.start_soon(run, b)
        spans = [guest_intervals(h.journal, r.job_id)["vm01"] for r in results]
    assert all(r.state is State.SUCCESS for r in results)
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end < second_start, f"vm01 was used by two jobs at once: {spans}"
    # The engine's own story agrees: vm01's run in one job ended before the other's started.
    vm01 = [(e.job_id, e.state) for e in h.events if isinstance(e, RunChanged) and e.vm == "vm01" and e.step is None]
    first_job = next(job for job, state in vm01 if state is State.IN_PROGRESS)
    handover = vm01.index((first_job, State.SUCCESS))
    assert all(job == first_job for job, state in vm01[:handover] if state is State.IN_PROGRESS), vm01
    # The other job's run waited, reported as delayed, and started after the handover.
    (second_job,) = {job for job, _ in vm01} - {first_job}
    assert vm01.index((second_job, State.DELAYED)) < handover < vm01.index((second_job, State.IN_PROGRESS)), vm01
