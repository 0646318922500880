"""A job's records are numbered in the order they were committed and read in pages keyed on that.

What makes reading a large job linear: every page is one range scan of a key, never a sort, and
the cursor is one number. The plans are read from SQLite itself (EXPLAIN QUERY PLAN of the very
statements the journal runs), so a change of schema or query that brings a sort back fails here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.builders import journal_as_left

from vmbusops.engine import journal_retention
from vmbusops.engine.changes import PendingRecord, RunChange, pending
from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import Journal, StoredRecord
from vmbusops.engine.journal_records import CHUNK_RECORDS
from vmbusops.engine.states import State
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import JournalError
from vmbusops.owner import current_owner
from vmbusops.records import OutputRecord, VerboseRecord


def new_job(journal: Journal, vms: list[str], name: str = "b") -> tuple[int, dict[str, int]]:
    return journal.create_job(
        bundle_name=name, bundle_version=1, bundle_id=f"id-{name}-{time.monotonic_ns()}", source="test",
        manifest="{}", bundle_dir=None, enable_guest_services=False, envelope=None, host="sim", vms=vms,
        steps=[("s", "script")], owner=current_owner(), now=time.time(),
    )  # fmt: skip


def row(job_id: int, run_id: int, seq: int, stream: str = "output", at: float = 0.0) -> PendingRecord:
    return (job_id, run_id, seq, "s", 1, stream, at, json.dumps({"stream": stream, "value": f"{run_id}:{seq}"}))


def test_records_are_numbered_per_job_in_commit_order_across_runs_and_commits(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    a, a_runs = new_job(journal, ["web01", "web02"], "a")
    b, b_runs = new_job(journal, ["db01"], "b")
    w1, w2, d1 = a_runs["web01"], a_runs["web02"], b_runs["db01"]
    first = journal.apply([row(a, w1, 1), row(b, d1, 1), row(a, w2, 1), row(a, w1, 2)], [])
    assert [(r[0], r[1]) for r in first] == [(a, 1), (b, 1), (a, 2), (a, 3)]
    second = journal.apply([row(b, d1, 2), row(a, w2, 2)], [])
    assert [(r[0], r[1]) for r in second] == [(b, 2), (a, 4)]
    # Another connection (another process) goes on from what is committed.
    other = Journal(tmp_path / "j.sqlite")
    assert [r[1] for r in other.apply([row(a, w1, 3)], [])] == [5]
    pages = [journal.records(a, after=after, limit=2) for after in (0, 2, 4)]
    assert [[(r.n, r.vm, r.seq) for r in p] for p in pages] == [
        [(1, "web01", 1), (2, "web02", 1)],
        [(3, "web01", 2), (4, "web02", 2)],
        [(5, "web01", 3)],
    ]
    assert journal.records(a, after=5) == []
    assert [r.n for r in journal.records(a, vm="WEB02")] == [2, 4]  # a VM in any case
    assert [r.n for r in journal.records(a, vm="web01", after=3)] == [5]
    assert journal.records(a, vm="nowhere") == []
    assert [r.content["value"] for r in journal.records(b)] == [f"{d1}:1", f"{d1}:2"]


def test_a_filtered_page_and_stored_rows_keep_the_order_and_the_text(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    run = runs["web01"]
    journal.apply([row(job, run, i, "verbose" if i % 2 else "output") for i in range(1, 11)], [])
    assert [r.n for r in journal.records(job, stream="verbose", after=3, limit=2)] == [5, 7]
    stored = journal.stored_records(job, after=8)
    assert stored == [
        (job, 9, run, 9, "s", 1, "verbose", 0.0, json.dumps({"stream": "verbose", "value": f"{run}:9"})),
        (job, 10, run, 10, "s", 1, "output", 0.0, json.dumps({"stream": "output", "value": f"{run}:10"})),
    ]


def test_no_page_sorts_and_each_seeks_its_key(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job, runs = new_job(journal, ["web01", "web02"])
    journal.apply([row(job, runs["web01"], i) for i in range(1, 50)], [])
    statements: list[str] = []
    journal._db.set_trace_callback(statements.append)
    journal.records(job, after=10, limit=5)
    journal.records(job, vm="web01", after=10, limit=5)
    journal.records(job, stream="output", after=10, limit=5)
    journal._db.set_trace_callback(None)
    pages = [s for s in statements if s.startswith("SELECT job_id, n")]
    assert len(pages) == 3
    db = sqlite3.connect(path)
    for statement in pages:
        plan = " / ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + statement))
        assert "TEMP B-TREE" not in plan, plan
        assert "SEARCH record_chunks USING" in plan, plan
    db.close()


def test_a_schema_2_journal_is_brought_to_numbered_records_once(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job, runs = new_job(journal, ["web01", "web02"])
    other, other_runs = new_job(journal, ["db01"], "other")
    journal.close()
    # The records table as schema 2 had it: keyed on (run_id, seq) alone, no job, no number.
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE record_chunks; CREATE TABLE records (run_id INTEGER NOT NULL, seq INTEGER NOT NULL, step TEXT,"
        " attempt INTEGER NOT NULL, stream TEXT NOT NULL, time REAL NOT NULL, content TEXT NOT NULL,"
        " PRIMARY KEY (run_id, seq)) WITHOUT ROWID; UPDATE meta SET value = '2' WHERE key = 'schema';"
    )
    w1, w2, d1 = runs["web01"], runs["web02"], other_runs["db01"]
    old = [(w1, 1, 10.0), (w2, 1, 11.0), (w1, 2, 12.0), (d1, 1, 10.5), (w2, 2, 13.0)]
    db.executemany(
        "INSERT INTO records VALUES (?, ?, 's', 1, 'output', ?, ?)",
        [(r, s, t, json.dumps({"stream": "output", "value": f"{r}:{s}"})) for r, s, t in old],
    )
    db.commit()
    db.close()
    journal = Journal(path)
    assert [(r.n, r.run_id, r.seq) for r in journal.records(job)] == [(1, w1, 1), (2, w2, 1), (3, w1, 2), (4, w2, 2)]
    assert [(r.n, r.content["value"]) for r in journal.records(other)] == [(1, f"{d1}:1")]
    assert journal.next_seq(w1) == 3
    assert [r[1] for r in journal.apply([row(job, w1, 3)], [])] == [5]
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "4"
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "records_v2" not in tables and "records" not in tables
    db.close()
    Journal(path).close()  # opening it again changes nothing


V3_RECORDS = (
    "CREATE TABLE IF NOT EXISTS records (job_id INTEGER NOT NULL, n INTEGER NOT NULL,"
    " run_id INTEGER NOT NULL, seq INTEGER NOT NULL, step TEXT, attempt INTEGER NOT NULL,"
    " stream TEXT NOT NULL, time REAL NOT NULL, content TEXT NOT NULL, PRIMARY KEY (job_id, n)) WITHOUT ROWID;"
    " CREATE UNIQUE INDEX IF NOT EXISTS records_run ON records (run_id, seq);"
)


def schema_3_journal(path: Path, vms: list[str]) -> tuple[int, dict[str, int]]:
    """A journal holding a job over ``vms``, its records table as schema 3 had it (a row each)."""
    journal = Journal(path)
    job, runs = new_job(journal, vms)
    journal.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE record_chunks; " + V3_RECORDS + " UPDATE meta SET value = '3' WHERE key = 'schema';")
    db.close()
    return job, runs


def insert_rows(path: Path, rows: list[Any]) -> None:
    db = sqlite3.connect(path)
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_a_schema_3_journal_keeps_every_record_exactly_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    job, runs = schema_3_journal(path, ["web01", "web02"])
    w1, w2 = runs["web01"], runs["web02"]
    # Times no shorter text gives back exactly, and contents a line-minded reader would break.
    old = [
        (job, 1, w1, 1, "s", 1, "output", 1764600000.1234567, json.dumps({"stream": "output", "value": "a\tb\nc"})),
        (job, 2, w2, 1, None, 0, "warning", 0.1 + 0.2, json.dumps({"stream": "warning", "message": "x\u2028y\x85z"}, ensure_ascii=False)),
        (job, 3, w1, 2, "s", 2, "verbose", 1e-300, json.dumps({"stream": "verbose", "message": ""})),
    ]  # fmt: skip
    insert_rows(path, old)
    journal = Journal(path)
    assert journal.stored_records(job) == old
    # Chunks of one record each, read past a cursor and by stream.
    assert journal.stored_records(job, after=1, limit=1) == [old[1]]
    assert journal.stored_records(job, stream="verbose") == [old[2]]
    assert journal.stored_records(job, run_id=w1, after=1) == [old[2]]
    assert journal.next_seq(w1) == 3 and journal.next_seq(w2) == 2
    assert [r[1] for r in journal.apply([row(job, w2, 2)], [])] == [4]
    journal.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0] == "4"
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'records'").fetchone() is None
    db.close()


def test_a_commit_is_stored_in_chunks_and_every_page_reads_back_as_committed(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01", "web02"])
    other, other_runs = new_job(journal, ["db01"], "other")
    w1, w2, d1 = runs["web01"], runs["web02"], other_runs["db01"]
    seqs = {w1: 0, w2: 0, d1: 0}

    def burst(job_id: int, run_id: int, count: int, stream: str = "output") -> list[PendingRecord]:
        out = []
        for _ in range(count):
            seqs[run_id] += 1
            out.append(row(job_id, run_id, seqs[run_id], stream, at=time.time() + seqs[run_id] / 7))
        return out

    # Bursts of one run, another job's between (it ends a chunk, not this job's numbering), a
    # change of stream inside a burst, and a burst longer than a chunk holds.
    commits = [
        burst(job, w1, 5) + burst(other, d1, 2) + burst(job, w1, 3, "verbose") + burst(job, w2, 4),
        burst(job, w2, 2) + burst(job, w1, CHUNK_RECORDS + 3),
        burst(job, w1, 1),
    ]
    stored = [r for commit in commits for r in journal.apply(commit, [])]
    mine = [r for r in stored if r[0] == job]
    assert [r[1] for r in mine] == list(range(1, len(mine) + 1))
    db = journal._db
    chunks = db.execute("SELECT count FROM record_chunks WHERE job_id = ? ORDER BY n", (job,)).fetchall()
    # w1 5, w1 3 (after the other job's; a stream does not end a chunk), w2 4; w2 2, w1
    # CHUNK_RECORDS + 3 in two; w1 1.
    assert [c for (c,) in chunks] == [5, 3, 4, 2, CHUNK_RECORDS, 3, 1]
    assert journal.stored_records(job, limit=10**6) == mine
    for after in range(len(mine) + 1):
        for limit in (1, 3, 300):
            assert journal.stored_records(job, after=after, limit=limit) == mine[after : after + limit], (after, limit)
    for run_id in (w1, w2):
        of_run = [r for r in mine if r[2] == run_id]
        assert [r[3] for r in of_run] == list(range(1, len(of_run) + 1))
        for after in (0, 3, 7, 12, len(mine)):
            expected = [r for r in of_run if r[1] > after][:5]
            assert journal.stored_records(job, run_id=run_id, after=after, limit=5) == expected
    verbose = [r for r in mine if r[6] == "verbose"]
    assert journal.stored_records(job, stream="verbose", after=6, limit=2) == [r for r in verbose if r[1] > 6][:2]
    assert journal.stored_records(other) == [r for r in stored if r[0] == other]
    assert journal.next_seq(w1) == seqs[w1] + 1


def test_a_step_or_attempt_that_changes_inside_a_runs_burst_ends_a_chunk(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    run = runs["web01"]
    keys = [("a", 1)] * 3 + [("b", 1)] * 2 + [("b", 2)] * 2 + [(None, 0)]
    commit = [
        pending((job, run, seq, step, attempt, OutputRecord(value=f"r{seq}"), float(seq)))
        for seq, (step, attempt) in enumerate(keys, 1)
    ]
    stored = journal.apply(commit, [])
    chunks = journal._db.execute("SELECT count, step, attempt FROM record_chunks ORDER BY n").fetchall()
    assert chunks == [(3, "a", 1), (2, "b", 1), (2, "b", 2), (1, None, 0)]
    assert [(r[4], r[5]) for r in stored] == keys
    assert journal.stored_records(job) == stored


async def test_the_writer_tells_each_commit_numbered_records_then_their_state_events(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    run = runs["web01"]
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=10**9)
    told: list[tuple[list[StoredRecord], list[RunChanged]]] = []
    writer.on_commit = lambda records, events: told.append((records, events))
    done = RunChanged(job_id=job, vm="web01", state=State.SUCCESS, step=None)
    await writer.add_record(pending((job, run, 1, "s", 1, OutputRecord(value="one"), 1.0)))
    await writer.add_record(pending((job, run, 2, "s", 1, VerboseRecord(message="two"), 2.0)))
    writer.change([RunChange(run_id=run, state=State.SUCCESS, current_step=None, records=2)], [done])
    assert told == []  # nothing is told before it is durable
    await writer.commit()
    assert len(told) == 1
    records, events = told[0]
    assert [(r[1], r[3], json.loads(r[8])) for r in records] == [
        (1, 1, {"stream": "output", "value": "one"}),
        (2, 2, {"stream": "verbose", "message": "two"}),
    ]
    assert events == [done]
    assert journal.runs(job)[0].state is State.SUCCESS
    await writer.commit()
    assert len(told) == 1  # an empty commit tells nothing


async def test_a_writer_nobody_listens_to_keeps_no_events(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, _ = new_job(journal, ["web01"])
    writer = JournalWriter(journal)
    for _ in range(3):
        writer.change([], [RunChanged(job_id=job, vm="web01", state=State.IN_PROGRESS, step="s")])
    assert writer._events == []
    await trio.lowlevel.checkpoint()


async def test_the_writer_ticks_once_a_rhythm_at_the_first_commit_that_ends_it(
    tmp_path: Path, autojump_clock: Any
) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=0.05)
    told: list[tuple[str, float]] = []
    writer.on_commit = lambda records, events: told.append(("commit", trio.current_time()))
    writer.on_tick = lambda: told.append(("tick", trio.current_time()))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        await writer.add_record(pending((job, runs["web01"], 1, "s", 1, OutputRecord(value="x"), 0.0)))
        await writer.commit()  # a run's commit: the first tick
        await trio.sleep(0.01)
        await writer.add_record(pending((job, runs["web01"], 2, "s", 1, OutputRecord(value="y"), 0.0)))
        await writer.commit()  # a run's commit within the rhythm: no tick
        await trio.sleep(0.11)
        nursery.cancel_scope.cancel()
    # The flusher's commit ends the next rhythm (with nothing to write, it ticks alone); with
    # nothing committed since that tick and nothing queued, it ticks no more.
    assert [(name, round(at - start, 6)) for name, at in told] == [
        ("commit", 0.0), ("tick", 0.0), ("commit", 0.01), ("tick", 0.05)
    ]
    journal.close()


async def test_an_idle_writer_commits_what_is_queued_when_its_rhythm_would_have(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """The flusher sleeps with no timer while idle; a record, a change or a lease released
    wakes it, and is committed on the rhythm the flusher would have kept had it woken all along."""
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=0.05)
    told: list[float] = []
    writer.on_commit = lambda records, events: told.append(trio.current_time())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        start = trio.current_time()
        await trio.sleep(10.02)
        writer.queue([pending((job, runs["web01"], 1, "s", 1, OutputRecord(value="x"), 0.0))])
        await trio.sleep(1.0)
        assert [round(at - start, 6) for at in told] == [10.05]
        writer.change([RunChange(run_id=runs["web01"], state=State.FAILED, current_step=None, records=1, error="gone")])
        await trio.sleep(0.02)  # 11.04 since the start: the next beat of the rhythm is at 11.05
        assert [r.stored_state for r in journal.runs(job)] != [State.FAILED]
        await trio.sleep(0.02)
        assert [r.stored_state for r in journal.runs(job)] == [State.FAILED]
        nursery.cancel_scope.cancel()
    journal.close()


async def test_the_runs_commits_tick_in_rhythm_while_the_flusher_does_not(
    tmp_path: Path, autojump_clock: Any
) -> None:
    """The flusher may wait behind the runs' commits for the writer's lock; the ticks do not."""
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=5.0, followed_interval=0.03)
    writer.followed = lambda: True
    ticks: list[float] = []
    writer.on_commit = lambda records, events: None
    writer.on_tick = lambda: ticks.append(trio.current_time())
    start = trio.current_time()
    for seq in range(1, 11):  # a run's commit every 10 ms, and no flusher
        await writer.add_record(pending((job, runs["web01"], seq, "s", 1, OutputRecord(value=str(seq)), 0.0)))
        await writer.commit()
        await trio.sleep(0.01)
    assert [round(at - start, 6) for at in ticks] == [0.0, 0.03, 0.06, 0.09]
    journal.close()


async def test_while_someone_follows_the_writer_commits_sooner(tmp_path: Path, autojump_clock: Any) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01"])
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=5.0, followed_interval=0.01)
    told: list[float] = []
    writer.on_commit = lambda records, events: told.append(trio.current_time())
    following = False
    writer.followed = lambda: following
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.add_record(pending((job, runs["web01"], 1, "s", 1, OutputRecord(value="x"), 0.0)))
        await trio.sleep(1.0)
        assert told == []  # nobody follows: the record waits for the larger batch
        await trio.sleep(5.0)
        assert len(told) == 1
        following = True
        start = trio.current_time()
        await trio.sleep(0.02)  # the writer's current wait ends first, then it looks again
        await writer.add_record(pending((job, runs["web01"], 2, "s", 1, OutputRecord(value="y"), 0.0)))
        await trio.sleep(5.0)
        assert len(told) == 2 and told[1] - start <= 5.0
        await trio.sleep(0.05)
        await writer.add_record(pending((job, runs["web01"], 3, "s", 1, OutputRecord(value="z"), 0.0)))
        added = trio.current_time()
        await trio.sleep(0.05)
        assert len(told) == 3 and told[2] - added <= 0.011
        nursery.cancel_scope.cancel()


def test_records_are_forgotten_in_whole_chunks_about_a_batch_a_transaction(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    job, runs = new_job(journal, ["web01", "web02"])
    w1, w2 = runs["web01"], runs["web02"]
    # Ten chunks of ten records, the runs in turn.
    journal.apply([row(job, (w1, w2)[c % 2], c // 2 * 10 + i) for c in range(10) for i in range(1, 11)], [])
    removed = []
    while True:
        with journal._write() as db:
            removed.append(journal_retention.delete_records(db, job, 25))
        if removed[-1] == 0:
            break
    # The oldest chunk always goes, then those ending within the batch of it: never a part of one.
    assert removed == [30, 30, 30, 10, 0]
    assert journal.stored_records(job) == []
    assert journal._db.execute("SELECT pruned FROM jobs WHERE id = ?", (job,)).fetchone()[0] == 1


def test_an_older_journals_odd_rows_are_moved_exactly(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    job, runs = schema_3_journal(path, ["web01", "web02"])
    w1, w2 = runs["web01"], runs["web02"]

    def rec(n: int, run: int, seq: int, content: str) -> StoredRecord:
        return (job, n, run, seq, "s", 1, "output", 100.0 + n, content)

    # Seqs out of n order (schema 2 numbered by time, and a clock can step back), and a host's
    # JSON with a raw line feed between its tokens (valid JSON; the engine never writes one).
    old = [
        rec(1, w1, 1, '{"stream":"output","value":"a"}'),
        rec(2, w1, 3, '{"stream":"output","value":"c"}'),
        rec(3, w1, 2, '{"stream":"output","value":"b"}'),
        rec(4, w1, 4, '{"stream":"output","value":"d"}'),
        rec(5, w2, 1, '{"stream":"output",\n"value":1}'),
        rec(6, w2, 2, '{"stream":"output","value":2}'),
    ]
    insert_rows(path, old)
    journal = Journal(path)
    assert journal.stored_records(job) == old
    for after in range(len(old) + 1):
        for limit in (1, 2, 3):
            assert journal.stored_records(job, after=after, limit=limit) == old[after : after + limit]
    assert journal.stored_records(job, run_id=w2) == old[4:]
    assert journal.next_seq(w1) == 5 and journal.next_seq(w2) == 3


def test_records_an_older_version_wrote_after_the_move_are_kept_numbered_after(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job, runs = new_job(journal, ["web01"])
    w1 = runs["web01"]
    first = journal.apply([row(job, w1, s, at=float(s)) for s in (1, 2, 3)], [])
    journal.close()
    # An older vmbusops makes its records table again and numbers from 1, as it sees no record.
    db = sqlite3.connect(path)
    db.executescript(V3_RECORDS)
    later = [(job, n, w1, n, "s", 1, "output", 10.0 + n, json.dumps({"stream": "output", "value": f"old {n}"})) for n in (1, 2)]
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", later)
    db.commit()
    db.close()
    journal = Journal(path)
    stored = journal.stored_records(job)
    assert stored == [*first, (job, 4, w1, 4, *later[0][4:]), (job, 5, w1, 5, *later[1][4:])]
    assert journal.next_seq(w1) == 6


def test_a_journal_of_a_newer_schema_is_not_opened(tmp_path: Path) -> None:
    path = journal_as_left(tmp_path / "j.sqlite", "UPDATE meta SET value = '99' WHERE key = 'schema'")
    for readonly in (False, True):
        with pytest.raises(JournalError, match="schema 99, written by a newer vmbusops"):
            Journal(path, readonly=readonly)


def test_a_capped_journal_is_moved_and_compacted(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    job, runs = schema_3_journal(path, ["web01"])
    w1 = runs["web01"]
    text = json.dumps({"stream": "output", "value": "x" * 200})
    insert_rows(path, [(job, n, w1, n, "s", 1, "output", 0.0, text) for n in range(1, 8001)])
    # A cap the journal fits under, not with both copies of its records.
    journal = Journal(path, max_mb=path.stat().st_size * 1.2 / 2**20)
    assert len(journal.stored_records(job, limit=10**6)) == 8000
    journal.forget_records(job)
    journal.compact()
    assert journal._db.execute("PRAGMA freelist_count").fetchone()[0] == 0
    journal.close()
