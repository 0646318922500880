"""Which jobs a filter picks, in keyset pages; one VM's history across jobs; and how readers show
a job whose owner stopped under it (the record count the journal holds, a clock that stopped)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from vmbusops.engine.changes import JobChange, RunChange
from vmbusops.engine.journal import JobFilter, Journal
from vmbusops.engine.states import State
from vmbusops.errors import ConfigError
from vmbusops.owner import Owner, current_owner
from vmbusops.when import parse_since

DEAD = Owner(pid=2**22 + 7, started="never")


def new_job(journal: Journal, vms: list[str], *, submitter: str | None = None, owner: Owner | None = None,
            now: float | None = None) -> tuple[int, dict[str, int]]:
    return journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id=f"id-{time.monotonic_ns()}", source="test", manifest="{}",
        bundle_dir=None, enable_guest_services=False, envelope=None, submitter=submitter, host="sim", vms=vms,
        steps=[("s", "script")], owner=owner or current_owner(), now=now if now is not None else time.time(),
    )  # fmt: skip


def finish(journal: Journal, job_id: int, runs: dict[str, int], state: State) -> None:
    now = time.time()
    journal.apply(
        [],
        [
            JobChange(job_id=job_id, state=State.IN_PROGRESS, started_at=now),
            *(RunChange(run_id=r, state=State.IN_PROGRESS, current_step="s", records=0, started_at=now) for r in runs.values()),
            *(RunChange(run_id=r, state=state, current_step=None, records=0, finished_at=now + 1) for r in runs.values()),
            JobChange(job_id=job_id, state=state, finished_at=now + 1),
        ],
    )


def test_filters_pick_jobs_in_keyset_pages_newest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    old, old_runs = new_job(journal, ["web01"], submitter="alice", now=time.time() - 3 * 86400)
    finish(journal, old, old_runs, State.SUCCESS)
    ids = []
    for i in range(5):
        job_id, runs = new_job(journal, ["web01", "db01"] if i % 2 else ["db01"], submitter=f"token:t{i % 2}")
        finish(journal, job_id, runs, State.FAILED if i == 3 else State.SUCCESS)
        ids.append(job_id)
    assert [j.id for j in journal.jobs()] == [*reversed(ids), old]
    assert [j.id for j in journal.jobs(where=JobFilter(vm="WEB01"))] == [ids[3], ids[1], old]
    assert [j.id for j in journal.jobs(where=JobFilter(state=State.FAILED))] == [ids[3]]
    assert [j.id for j in journal.jobs(where=JobFilter(since=time.time() - 86400))] == list(reversed(ids))
    assert [j.id for j in journal.jobs(where=JobFilter(submitter="TOKEN:T1"))] == [ids[3], ids[1]]
    assert journal.job(old).submitter == "alice"
    # Keyset: a page continues below the last id it had, whatever was added meanwhile.
    first = journal.jobs(limit=2)
    new_job(journal, ["web01"])
    second = journal.jobs(limit=2, where=JobFilter(before=first[-1].id))
    assert [j.id for j in first + second] == [ids[4], ids[3], ids[2], ids[1]]
    history = journal.vm_history("web01")
    assert [(h.run.job_id, h.run.state) for h in history][1:] == [
        (ids[3], State.FAILED), (ids[1], State.SUCCESS), (old, State.SUCCESS),
    ]  # fmt: skip
    assert [h.run.job_id for h in journal.vm_history("web01", state=State.FAILED)] == [ids[3]]
    assert [h.run.job_id for h in journal.vm_history("web01", limit=1, before=ids[3])] == [ids[1]]


def test_an_owner_that_died_leaves_runs_with_their_journaled_records_and_a_stopped_clock(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    started = time.time() - 100
    job_id, runs = new_job(journal, ["web01"], owner=DEAD, now=started)
    run = runs["web01"]
    journal.apply([], [JobChange(job_id=job_id, state=State.IN_PROGRESS, started_at=started),
                       RunChange(run_id=run, state=State.IN_PROGRESS, current_step="s", records=0, started_at=started)])
    last = started + 40
    rows = [(job_id, run, seq, "s", 1, "output", started + 10 * seq, json.dumps({"stream": "output", "value": seq}))
            for seq in range(1, 5)]  # fmt: skip
    journal.apply(rows, [])
    (view,) = journal.runs(job_id)
    assert (view.state, view.records, view.finished_at) == (State.INTERRUPTED, 4, last)
    assert journal.job(job_id).finished_at == last  # its last committed record, not now
    assert [s.state for s in journal.steps(run)] == [State.PENDING]
    assert [j.id for j in journal.jobs(where=JobFilter(state=State.INTERRUPTED))] == [job_id]
    # Reconciliation writes down what the readers showed.
    assert journal.reconcile() == [job_id]
    (view,) = journal.runs(job_id)
    assert (view.stored_state, view.records, view.finished_at) == (State.INTERRUPTED, 4, last)
    assert journal.job(job_id).finished_at == last


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", 1000 - 90), ("30m", 1000 - 1800), ("2h", 1000 - 7200), ("3D", 1000 - 3 * 86400),
     ("1w", 1000 - 604800), ("1970-01-01T00:10:00Z", 600.0), ("1970-01-02T00:00:00+00:00", 86400.0)],
)  # fmt: skip
def test_since_takes_an_iso_time_or_an_age(text: str, expected: float) -> None:
    assert parse_since(text, 1000.0) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "2h ago", "-2h", "2026-13-01", "1.5h", "9" * 30 + "d"])
def test_since_refuses_what_is_not_a_time_in_one_line(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_since(text, 1000.0)
    assert "\n" not in str(caught.value)
    assert "not a time" in str(caught.value)


def test_a_read_only_connection_sees_run_states_another_connection_commits(tmp_path: Path) -> None:
    """A polled job's run-state counts are kept between reads while nothing commits; another
    connection's commit shows at the next read (the agent reads through its own connections)."""
    writer = Journal(tmp_path / "j.sqlite")
    reader = Journal(tmp_path / "j.sqlite", readonly=True)
    job_id, runs = new_job(writer, ["web01", "db01"], owner=DEAD)
    first = reader.jobs(job_id=job_id)[0].run_states
    assert reader.jobs(job_id=job_id)[0].run_states == first
    assert sum(first.values()) == 2 and "success" not in first
    finish(writer, job_id, runs, State.SUCCESS)
    assert reader.jobs(job_id=job_id)[0].run_states == {"success": 2}
    other, other_runs = new_job(writer, ["web01"], owner=DEAD)
    finish(writer, other, {"web01": other_runs["web01"]}, State.FAILED)
    assert reader.jobs(job_id=other)[0].run_states == {"failed": 1}
    assert reader.jobs(job_id=job_id)[0].run_states == {"success": 2}
