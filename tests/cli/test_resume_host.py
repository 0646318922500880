"""A job is resumed on the host it ran on: its runs are that host's VMs, and the same names on
another host are other machines. `jobs resume` without --host goes to the job's own host; a
--host naming another is refused, and so is an agent on another host."""

from __future__ import annotations

import time
from pathlib import Path

from tests.clirun import vmbusops

from vmbusops.engine.journal import Journal
from vmbusops.owner import current_owner


def interrupted_job(host: str) -> int:
    journal = Journal()
    try:
        job_id, _ = journal.create_job(
            bundle_name="elsewhere", bundle_version=1, bundle_id="id-elsewhere", source="test", manifest="{}",
            bundle_dir=None, enable_guest_services=False, envelope=None, host=host, vms=["web01"],
            steps=[("s", "script")], owner=current_owner(), now=time.time(),
        )  # fmt: skip
        journal.interrupt([job_id], time.time())  # as the process running it does when it is stopped
    finally:
        journal.close()
    return job_id


def test_a_job_is_resumed_only_on_the_host_it_ran_on(vmbusops_home: Path) -> None:
    job_id = interrupted_job("hv-b")
    other = vmbusops("jobs", "resume", str(job_id), "--host", "sim")
    assert other.returncode == 2, other
    assert f"job {job_id} ran on host 'hv-b', not on 'sim'" in other.stderr, other.stderr
    assert f"vmbusops jobs resume {job_id} --host hv-b" in other.stderr
    own = vmbusops("jobs", "resume", str(job_id))  # its own host, which this home cannot open
    assert own.returncode == 2 and "unknown host 'hv-b'" in own.stderr, own.stderr
    shown = vmbusops("jobs", "show", str(job_id), "--json")
    assert '"state": "interrupted"' in shown.stdout  # nothing was touched
