"""The ``vmbusops`` program freezes the heap it has imported before a long read (vmbusops.heap),
so that a full collection during a big job's pages no longer traverses the whole program; a
command run in a caller's own process (a test's) leaves that process's collector alone."""

from __future__ import annotations

import gc
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.cli.test_job_ids import finished_job
from tests.clirun import vmbusops

#: Runs the program's own entry point with the arguments given, and says at exit how many objects
#: the collector holds frozen.
AS_THE_PROGRAM = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr))\n"
    "from vmbusops.cli.main import main\n"
    "sys.argv = ['vmbusops', *sys.argv[1:]]\n"
    "main()\n"
)


def frozen_at_exit(*args: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", AS_THE_PROGRAM, *args], capture_output=True, text=True, env=dict(os.environ),
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = re.search(r"^frozen (\d+)$", done.stderr, re.MULTILINE)
    assert found is not None, done.stderr
    return int(found.group(1))


def test_logs_run_as_the_program_freezes_what_it_imported_before_its_pages(vmbusops_home: Path) -> None:
    job_id = finished_job()
    assert frozen_at_exit("logs", str(job_id)) > 10_000  # the modules, classes and functions it runs
    # The check can fail: a command that does not settle the collector leaves nothing frozen.
    assert frozen_at_exit("jobs", "show", str(job_id)) == 0


def test_a_command_run_in_a_callers_own_process_leaves_its_collector_alone(vmbusops_home: Path) -> None:
    job_id = finished_job()
    before = gc.get_freeze_count()
    done = vmbusops("logs", str(job_id))
    assert done.returncode == 0, done.stderr
    assert gc.get_freeze_count() == before
