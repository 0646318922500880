"""A script step's exit code: 0 succeeds, 3010/1641 ask for a reboot, anything else fails the step."""

from __future__ import annotations

from pathlib import Path

from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import harness_for, source

from vmbusops.engine import Journal, State
from vmbusops.engine.plan import GuestBatch, StepMarker, parse_marker, plan_units
from vmbusops.records import InformationRecord

# The first step keeps the VM up past one whole second, so Uptime (whole seconds) tells a restart.
WARM_UP = script("warm-up", "Start-Sleep -Milliseconds 1100")


def uptime_seconds(text: str | None) -> int:
    assert text is not None
    h, m, s = text.split(".")[-1].split(":")
    return int(h) * 3600 + int(m) * 60 + int(s)


def outputs(journal: Journal, job_id: int) -> list[tuple[str | None, object]]:
    records = journal.records(job_id, vm="web01")
    return [(r.step, r.content.get("value", r.content.get("message_data"))) for r in records]


def test_a_step_that_may_reboot_ends_its_batch_and_the_end_marker_carries_the_code() -> None:
    m = manifest(
        ["web01"],
        [script("a", "'a'"), script("b", "exit 3010", allow_reboot=True), script("c", "'c'"), script("d", "'d'")],
    )
    assert plan_units(m.steps, 0, lambda s: s.inline or "") == [GuestBatch((0, 1)), GuestBatch((2, 3))]
    record = InformationRecord(message_data="vmbusops-step end 1 exit=3010", tags=("vmbusops.step",))
    assert parse_marker(record) == StepMarker("end", 1, 3010)
    assert m.steps[1].allow_reboot and m.steps[1].max_reboots == 1  # type: ignore[union-attr]


async def test_exit_3010_with_allow_reboot_restarts_the_vm_then_the_next_step_runs(
    lab_dir: Path, tmp_path: Path
) -> None:
    lab = write_lab(lab_dir, [VM("web01")], boot_seconds=0.3)
    m = manifest(
        ["web01"],
        [WARM_UP, script("install", "'installing'\nexit 3010", allow_reboot=True), script("after", "'after'")],
    )
    async with harness_for(lab, tmp_path / "j.sqlite", wait_ready_poll=0.1) as h:
        result = await h.engine.run_job(source(m))
        info = await h.host.get_vm("web01")
    assert result.state is State.SUCCESS, result.errors
    assert uptime_seconds(info.uptime) == 0  # restarted under a second ago, after the warm-up
    assert result.details["web01"]["install"] == {"exit_code": 3010, "reboots": 1, "reboot_pending": False}
    journal = Journal(tmp_path / "j.sqlite")
    texts = outputs(journal, result.job_id)
    restart = next(i for i, (_, t) in enumerate(texts) if "restarting web01 from the host" in str(t))
    assert texts.index(("install", "installing")) < restart < texts.index(("after", "after"))
    [run] = journal.runs(result.job_id)
    assert [(s.name, s.state) for s in journal.steps(run.id)] == [
        ("warm-up", State.SUCCESS),
        ("install", State.SUCCESS),
        ("after", State.SUCCESS),
    ]


async def test_exit_3010_without_allow_reboot_reports_a_pending_reboot_and_does_not_restart(
    lab_dir: Path, tmp_path: Path
) -> None:
    lab = write_lab(lab_dir, [VM("web01")])
    m = manifest(["web01"], [WARM_UP, script("install", "exit 1641"), script("after", "'after'")])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
        info = await h.host.get_vm("web01")
    assert result.state is State.SUCCESS, result.errors
    assert uptime_seconds(info.uptime) >= 1
    assert result.details["web01"]["install"] == {"exit_code": 1641, "reboots": 0, "reboot_pending": True}
    assert ("after", "after") in outputs(Journal(tmp_path / "j.sqlite"), result.job_id)


async def test_any_other_exit_code_fails_the_step_and_stops_the_batch(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("web01")])
    m = manifest(["web01"], [script("check", "'checking'\nexit 5"), script("after", "'after'")])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
    assert result.state is State.FAILED
    assert "step check: the script ended with exit code 5" in result.errors["web01"]
    journal = Journal(tmp_path / "j.sqlite")
    assert ("after", "after") not in outputs(journal, result.job_id)
    [run] = journal.runs(result.job_id)
    assert journal.steps(run.id)[0].state is State.FAILED
    # What came after the failed step's end (the pipeline's end, taken with it) took no number:
    # the run's count is what it journaled, numbered without a gap.
    seqs = [r.seq for r in journal.records(result.job_id, vm="web01")]
    assert seqs == list(range(1, run.records + 1))


async def test_a_reboot_beyond_the_budget_fails_the_step(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("web01")])
    m = manifest(["web01"], [script("install", "exit 3010", allow_reboot=True, max_reboots=0)])
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
    assert result.state is State.FAILED
    assert "asked for a reboot (exit code 3010) after 0 reboot(s) (max_reboots = 0)" in result.errors["web01"]
    assert result.details["web01"]["install"]["reboot_pending"] is True
