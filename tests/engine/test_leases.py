"""VM leases: a job's runs take their VMs together, and give each back with the run's end."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import harness_for, source

from vmbusops.engine import EngineEvent, RunChanged, State
from vmbusops.engine.changes import Change, RunChange
from vmbusops.engine.journal import StoredRecord
from vmbusops.owner import process_start_time


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """Another live process on this machine, as another agent would be."""
    other = subprocess.Popen(["sleep", "60"])
    yield other
    other.kill()
    other.wait()


def leases(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT vm, run_id FROM vm_leases").fetchall())


async def test_a_jobs_runs_ask_for_their_vms_together_and_give_each_back_with_its_end(
    lab_dir: Path, tmp_path: Path
) -> None:
    vms = [f"vm{i:02d}" for i in range(8)]
    lab = write_lab(lab_dir, [VM(v) for v in vms])
    m = manifest(vms, [script("s", "Write-Output 'x'")], execution={"max_concurrency": 3})
    journal_file = tmp_path / "j.sqlite"
    # Read in the commit that ends each run: its VM is free in that same transaction.
    held_at_end: dict[int, dict[str, int]] = {}

    def applied(stored: list[StoredRecord], changes: list[Change]) -> None:
        for c in changes:
            if isinstance(c, RunChange) and c.state is not None and c.state.terminal:
                held_at_end[c.run_id] = leases(journal_file)

    async with harness_for(lab, journal_file) as h:
        h.engine.writer.on_applied = applied
        result = await h.engine.run_job(source(m))
        asked, transactions = h.engine.leases.asked, h.engine.leases.transactions
    assert result.state is State.SUCCESS
    assert asked == 8
    # The eight runs start in one pass of the scheduler: one transaction took all their VMs.
    assert transactions == 1
    assert len(held_at_end) == 8
    for run_id, held in held_at_end.items():
        assert run_id not in held.values(), f"run {run_id} still held its VM when its end was committed: {held}"
    assert leases(journal_file) == {}


async def test_a_vm_another_live_process_holds_waits_while_the_others_of_its_batch_go_on(
    lab_dir: Path, tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    lab = write_lab(lab_dir, [VM("vm01"), VM("vm02"), VM("vm03")])
    m = manifest(["vm01", "vm02", "vm03"], [script("s", "Write-Output 'x'")], execution={"max_concurrency": 3})
    journal_file = tmp_path / "j.sqlite"
    started = process_start_time(other_process.pid)
    assert started is not None
    freed_at: list[float] = []
    async with harness_for(lab, journal_file) as h:
        with sqlite3.connect(journal_file) as db:
            db.execute(
                "INSERT INTO vm_leases (vm, run_id, owner_pid, owner_started, heartbeat_at) VALUES (?, ?, ?, ?, ?)",
                ("vm02", 999_999, other_process.pid, started, time.time()),
            )

        def ended(vm: str) -> bool:
            return any(isinstance(e, RunChanged) and e.vm == vm and e.state.terminal for e in h.events)

        others_ended = trio.Event()
        collect = h.engine.on_event
        assert collect is not None

        def on_event(event: EngineEvent) -> None:
            collect(event)
            if ended("vm01") and ended("vm03"):
                others_ended.set()

        h.engine.on_event = on_event

        async def free_vm02_later() -> None:
            # Held until the other two runs have ended: they never waited for vm02.
            await others_ended.wait()
            assert not ended("vm02")
            with sqlite3.connect(journal_file) as db:
                db.execute("DELETE FROM vm_leases WHERE vm = 'vm02'")
            freed_at.append(time.time())

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(free_vm02_later)
                result = await h.engine.run_job(source(m))
    assert result.state is State.SUCCESS
    story = [(e.vm, e.state) for e in h.events if isinstance(e, RunChanged) and e.step is None]
    assert ("vm02", State.DELAYED) in story
    assert not any(state is State.DELAYED for vm, state in story if vm != "vm02"), story
    runs = {r.vm: r for r in h.journal.runs(result.job_id)}
    # vm01 and vm03 ran while vm02 was held; vm02 started once the other process let it go.
    assert max(runs["vm01"].finished_at or 0, runs["vm03"].finished_at or 0) < freed_at[0]
    assert freed_at[0] <= (runs["vm02"].started_at or 0)
    assert leases(journal_file) == {}
