"""Runs over the simulator: steps, batching, journaling, errors and retries."""

from __future__ import annotations

from pathlib import Path

from tests.builders import PASSWORD, VM, manifest, script, write_lab
from tests.engine.conftest import harness_for, source

from vmbusops.engine import Journal, State


async def test_a_run_streams_every_step_into_the_journal(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("web01"), VM("web02")])
    m = manifest(
        ["web*"],
        [
            script("hello", "Write-Output 'one'\nWrite-Verbose 'two' -Verbose"),
            script("count", "1..3 | ForEach-Object { Write-Output $_ }"),
        ],
    )
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
    assert result.state is State.SUCCESS, result.errors
    assert result.runs == {"web01": State.SUCCESS, "web02": State.SUCCESS}
    h.journal = Journal(tmp_path / "j.sqlite")
    runs = h.journal.runs(result.job_id)
    for run in runs:
        records = h.journal.records(result.job_id, vm=run.vm)
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        texts = [(r.step, r.stream, r.content.get("value", r.content.get("message"))) for r in records]
        assert ("hello", "output", "one") in texts
        assert ("hello", "verbose", "two") in texts
        assert [t for t in texts if t[0] == "count" and t[1] == "output"] == [
            ("count", "output", 1),
            ("count", "output", 2),
            ("count", "output", 3),
        ]
        # Step markers are the engine's, not the guest's: they are not journaled.
        assert not any("vmbusops-step" in str(r.content) for r in records)
        steps = h.journal.steps(run.id)
        assert [(s.name, s.state, s.attempts) for s in steps] == [
            ("hello", State.SUCCESS, 1),
            ("count", State.SUCCESS, 1),
        ]
        assert "one" in run.excerpt
    assert PASSWORD.encode() not in (tmp_path / "j.sqlite").read_bytes()


async def test_permanent_error_fails_the_run_with_the_real_message(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(lab_dir, [VM("web01"), VM("off01", state="Off")])
    m = manifest(["web01", "off01", "nosuch"], [script("s", "Write-Output 'x'")], execution={"max_errors": 5})
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        result = await h.engine.run_job(source(m))
    assert result.runs == {"web01": State.SUCCESS, "off01": State.FAILED, "nosuch": State.FAILED}
    assert result.state is State.FAILED
    # Each failure is the host's own words about that VM, not a generic "failed".
    assert "off01: The virtual machine off01 is not in running state." in result.errors["off01"]
    assert "hint: start it first (Start-VM)" in result.errors["off01"]
    assert "does not resolve to a single virtual machine" in result.errors["nosuch"]
    assert "hint: list the host's VMs with 'vmbusops vms'" in result.errors["nosuch"]
