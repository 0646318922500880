"""Retention: what a pass removes, what it never does, and the agent applying it periodically."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import trio
import trio.testing

from vmbusops.bundle.manifest import manifest_from_dict
from vmbusops.bundle.paths import accepted_bundles_dir
from vmbusops.config import RetentionConfig
from vmbusops.engine.changes import JobChange
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.owner import current_owner
from vmbusops.retention import DAY, PrunePlan, keep_retention, prune
from vmbusops.schedule.store import ScheduleStore

NOW = 1_900_000_000.0


def bundle_folder(name: str, *, age_days: float = 10) -> Path:
    folder = accepted_bundles_dir() / f"bundle-{name}"
    (folder / "files").mkdir(parents=True)
    (folder / "files" / "payload.bin").write_bytes(b"\0" * 4096)
    os.utime(folder, (NOW - age_days * DAY, NOW - age_days * DAY))
    return folder


def add_job(journal: Journal, folder: Path | None, *, state: State, finished_days_ago: float | None) -> int:
    """A job with one run and 3 records, moved to ``state`` (finished that long ago, if given)."""
    job_id, runs = journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id=f"id-{time.monotonic_ns()}", source="test", manifest="{}",
        bundle_dir=str(folder) if folder else None, enable_guest_services=False, envelope=None, host="sim", vms=["vm01"],
        steps=[("s", "script")], owner=current_owner(), now=NOW - 100 * DAY,
    )  # fmt: skip
    rows = [(job_id, runs["vm01"], seq, "s", 1, "output", NOW, '{"stream":"output","value":"x"}') for seq in (1, 2, 3)]
    finished = None if finished_days_ago is None else NOW - finished_days_ago * DAY
    journal.apply(rows, [JobChange(job_id=job_id, state=state, finished_at=finished)])
    return job_id


def records(journal: Journal, job_id: int) -> int:
    return len(journal.records(job_id))


def test_a_pass_removes_old_records_old_jobs_and_unneeded_bundle_files_and_nothing_else(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    policy = RetentionConfig(records_days=30, jobs_days=90)
    old_folder, recent_folder, interrupted_folder = bundle_folder("old"), bundle_folder("recent"), bundle_folder("int")
    ancient = add_job(journal, old_folder, state=State.SUCCESS, finished_days_ago=95)
    old = add_job(journal, old_folder, state=State.FAILED, finished_days_ago=40)
    recent = add_job(journal, recent_folder, state=State.SUCCESS, finished_days_ago=1)
    # An interrupted job (and one whose owner died mid-run) is not finished, however old: it and
    # its bundle's files must stay, or it could not be resumed.
    interrupted = add_job(journal, interrupted_folder, state=State.INTERRUPTED, finished_days_ago=None)
    scheduled_folder = bundle_folder("sched")
    schedules = ScheduleStore()
    m = manifest_from_dict({
        "name": "nightly", "version": 1, "id": "7d4f4a64-8f0e-4b8e-9a57-0d7c2b1e5a10", "issued": "2030-01-01T00:00:00+00:00",
        "expires": "2031-01-01T00:00:00+00:00", "targets": {"vms": ["vm01"]}, "credential": "c",
        "steps": [{"kind": "script", "name": "s", "inline": "1"}], "files": [],
        "schedule": {"cron": "0 2 * * *", "window_seconds": 3600, "cutoff_seconds": 60, "jitter_seconds": 0,
                     "missed": "run-once", "timezone": "UTC"},
    })  # fmt: skip
    schedules.register(m, bundle_dir=str(scheduled_folder), source="test", now=datetime.now(UTC))
    schedules.handled("nightly", datetime.now(UTC), outcome="started", job=ancient)
    schedules.close()
    unclaimed_fresh = bundle_folder("fresh", age_days=0.1)  # accepted a moment ago, job not written yet
    unclaimed_stale = bundle_folder("stale", age_days=3)
    not_ours = accepted_bundles_dir() / "notes"
    not_ours.mkdir()

    dry = prune(journal, policy, now=NOW, dry_run=True)
    assert dry.record_jobs == (ancient, old)
    assert dry.records == 6
    assert dry.delete_jobs == ()  # the ancient job is the schedule's last job: the scheduler reads it
    # A finished job's bundle files go at once, however recent: only its records are kept for a while.
    assert sorted(d.name for d in dry.bundle_dirs) == ["bundle-old", "bundle-recent", "bundle-stale"]
    assert dry.bundle_bytes == 3 * 4096
    assert old_folder.exists() and records(journal, old) == 3  # a dry run changes nothing

    done = prune(journal, policy, now=NOW)
    assert done == dry
    assert not old_folder.exists() and not recent_folder.exists() and not unclaimed_stale.exists()
    for kept in (interrupted_folder, scheduled_folder, unclaimed_fresh, not_ours):
        assert kept.exists(), kept
    assert records(journal, ancient) == records(journal, old) == 0
    assert records(journal, recent) == records(journal, interrupted) == 3
    assert journal.job(interrupted).state is State.INTERRUPTED

    # Once the schedule moves on, its old last job goes with the others past jobs_days.
    schedules = ScheduleStore()
    schedules.remove("nightly")
    schedules.close()
    later = prune(journal, policy, now=NOW + 60 * DAY)
    assert later.delete_jobs == (ancient, old)
    assert [j.id for j in journal.jobs()] == [interrupted, recent]
    assert journal.job(interrupted).state is State.INTERRUPTED
    assert prune(journal, policy, now=NOW + 60 * DAY).empty


async def test_the_agent_applies_retention_at_start_and_every_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal = Journal()
    job = add_job(journal, None, state=State.SUCCESS, finished_days_ago=0)
    policy = RetentionConfig(records_days=0.5, interval_minutes=60)
    passes: list[tuple[float, PrunePlan]] = []
    send, received = trio.open_memory_channel[PrunePlan](100)
    scope = trio.CancelScope()

    def now() -> float:  # the wall clock moves with trio's (mock) clock
        return NOW + trio.current_time()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(keep_retention, policy, scope, now=now, on_pass=send.send_nowait))
        async for plan in received:
            passes.append((trio.current_time(), plan))
            if plan.record_jobs:
                scope.cancel()
                break
    # Records go 12 h after the job finished: at the first pass after that, the 14th.
    assert [t for t, _ in passes] == [i * 3600.0 for i in range(14)]
    assert [p.record_jobs for _, p in passes] == [()] * 13 + [(job,)]
    assert records(journal, job) == 0


def test_an_upload_left_by_a_stopped_agent_goes_once_it_is_a_day_old(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    incoming = accepted_bundles_dir().parent / "incoming"
    incoming.mkdir(parents=True)
    stale, fresh, other = incoming / "upload-a1.vmb", incoming / "upload-b2.vmb", incoming / "notes.txt"
    for path, age_days in ((stale, 2.0), (fresh, 0.1), (other, 5.0)):
        path.write_bytes(b"\0" * 1000)
        os.utime(path, (NOW - age_days * DAY, NOW - age_days * DAY))
    policy = RetentionConfig(records_days=30, jobs_days=90)
    dry = prune(journal, policy, now=NOW, dry_run=True)
    assert (dry.stale_uploads, dry.upload_bytes) == ((stale,), 1000)
    assert stale.exists()
    prune(journal, policy, now=NOW)
    assert not stale.exists() and fresh.exists() and other.exists()
