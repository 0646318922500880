"""Retention: what the journal and the store of accepted bundles keep, and removing the rest.

Theory of operation
-------------------
Three things grow with every job: the journal's records, its job rows, and the files of accepted
bundles (one folder per bundle under ``$VMBUSOPS_HOME/bundles/accepted/``, possibly gigabytes).
``[retention]`` in ``config.toml`` says how long each stays:

* a finished job's records go ``records_days`` after it finished (its runs keep their excerpt of
  output), and the job itself (runs, steps) ``jobs_days`` after;
* a bundle's folder goes as soon as nothing needs it: no job that is not finished names it and no
  registered schedule does. A folder that no job names at all is left alone for a day
  (:data:`UNCLAIMED_GRACE_SECONDS`): its bundle may have been accepted a moment ago, with the job
  about to be written, in this process or another;
* an upload the agent was receiving when it stopped (``bundles/incoming/upload-*.vmb``; a finished
  request always removes its own) goes once it is a day old.

Never removed, whatever its age: a job that is not finished (pending, running, or interrupted: it
must stay resumable, with its bundle's files) ; the bundle of a registered schedule; the last job
of each schedule (the scheduler reads it so that runs never overlap); the replay store, since
forgetting that a bundle was accepted would let it run again.

Removal goes bundle folders first (they free the most, and need no space to go), then the journal,
a job at a time and a few thousand records per transaction, so a running engine's writer never
waits long; last, the freed pages go back to the disk. The agent applies it every
``interval_minutes`` (:func:`keep_retention`), ``vmbusops prune`` at once (``--dry-run`` only says
what would go).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import trio

from vmbusops.bundle.paths import accepted_bundles_dir
from vmbusops.config import RetentionConfig
from vmbusops.engine.journal import Journal
from vmbusops.errors import VmbusOpsError
from vmbusops.schedule.store import ScheduleStore, schedules_path

log = logging.getLogger("vmbusops.retention")

DAY: Final = 86400.0
#: How long a bundle folder that no job names is kept (its job may be about to be written).
UNCLAIMED_GRACE_SECONDS: Final = DAY


@dataclass(frozen=True, slots=True, kw_only=True)
class PrunePlan:
    """What a pass removes (or, dry, would remove)."""

    #: Finished jobs whose records go, and how many records that is.
    record_jobs: tuple[int, ...]
    records: int
    #: Finished jobs that go entirely.
    delete_jobs: tuple[int, ...]
    #: Bundle folders no unfinished job and no schedule needs, and their size.
    bundle_dirs: tuple[Path, ...]
    bundle_bytes: int
    #: Uploads left by an agent that stopped while receiving them, and their size.
    stale_uploads: tuple[Path, ...] = ()
    upload_bytes: int = 0

    @property
    def empty(self) -> bool:
        return not (self.record_jobs or self.delete_jobs or self.bundle_dirs or self.stale_uploads)


def plan_prune(
    journal: Journal,
    policy: RetentionConfig,
    *,
    now: float,
    bundles_dir: Path | None = None,
    schedules: Path | None = None,
) -> PrunePlan:
    """Read what may go; changes nothing."""
    schedule_dirs, keep_jobs = _schedules_need(schedules or schedules_path())
    found = journal.prunable(
        records_before=now - policy.records_days * DAY,
        jobs_before=now - policy.jobs_days * DAY,
        keep_jobs=keep_jobs,
    )
    needed = {_real(d) for d in found.bundle_dirs_needed | schedule_dirs}
    claimed = {_real(d) for d in found.bundle_dirs}
    folders: list[Path] = []
    size = 0
    root = bundles_dir or accepted_bundles_dir()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if not entry.name.startswith("bundle-") or entry.is_symlink() or not entry.is_dir():
            continue
        real = _real(str(entry))
        if real in needed:
            continue
        if real not in claimed and entry.stat().st_mtime > now - UNCLAIMED_GRACE_SECONDS:
            continue
        folders.append(entry)
        size += _tree_bytes(entry)
    uploads: list[Path] = []
    upload_size = 0
    incoming = root.parent / "incoming"
    for entry in sorted(incoming.glob("upload-*.vmb")) if incoming.is_dir() else []:
        with contextlib.suppress(OSError):  # a request that ends removes its own upload meanwhile
            info = entry.lstat()
            if stat.S_ISREG(info.st_mode) and info.st_mtime <= now - UNCLAIMED_GRACE_SECONDS:
                uploads.append(entry)
                upload_size += info.st_size
    return PrunePlan(
        record_jobs=found.record_jobs,
        records=found.records,
        delete_jobs=found.delete_jobs,
        bundle_dirs=tuple(folders),
        bundle_bytes=size,
        stale_uploads=tuple(uploads),
        upload_bytes=upload_size,
    )


def carry_out(journal: Journal, plan: PrunePlan, *, check: Callable[[], None] = lambda: None) -> None:
    """Remove what ``plan`` lists; ``check`` runs between steps (to stop early when cancelled)."""
    for folder in plan.bundle_dirs:
        shutil.rmtree(folder, ignore_errors=True)  # what cannot go now goes on a later pass
        check()
    for upload in plan.stale_uploads:
        upload.unlink(missing_ok=True)
    deleted = set(plan.delete_jobs)
    for job_id in plan.record_jobs:
        if job_id not in deleted:
            journal.forget_records(job_id)
            check()
    for job_id in plan.delete_jobs:
        journal.delete_job(job_id)
        check()
    if not plan.empty:
        journal.compact()


def prune(
    journal: Journal,
    policy: RetentionConfig,
    *,
    now: float,
    dry_run: bool = False,
    check: Callable[[], None] = lambda: None,
) -> PrunePlan:
    """One retention pass: what may go, removed unless ``dry_run``."""
    plan = plan_prune(journal, policy, now=now)
    if not dry_run:
        carry_out(journal, plan, check=check)
    return plan


async def keep_retention(
    policy: RetentionConfig,
    scope: trio.CancelScope,
    *,
    journal_path: Path | None = None,
    now: Callable[[], float] = time.time,
    on_pass: Callable[[PrunePlan], None] | None = None,
) -> None:
    """The agent's retention: a pass at start and every ``interval_minutes``, until ``scope`` is
    cancelled. A pass that fails is logged and tried again next time; it never stops the agent."""
    with scope:
        journal = await trio.to_thread.run_sync(lambda: Journal(journal_path))
        try:
            while True:
                try:
                    plan = await trio.to_thread.run_sync(
                        partial(prune, journal, policy, now=now(), check=trio.from_thread.check_cancelled)
                    )
                except VmbusOpsError as exc:
                    log.warning("retention pass failed", extra={"event": "retention-failed", "error": str(exc)})
                else:
                    if not plan.empty:
                        log.info(
                            "retention pass",
                            extra={
                                "event": "retention", "records": plan.records, "jobs_records": len(plan.record_jobs),
                                "jobs_deleted": len(plan.delete_jobs), "bundle_folders": len(plan.bundle_dirs),
                                "bundle_bytes": plan.bundle_bytes,
                            },
                        )  # fmt: skip
                    if on_pass is not None:
                        on_pass(plan)
                await trio.sleep(policy.interval_minutes * 60)
        finally:
            journal.close()


def _schedules_need(path: Path) -> tuple[set[str], set[int]]:
    """The bundle folders of registered schedules, and each schedule's last job."""
    if not path.exists():
        return set(), set()
    store = ScheduleStore(path)
    try:
        entries = store.all()
    finally:
        store.close()
    return (
        {e.bundle_dir for e in entries if e.bundle_dir},
        {e.last_job for e in entries if e.last_job is not None},
    )


def _real(path: str) -> str:
    return os.path.realpath(path)


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
