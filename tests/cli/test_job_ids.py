"""A job id that is not in the journal, or a job in the wrong state, is a usage error (exit 2)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.clirun import vmbusops

from vmbusops.engine.changes import JobChange
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.owner import current_owner


def finished_job() -> int:
    journal = Journal()
    job_id, _ = journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id="id-1", source="test", manifest="{}", bundle_dir=None,
        enable_guest_services=False, envelope=None, host="sim", vms=["vm01"], steps=[("s", "script")],
        owner=current_owner(), now=time.time(),
    )  # fmt: skip
    journal.apply([], [JobChange(job_id=job_id, state=State.SUCCESS, finished_at=time.time())])
    journal.close()
    return job_id


def test_a_job_that_is_not_there_is_a_usage_error_everywhere(vmbusops_home: Path) -> None:
    finished_job()
    for args in (["jobs", "show", "999"], ["jobs", "resume", "999"], ["jobs", "cancel", "999"], ["logs", "999"]):
        done = vmbusops(*args)
        assert (done.returncode, done.stdout) == (2, ""), (args, done)
        assert done.stderr.splitlines() == [
            "vmbusops: no job 999 in the journal",
            "  hint: list jobs with: vmbusops jobs",
        ], args


def test_resuming_a_finished_job_is_a_usage_error_and_starts_nothing(vmbusops_home: Path) -> None:
    job_id = finished_job()
    done = vmbusops("jobs", "resume", str(job_id))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"vmbusops: job {job_id} is success; only an interrupted job can be resumed",
        f"  hint: see it with: vmbusops jobs show {job_id}",
    ]


def test_logs_of_a_vm_the_job_does_not_target_is_a_usage_error_followed_or_not(vmbusops_home: Path) -> None:
    job_id = finished_job()
    for extra in ([], ["-f"]):
        done = vmbusops("logs", str(job_id), "--vm", "nosuch", *extra)
        assert (done.returncode, done.stdout) == (2, ""), (extra, done)
        assert done.stderr.splitlines() == [f"vmbusops: no run on nosuch in job {job_id}", "  hint: its VMs: vm01"]
    assert vmbusops("logs", str(job_id), "--vm", "VM01").returncode == 0
