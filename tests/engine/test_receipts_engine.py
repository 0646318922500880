"""Every run of a job gets its signed receipt when it ends, whatever the end: success, failure,
cancellation. Written by the engine's hook (with the VM's Hyper-V id), not made later on demand."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from tests.builders import PASSWORD, VM, journal_as_left, manifest, script, write_lab
from tests.engine.conftest import harness_for, source
from tests.engine.test_journal_pages import new_job, row

from vmbusops.engine import Journal, State
from vmbusops.errors import JobStateError
from vmbusops.receipts import (
    find_run,
    host_key,
    receipt_hook,
    transcript_chunks,
    transcript_of,
    verify_receipt,
    write_receipt,
)  # fmt: skip

LOOP = '1..200 | ForEach-Object { Write-Output "tick $_"; Start-Sleep -Milliseconds 50 }'


async def test_receipts_are_written_for_succeeded_failed_and_cancelled_runs(tmp_path: Path) -> None:
    lab = write_lab(tmp_path, [VM("web01"), VM("web02"), VM("off01", state="Off")])
    key = host_key(tmp_path / "host.key")
    async with harness_for(lab, tmp_path / "j.sqlite") as h:
        h.engine.after_run = receipt_hook(h.journal, key=key)
        done = await h.engine.run_job(source(manifest(["web02"], [script("hello", "'hello'")])))
        h.events.clear()
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                ids: list[int] = []

                async def run() -> None:
                    await h.engine.run_job(source(manifest(["web01", "off01"], [script("loop", LOOP)])), on_created=ids.append)

                nursery.start_soon(run)
                while not any(getattr(e, "record", None) is not None for e in h.events):  # noqa: ASYNC110
                    await trio.sleep(0.02)
                Journal(tmp_path / "j.sqlite").request_cancel(ids[0])
    journal = h.journal
    outcomes = {}
    for job_id in (done.job_id, ids[0]):
        for run in find_run(journal, job_id, None):
            stored = journal.receipt(run.id)
            assert stored is not None, f"no receipt for {run.vm}"  # written by the hook, at the run's end
            transcript = b"".join(transcript_chunks(journal, run))
            payload = verify_receipt(stored.encode(), key.public_key(), transcript).payload
            assert PASSWORD not in stored
            assert payload["vm"]["id"]  # the hook asked the host
            assert payload["outcome"] == run.state.value and payload["run"] == run.id
            assert payload["transcript"]["records"] == run.records
            outcomes[run.vm] = (payload["outcome"], payload["code"], [s["result"] for s in payload["steps"]])
    assert outcomes == {
        "web02": (State.SUCCESS.value, None, ["success"]),
        "web01": (State.CANCELLED.value, "Cancelled", ["cancelled"]),
        "off01": (State.FAILED.value, "VMNotRunning", ["failed"]),
    }


def test_a_journal_from_before_receipts_gains_the_table_when_opened(tmp_path: Path) -> None:
    path = journal_as_left(tmp_path / "j.sqlite", "DROP TABLE receipts")  # written before receipts existed
    journal = Journal(path)
    assert journal.receipt(1) is None
    assert journal.store_receipt(1, 1, "first", 0.0) == "first"
    assert journal.store_receipt(1, 1, "second", 0.0) == "first"  # written once: the first stays
    journal.close()


def test_retention_keeps_receipts_with_their_job_and_a_removed_transcript_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job, runs = new_job(journal, ["web01", "web02"])
    journal.apply([row(job, runs["web01"], 1), row(job, runs["web02"], 1)], [])
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE jobs SET state = 'success', finished_at = 1 WHERE id = ?", (job,))
        db.execute("UPDATE runs SET state = 'success', finished_at = 1 WHERE job_id = ?", (job,))
    db.close()
    key = host_key(tmp_path / "host.key")
    [web01], [web02] = find_run(journal, job, "web01"), find_run(journal, job, "web02")
    kept = write_receipt(journal, web01, key)
    journal.forget_records(job)
    assert write_receipt(journal, web01, key) == kept  # the receipt outlives the records it digests
    with pytest.raises(JobStateError, match="pruned before its receipt"):
        write_receipt(journal, web02, key)
    with pytest.raises(JobStateError, match="removed by retention"):
        list(transcript_of(journal, web01))
    journal.delete_job(job)
    assert journal.receipt(web01.id) is None  # and goes with the job
    journal.close()
