"""Opening the journal again in a process that has it open must not drop that process's SQLite
locks: another process's SQLite would then take the journal for unused when it closes, and
checkpoint and delete the write-ahead log under the first one (committed records lost with it
on a crash). The other process here is a real one, as ``vmbusops jobs`` beside the agent is."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmbusops.engine.journal import Journal
from vmbusops.home import private_file
from vmbusops.owner import current_owner


def other_process_reads_and_closes(path: Path) -> None:
    code = "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); db.execute('SELECT COUNT(*) FROM jobs').fetchone(); db.close()"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=60)


def test_a_second_open_in_the_same_process_keeps_the_first_ones_log(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    writer = Journal(path)
    writer.create_job(
        bundle_name="b", bundle_version=1, bundle_id="id-1", source="test", manifest="{}", bundle_dir=None,
        enable_guest_services=False, envelope=None, host="sim", vms=["vm01"], steps=[("s", "script")],
        owner=current_owner(), now=time.time(),
    )  # fmt: skip
    wal = Path(str(path) + "-wal")
    assert wal.exists()
    reader = Journal(path, readonly=True)  # as the agent's reading connections open
    private_file(path)  # and as any later open makes sure of the file's mode
    other_process_reads_and_closes(path)
    assert wal.exists(), "another process deleted the write-ahead log of a journal still open here"
    assert [j.bundle_name for j in reader.jobs()] == ["b"]
    reader.close()
    writer.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_a_private_file_is_made_0600_and_a_link_is_refused(tmp_path: Path) -> None:
    made = private_file(tmp_path / "a" / "new.sqlite")
    assert made.stat().st_mode & 0o777 == 0o600
    loose = tmp_path / "loose.sqlite"
    loose.write_text("")
    loose.chmod(0o644)
    assert private_file(loose).stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link.sqlite"
    link.symlink_to(loose)
    with pytest.raises(OSError, match="symbolic link"):
        private_file(link)
