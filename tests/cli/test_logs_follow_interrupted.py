"""`logs -f` of a job that ends interrupted says so: its records stop there, though the job is not
over, and a follower that ended quietly read as a job that had finished."""

from __future__ import annotations

import time
from pathlib import Path

from tests.clirun import vmbusops

from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.owner import current_owner


def test_following_a_job_that_ends_interrupted_says_how_to_resume_it(vmbusops_home: Path) -> None:
    journal = Journal()
    job_id, _ = journal.create_job(
        bundle_name="halted", bundle_version=1, bundle_id="id-halted", source="test", manifest="{}",
        bundle_dir=None, enable_guest_services=False, envelope=None, host="sim", vms=["web01"],
        steps=[("s", "script")], owner=current_owner(), now=time.time(),
    )  # fmt: skip
    journal.interrupt([job_id], time.time())  # as the process running it does when it is stopped
    assert journal.job(job_id).state is State.INTERRUPTED
    ran = vmbusops("logs", str(job_id), "-f")
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr.strip() == (
        f"vmbusops: job {job_id} is interrupted: the process running it stopped before it ended;"
        f" resume it with: vmbusops jobs resume {job_id}"
    )
    finished = vmbusops("logs", str(job_id))  # without -f: the records, as they are, and nothing said
    assert (finished.returncode, finished.stderr) == (0, "")
