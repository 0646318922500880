"""A journal that cannot be written (a full disk, or its configured size limit) fails cleanly.

SQLite's own ``max_page_count`` (``[retention] journal_max_mb``) gives the same SQLITE_FULL a full
disk gives, from SQLite itself, so these run anywhere; ``test_full_disk.py`` fills a real one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vmbusops.engine.changes import PendingRecord, RunChange, pending
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import JournalError
from vmbusops.owner import current_owner
from vmbusops.records import OutputRecord

LINE = "x" * 400


def new_job(journal: Journal) -> tuple[int, int]:
    """A pending job with one run; (job id, run id)."""
    job_id, runs = journal.create_job(
        bundle_name="flood", bundle_version=1, bundle_id="id-1", source="test", manifest="{}",
        bundle_dir=None, enable_guest_services=False, envelope=None, host="sim", vms=["vm01"], steps=[("s", "script")],
        owner=current_owner(), now=time.time(),
    )  # fmt: skip
    return job_id, runs["vm01"]


def rows(job_id: int, run_id: int, start: int, count: int) -> list[PendingRecord]:
    return [(job_id, run_id, seq, "s", 1, "output", 0.0, f'"{LINE}"') for seq in range(start, start + count)]


def fill(journal: Journal, job_id: int, run_id: int) -> tuple[int, JournalError]:
    """Write batches of 50 records until the journal refuses one; (records committed, the error)."""
    seq = 1
    while True:
        try:
            journal.apply(rows(job_id, run_id, seq, 50), [])
        except JournalError as exc:
            return seq - 1, exc
        seq += 50


def test_a_full_journal_says_what_is_full_and_what_to_do_and_stays_usable(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite", max_mb=0.25)
    job_id, run_id = new_job(journal)
    committed, error = fill(journal, job_id, run_id)
    assert committed > 0
    text = str(error)
    assert "\n" not in text
    assert f"the journal {tmp_path / 'j.sqlite'} cannot be written" in text
    assert "SQLITE_FULL" in text
    assert "journal_max_mb = 0.25" in text
    assert "vmbusops prune" in text
    # Nothing committed is lost, nothing of the failed batch is there, and the connection is not
    # left inside the failed transaction: the next (small) write goes through.
    assert journal.next_seq(run_id) == committed + 1
    assert journal.request_cancel(job_id) == 1


def test_opening_a_journal_whose_log_holds_commits_writes_nothing(tmp_path: Path) -> None:
    """On a full disk a journal must still open (to list its jobs, or resume one): while another
    connection keeps the log from being copied back, opening it must not add to the log."""
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job_id, run_id = new_job(journal)
    journal.apply(rows(job_id, run_id, 1, 50), [])
    log = path.with_name("j.sqlite-wal")
    size = log.stat().st_size
    for readonly in (False, True):
        again = Journal(path, readonly=readonly)
        assert [job.id for job in again.jobs()] == [job_id]
        again.close()
        assert log.stat().st_size == size
    journal.close()


async def test_after_a_failed_flush_the_writer_writes_nothing_more(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, max_mb=0.25)
    job_id, run_id = new_job(journal)
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=10**9)
    seq = 0

    async def flood() -> None:
        nonlocal seq
        for _ in range(100):
            for _ in range(50):
                seq += 1
                await writer.add_record(pending((job_id, run_id, seq, "s", 1, OutputRecord(value=LINE), 0.0)))
            await writer.commit()

    with pytest.raises(JournalError, match="SQLITE_FULL") as first:
        await flood()
    committed = journal.next_seq(run_id) - 1
    # A later, smaller write would fit; it must not be made: the records of the failed flush are
    # gone, so writing on would leave a hole in the run's records and a state after it.
    await writer.add_record(pending((job_id, run_id, seq + 1, "s", 1, OutputRecord(value="small"), 0.0)))
    writer.change([RunChange(run_id=run_id, state=State.FAILED, current_step=None, records=seq + 1)])
    with pytest.raises(JournalError) as again:
        await writer.commit()
    assert again.value is first.value
    with pytest.raises(JournalError):
        await writer.call(journal.next_seq, run_id)
    reader = Journal(path)
    assert reader.next_seq(run_id) == committed + 1
    [run] = reader.runs(job_id)
    assert run.stored_state is State.PENDING
