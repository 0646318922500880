"""The journal writer's commit is a group commit: runs that commit at about the same time share one
transaction, and each caller returns only once its own writes are durable."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from vmbusops.engine.changes import RunChange
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.engine.writer import JournalWriter
from vmbusops.owner import current_owner

VMS = [f"vm{i:02d}" for i in range(50)]


def new_job(journal: Journal) -> tuple[int, dict[str, int]]:
    return journal.create_job(
        bundle_name="group", bundle_version=1, bundle_id="id-1", source="test", manifest="{}",
        bundle_dir=None, enable_guest_services=False, envelope=None, host="sim", vms=VMS,
        steps=[("s", "script")], owner=current_owner(), now=time.time(),
    )  # fmt: skip


async def test_runs_that_commit_together_share_a_transaction_and_each_returns_once_durable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job_id, runs = new_job(journal)
    reader = Journal(path)
    # No flusher of its own: every write here is a caller's commit.
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=10**9)
    seen_durable: list[bool] = []

    async def run(index: int, vm: str) -> None:
        for state in (State.IN_PROGRESS, State.SUCCESS):
            # The runs come to their commits at different moments, as a job's runs do.
            for _ in range(index % 4):
                await trio.lowlevel.checkpoint()
            writer.change([RunChange(run_id=runs[vm], state=state, current_step=None, records=0)])
            await writer.commit()
            [mine] = [r for r in reader.runs(job_id) if r.vm == vm]
            seen_durable.append(mine.stored_state is state)

    async with trio.open_nursery() as nursery:
        for index, vm in enumerate(VMS):
            nursery.start_soon(run, index, vm)

    assert seen_durable == [True] * (2 * len(VMS))
    # 100 commits. A commit once wrote whatever was queued when it got the writer's lock, so each
    # caller woken in turn wrote another transaction (42 here); now a caller whose change a flush
    # already carried returns, and the rest share the next.
    assert writer.flushes <= 4, writer.flushes
