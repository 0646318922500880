"""A scheduled tick's job never starts a target after the tick's cut-off, even resumed: the
cut-off is journaled with the job (``start_by``), so ``jobs resume`` after it ends the runs that
never started as delivery-timed-out, and only carries on the ones that had."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import trio
from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import harness_for, source

from vmbusops.engine import State

#: Seconds from the job's start to its cut-off: long enough that the first run starts and the
#: second waits for its slot, short enough to wait out before the resume.
CUTOFF = 1.5


@pytest.mark.parametrize("max_errors", [1, 0])
async def test_a_resumed_scheduled_job_starts_nothing_after_the_cut_off(
    lab_dir: Path, tmp_path: Path, max_errors: int
) -> None:
    """With max errors 0, the late run's timeout is over max errors before the begun run goes on:
    max errors keeps runs from starting, and the begun run is not starting (as in a job never
    interrupted, where a run under way is not stopped by another's failure)."""
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02")])
    m = manifest(
        ["vm01", "vm02"], [script("hold", "Start-Sleep -Seconds 1; Write-Output 'held'", idempotent=True)],
        execution={"max_concurrency": 1, "max_errors": max_errors},
    )  # fmt: skip
    start_by = time.time() + CUTOFF
    job_source = dataclasses.replace(source(m), start_by=start_by)
    journal_file = tmp_path / "j.sqlite"
    async with harness_for(lab, journal_file) as first:
        with trio.move_on_after(0.5):  # the process stops under the job: one run in progress, one waiting
            await first.engine.run_job(job_source)
        [job] = first.journal.jobs(limit=1)
        assert job.state is State.INTERRUPTED and job.start_by == start_by
    await trio.sleep(max(0.0, start_by - time.time()) + 0.1)  # past the cut-off
    async with harness_for(lab, journal_file) as second:
        result = await second.engine.resume_job(job.id, recheck=None)
        runs = {r.vm: r for r in second.journal.runs(job.id)}
    started = [vm for vm, r in runs.items() if r.started_at is not None and r.state is State.SUCCESS]
    waiting = [vm for vm in runs if vm not in started]
    assert len(started) == 1 and len(waiting) == 1, runs  # the one that had started carried on
    assert runs[waiting[0]].state is State.DELIVERY_TIMED_OUT
    assert "not started by its schedule's cut-off" in (runs[waiting[0]].error or "")
    assert result.state is State.FAILED


async def test_max_errors_reached_before_a_stop_does_not_skip_runs_that_had_begun(lab_dir: Path, tmp_path: Path) -> None:
    """All three runs begin; vm01 then fails (it lacks the file the step reads), so the job is over
    max errors (0) while vm02's and vm03's step runs, and the process stops there. Resumed, they
    carry on (their idempotent step again), as they would have had the process lived."""
    ok = {"files": {"C:\\ok.txt": "ok"}}
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02", more=ok), VM("vm03", more=ok)])
    step = script(
        "hold", "Start-Sleep -Milliseconds 300; Get-Content -Path C:\\ok.txt -ErrorAction Stop; Start-Sleep -Seconds 2",
        idempotent=True,
    )  # fmt: skip
    m = manifest(["vm01", "vm02", "vm03"], [step], execution={"max_concurrency": 3, "max_errors": 0})
    journal_file = tmp_path / "j.sqlite"
    async with harness_for(lab, journal_file) as first, trio.open_nursery() as nursery:
        nursery.start_soon(first.engine.run_job, source(m))
        with trio.fail_after(20):
            while not (jobs := first.journal.jobs(limit=1)) or not any(  # noqa: ASYNC110 - the journal, polled
                r.state is State.FAILED for r in first.journal.runs(jobs[0].id)
            ):
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()  # the process stops under the job
    job_id = jobs[0].id
    before = {r.vm: r.state for r in first.journal.runs(job_id)}
    assert before == {"vm01": State.FAILED, "vm02": State.INTERRUPTED, "vm03": State.INTERRUPTED}, before
    async with harness_for(lab, journal_file) as second:
        result = await second.engine.resume_job(job_id, recheck=None)
        runs = {r.vm: r for r in second.journal.runs(job_id)}
    assert {vm: r.state for vm, r in runs.items()} == {
        "vm01": State.FAILED, "vm02": State.SUCCESS, "vm03": State.SUCCESS,
    }, {vm: r.error for vm, r in runs.items()}  # fmt: skip
    assert result.state is State.FAILED
