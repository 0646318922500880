"""The ``vmbusops`` program freezes the heap it has imported before a long read (vmbusops.heap),
so that a full collection during a big job's pages no longer traverses the whole program, and
raises its young threshold; a command run in a caller's own process (a test's) leaves that
process's collector alone."""

from __future__ import annotations

import gc
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.test_job_ids import finished_job
from tests.clirun import vmbusops

from vmbusops import heap

#: Runs the program's own entry point with the arguments given, and says at exit how many objects
#: the collector holds frozen (and its young threshold).
AS_THE_PROGRAM = (
    "import atexit, gc, sys\n"
    "atexit.register(lambda: print('young', gc.get_threshold()[0], file=sys.stderr))\n"
    "atexit.register(lambda: print('frozen', gc.get_freeze_count(), file=sys.stderr))\n"
    "from vmbusops.cli.main import main\n"
    "sys.argv = ['vmbusops', *sys.argv[1:]]\n"
    "main()\n"
)


def collector_at_exit(*args: str) -> tuple[int, int]:
    """(objects frozen, young threshold) of the program run with ``args``, as it exits."""
    done = subprocess.run(
        [sys.executable, "-c", AS_THE_PROGRAM, *args], capture_output=True, text=True, env=dict(os.environ),
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    frozen = re.search(r"^frozen (\d+)$", done.stderr, re.MULTILINE)
    young = re.search(r"^young (\d+)$", done.stderr, re.MULTILINE)
    assert frozen is not None and young is not None, done.stderr
    return int(frozen.group(1)), int(young.group(1))


def test_logs_run_as_the_program_freezes_what_it_imported_before_its_pages(vmbusops_home: Path) -> None:
    job_id = finished_job()
    frozen, young = collector_at_exit("logs", str(job_id))
    assert frozen > 10_000  # the modules, classes and functions it runs
    assert young == heap.YOUNG_THRESHOLD
    # The check can fail: a command that does not settle the collector leaves it as CPython set it.
    assert collector_at_exit("jobs", "show", str(job_id)) == (0, 700)


def test_a_command_run_in_a_callers_own_process_leaves_its_collector_alone(vmbusops_home: Path) -> None:
    job_id = finished_job()
    before = gc.get_freeze_count(), gc.get_threshold()
    done = vmbusops("logs", str(job_id))
    assert done.returncode == 0, done.stderr
    assert (gc.get_freeze_count(), gc.get_threshold()) == before


#: The same, for a fleet command: also whether the NATS client's module was imported before the
#: heap settled (its ``open_broker`` frozen with the rest) or after (still in a generation).
AS_THE_PROGRAM_IN_A_FLEET = AS_THE_PROGRAM.replace(
    "gc.get_freeze_count()",
    "gc.get_freeze_count(), 'late', any(o is getattr(sys.modules.get('vmbusops.fleet.nats_broker'), "
    "'open_broker', None) for o in gc.get_objects())",
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", [["fleet", "serve"], ["agent", "--host", "sim", "--fleet"]])
def test_the_fleets_commands_freeze_the_nats_client_with_the_rest(vmbusops_home: Path, command: list[str]) -> None:
    # No broker answers: the command settles before it connects, then says so and stops (exit 3).
    url = f"nats://127.0.0.1:{closed_port()}"
    args = [*command, url] if command[0] == "agent" else [*command, "--nats", url]
    done = subprocess.run(
        [sys.executable, "-c", AS_THE_PROGRAM_IN_A_FLEET, *args, "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, env=dict(os.environ), timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    found = re.search(r"^frozen (\d+) late (True|False)$", done.stderr, re.MULTILINE)
    assert found is not None, done.stderr
    assert int(found.group(1)) > 10_000
    assert found.group(2) == "False", "the NATS client was imported after the heap was frozen"
