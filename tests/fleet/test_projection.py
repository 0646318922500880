"""The LOG -> journal projection: deterministic, exactly-once, fenced, with JobMachine's outcome."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.fleet.factlog import FactLog, batch, out, run_change, step_change, whole_run

from vmbusops.api.follow import RecordText
from vmbusops.engine.states import State
from vmbusops.fleet.broker import StreamMessage
from vmbusops.fleet.controller import in_log_order
from vmbusops.fleet.messages import (
    VERSION,
    BatchesFact,
    CancelFact,
    DispatchFact,
    LostFact,
    MovedFact,
    RefusedFact,
    SkipFact,
    encode,
    parse_host,
)
from vmbusops.fleet.names import CTL_SUBJECT, host_log_subject
from vmbusops.fleet.projection import Projection
from vmbusops.fleet.store import FleetJournal
from vmbusops.owner import current_owner


def project(path: Path, log: FactLog) -> Projection:
    projection = Projection(FleetJournal(path), current_owner())
    for message in log.messages:
        projection.apply(message)
    return projection


def dump(path: Path) -> list[object]:
    """Everything the projection decides, as rows (owner and heartbeat are each process's own)."""
    db = sqlite3.connect(path)
    try:
        out: list[object] = []
        job_cols = [r[1] for r in db.execute("PRAGMA table_info(jobs)") if r[1] not in ("owner_pid", "owner_started", "heartbeat_at")]
        out.append(db.execute(f"SELECT {', '.join(job_cols)} FROM jobs ORDER BY id").fetchall())
        for table, order in (("runs", "id"), ("steps", "run_id, idx"), ("record_chunks", "job_id, n"), ("fleet_runs", "run_id"), ("fleet_jobs", "job_id"), ("fleet_state", "key")):
            out.append(db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall())
        return out
    finally:
        db.close()


def two_host_log() -> FactLog:
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv2")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(DispatchFact(job=1, run=2, host="hv2", epoch=1, reason="first dispatch", time=log.tick()))
    b1 = whole_run("hv1", 1, 1, 1)
    b2 = whole_run("hv2", 1, 2, 1)
    log.add(b1[0])
    log.add(b2[0])
    log.add(b1[0])  # a duplicate delivery past the stream's window
    log.add(b1[1])
    log.add(b2[1])
    return log


def test_two_projections_of_one_log_are_identical_down_to_record_numbers(tmp_path: Path) -> None:
    log = two_host_log()
    a = project(tmp_path / "a.sqlite", log)
    b = project(tmp_path / "b.sqlite", log)
    assert dump(tmp_path / "a.sqlite") == dump(tmp_path / "b.sqlite")
    # What `logs --json` and SSE show, byte for byte.
    texts = []
    for p in (a, b):
        runs = p.journal.runs(1)
        text = RecordText(runs)
        texts.append("\n".join(text(r) for r in p.journal.stored_records(1)))
    assert texts[0] == texts[1]
    assert [r[1] for r in a.journal.stored_records(1)] == list(range(1, 13))
    job = a.journal.job(1)
    assert job.state is State.SUCCESS and job.host == "fleet"
    assert [r.state for r in a.journal.runs(1)] == [State.SUCCESS, State.SUCCESS]
    assert a.journal.counter("fenced") == 1


def test_a_message_is_applied_once_even_if_given_again(tmp_path: Path) -> None:
    log = two_host_log()
    p = project(tmp_path / "j.sqlite", log)
    before = dump(tmp_path / "j.sqlite")
    for message in log.messages:
        assert p.apply(message).skipped == "applied already"
    assert dump(tmp_path / "j.sqlite") == before
    assert p.last_seq() == len(log.messages)


def test_batches_of_an_old_epoch_or_out_of_order_are_fenced_off(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    first = whole_run("hv1", 1, 1, 1)
    log.add(first[0])
    log.add(LostFact(job=1, run=1, epoch=1, reason="host hv1 lost its lease", time=log.tick()))
    # hv1 goes on talking: fenced.
    log.add(first[1])
    log.add(DispatchFact(job=1, run=1, host="hv2", epoch=2, reason="vm moved from hv1 to hv2", time=log.tick()))
    # The new host resumes at step 2, after the controller's two notes (seq 4 and 5).
    resumed = [
        batch("hv2", 1, 1, 2, 2, [], []),  # n = 2 before 1: fenced
    ]
    good = batch(
        "hv2", 1, 1, 2, 1,
        [out("step 2", 6, "s2")],
        [run_change("in-progress", None, 5), step_change(1, "in-progress", attempts=1, clear=True), step_change(1, "success"),
         run_change("success", None, 6, excerpt=[])],
    )  # fmt: skip
    for f in resumed:
        log.add(f)
    log.add(good)
    p = project(tmp_path / "j.sqlite", log)
    j = p.journal
    assert j.counter("fenced") == 2
    records = j.records(1)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    assert [r.n for r in records] == [1, 2, 3, 4, 5, 6]
    assert "lost host hv1" in records[3].content["message"]
    assert "run moved to host hv2" in records[4].content["message"]
    assert [s.state for s in j.steps(1)] == [State.SUCCESS, State.SUCCESS]
    assert j.job(1).state is State.SUCCESS
    runs = j.fleet_runs(1)
    assert (runs[0].host, runs[0].epoch, runs[0].last_n) == ("hv2", 2, 1)


def test_a_batch_whose_records_do_not_follow_the_run_is_refused_whole(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(batch("hv1", 1, 1, 1, 1, [out("a", 1), out("b", 3)], [run_change("in-progress", None, 0)]))
    bad_json = list(out("x", 1))
    bad_json[5] = '{"stream":"output","value":'
    log.add(batch("hv1", 1, 1, 1, 1, [tuple(bad_json)], []))
    log.add(batch("hv1", 1, 1, 1, 1, [], [{"t": "step", "index": 7, "state": "success"}]))
    log.raw(CTL_SUBJECT, b'{"v":1,"kind":"nonsense"}')
    p = project(tmp_path / "j.sqlite", log)
    assert p.journal.stored_records(1) == []
    assert p.journal.counter("bad_messages") == 4
    assert p.last_seq() == 6


def test_the_job_ends_as_job_machine_would_and_skips_count_as_failures(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv2"), ("vm3", "hv3")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    for f in whole_run("hv1", 1, 1, 1):
        log.add(f)
    log.add(DispatchFact(job=1, run=2, host="hv2", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(RefusedFact(host="hv2", job=1, run=2, epoch=1, code="ReplayedBundle", reason="seen before", time=log.tick()))
    p = project(tmp_path / "j.sqlite", log)
    assert p.journal.job(1).state is State.IN_PROGRESS
    log.add(SkipFact(job=1, run=3, reason="max errors exceeded", code="Skipped", time=log.tick()))
    applied = p.apply(log.messages[-1])
    assert applied.ended == [(1, State.FAILED)]
    runs = p.journal.runs(1)
    assert [r.state for r in runs] == [State.SUCCESS, State.FAILED, State.SKIPPED]
    assert runs[1].code == "ReplayedBundle" and "seen before" in (runs[1].error or "")
    assert [s.state for s in p.journal.steps(runs[2].id)] == [State.SKIPPED, State.SKIPPED]


def test_cancel_ends_undispatched_runs_at_once_and_waits_for_running_ones(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv2")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    first = whole_run("hv1", 1, 1, 1)
    log.add(first[0])
    log.add(CancelFact(job=1, run=None, time=log.tick()))
    p = project(tmp_path / "j.sqlite", log)
    runs = p.journal.runs(1)
    assert [r.state for r in runs] == [State.IN_PROGRESS, State.CANCELLED]
    assert p.journal.job(1).cancel_requested
    log.add(batch("hv1", 1, 1, 1, 2, [], [step_change(1, "cancelled"), run_change("cancelled", None, 3, code="Cancelled")]))
    applied = p.apply(log.messages[-1])
    assert applied.ended == [(1, State.CANCELLED)]


def test_moved_run_waits_and_a_skip_for_its_vm_placed_nowhere_ends_it(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(whole_run("hv1", 1, 1, 1)[0])
    log.add(MovedFact(host="hv1", job=1, run=1, epoch=1, reason="live migration", time=log.tick()))
    p = project(tmp_path / "j.sqlite", log)
    run = p.journal.runs(1)[0]
    assert run.state is State.DELAYED
    assert p.journal.fleet_runs(1)[0].waiting == "moved"
    assert p.journal.run_start(1) == (("success", "pending"), (1, 0), 5)
    log.add(SkipFact(job=1, run=1, reason="vm1 is placed on no live host", code="NotPlaced", time=log.tick()))
    p.apply(log.messages[-1])
    assert p.journal.job(1).state is State.FAILED


@pytest.mark.parametrize("dup", ["job", "dispatch"])
def test_duplicate_decisions_change_nothing(tmp_path: Path, dup: str) -> None:
    log = FactLog()
    job = log.job([("vm1", "hv1")])
    d = DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick())
    log.add(d)
    log.add(job if dup == "job" else d)
    p = project(tmp_path / "j.sqlite", log)
    assert len(p.journal.jobs()) == 1
    assert p.journal.counter("duplicates") == 1


def batches_log() -> FactLog:
    """The two-host log's batches sent as hosts send them under load: several in one message,
    with a duplicate and a stale epoch among them."""
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv1")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(DispatchFact(job=1, run=2, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    b1 = whole_run("hv1", 1, 1, 1)
    b2 = whole_run("hv1", 1, 2, 1)
    stale = whole_run("hv1", 1, 2, 2)[0]
    log.add(BatchesFact(host="hv1", batches=(b1[0], b2[0], stale)))
    log.add(BatchesFact(host="hv1", batches=(b1[0], b1[1])))  # b1[0] again: fenced alone
    log.add(b2[1])
    return log


def test_batches_in_one_message_are_each_applied_or_fenced_as_if_they_came_alone(tmp_path: Path) -> None:
    log = batches_log()
    together = project(tmp_path / "together.sqlite", log)
    alone = FactLog()
    for message in log.messages:
        fact = parse_host(message.data, host="hv1") if message.subject != CTL_SUBJECT else None
        if isinstance(fact, BatchesFact):
            for one in fact.batches:
                alone.add(one)
        else:
            alone.raw(message.subject, message.data)
    single = project(tmp_path / "alone.sqlite", alone)
    for p in (together, single):
        assert [r[1] for r in p.journal.stored_records(1)] == list(range(1, 13))
        assert p.journal.job(1).state is State.SUCCESS
        assert p.journal.counter("fenced") == 2  # the stale epoch, the repeat
    rows_together, rows_alone = dump(tmp_path / "together.sqlite"), dump(tmp_path / "alone.sqlite")
    assert rows_together[:5] == rows_alone[:5]  # jobs, runs, steps, records, fleet_runs


def test_followers_are_told_a_page_in_log_order_each_commit_its_records_then_its_changes(tmp_path: Path) -> None:
    """An agent's ``batches`` message holds several of its commits: a follower of the controller
    gets each commit's records and then its run changes, in the order the host made them, as a
    follower of the agent does; never a later commit's records before an earlier one's changes."""
    projection = Projection(FleetJournal(tmp_path / "fleet.sqlite"), current_owner())
    page = projection.apply_page(batches_log().messages)
    told = [
        ([(r[2], r[3]) for r in records], sorted({(e.vm, e.state.value, e.step) for e in events}))
        for records, events in in_log_order(page)
    ]
    # Run 1's first commit, run 2's (the same message; a stale epoch and a repeat fenced off),
    # then run 1's second and run 2's second. One call for the whole page would have told every
    # event after every record: vm1 in progress at s1 after the records of its s2.
    assert told == [
        ([(1, 1), (1, 2), (1, 3)], [("vm1", "in-progress", "s1")]),
        ([(2, 1), (2, 2), (2, 3)], [("vm2", "in-progress", "s1")]),
        ([(1, 4), (1, 5), (1, 6)], [("vm1", "success", None)]),
        ([(2, 4), (2, 5), (2, 6)], [("vm2", "success", None)]),
    ]


def test_a_page_applied_in_one_transaction_is_the_log_applied_message_by_message(tmp_path: Path) -> None:
    log = batches_log()
    paged = Projection(FleetJournal(tmp_path / "paged.sqlite"), current_owner())
    applied = paged.apply_page(log.messages[:4]) + paged.apply_page(log.messages[2:])
    assert [a.skipped for a in applied[4:6]] == ["applied already"] * 2  # the overlap
    assert sum(len(a.records) for a in applied) == 12
    project(tmp_path / "one.sqlite", log)
    assert dump(tmp_path / "paged.sqlite") == dump(tmp_path / "one.sqlite")
    assert paged.last_seq() == len(log.messages)


def test_a_page_without_a_skip_and_one_with_a_skip_give_what_the_messages_alone_give(tmp_path: Path) -> None:
    # A page is applied without savepoints first; one with a message to skip again, with them.
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv2")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(DispatchFact(job=1, run=2, host="hv2", epoch=1, reason="first dispatch", time=log.tick()))
    one, two = whole_run("hv1", 1, 1, 1), whole_run("hv2", 1, 2, 1)
    for fact in (one[0], two[0], one[0], one[1], two[1]):  # one[0] twice: the repeat is fenced
        log.add(fact)
    paged = Projection(FleetJournal(tmp_path / "paged.sqlite"), current_owner())
    applied = paged.apply_page(log.messages[:5]) + paged.apply_page(log.messages[5:])
    assert [a.skipped is not None for a in applied] == [False] * 5 + [True, False, False]
    assert paged.journal.counter("fenced") == 1 and paged.journal.job(1).state is State.SUCCESS
    project(tmp_path / "alone.sqlite", log)
    assert dump(tmp_path / "paged.sqlite") == dump(tmp_path / "alone.sqlite")


def test_a_page_that_fails_midway_leaves_nothing_and_is_applied_whole_again(tmp_path: Path) -> None:
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv1")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    log.add(DispatchFact(job=1, run=2, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    for fact in whole_run("hv1", 1, 1, 1):
        log.add(fact)
    p = Projection(FleetJournal(tmp_path / "j.sqlite"), current_owner())
    p.apply_page(log.messages[:4])
    last = log.messages[4]
    after = StreamMessage(subject=last.subject, seq=last.seq + 1, data=b"{}")
    with pytest.raises(RuntimeError), _failing_after(p, 1):
        p.apply_page([last, after])
    assert p.last_seq() == 4 and len(p.journal.stored_records(1)) == 3
    p.apply_page([last])
    project(tmp_path / "one.sqlite", log)
    assert dump(tmp_path / "j.sqlite") == dump(tmp_path / "one.sqlite")


@contextmanager
def _failing_after(p: Projection, good: int) -> Iterator[None]:
    """The projection's writes fail (as a full disk would) after ``good`` messages of a page."""
    real = p._one
    calls = 0

    def one(db: sqlite3.Connection, message: StreamMessage, out: Any) -> None:
        nonlocal calls
        calls += 1
        if calls > good:
            raise RuntimeError("disk full")
        real(db, message, out)

    p._one = one  # type: ignore[method-assign]
    try:
        yield
    finally:
        p._one = real  # type: ignore[method-assign]


def _newer_protocol(data: bytes) -> bytes:
    body = json.loads(data)
    body["v"] = VERSION + 1
    return json.dumps(body).encode()


def test_a_controller_fact_of_a_newer_protocol_stops_the_projection_before_it(tmp_path: Path) -> None:
    """A newer controller wrote it: what comes after may build on it, so nothing from it on is
    applied (not skipped: once upgraded, the same journal applies it), here or after a restart."""
    log = FactLog()
    log.job([("vm1", "hv1"), ("vm2", "hv2")])
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    newer = log.raw(CTL_SUBJECT, _newer_protocol(encode(CancelFact(job=1, run=None, time=log.tick()))))
    log.add(DispatchFact(job=1, run=2, host="hv2", epoch=1, reason="first dispatch", time=log.tick()))
    path = tmp_path / "p.sqlite"
    projection = Projection(FleetJournal(path), current_owner())
    applied = projection.apply_page(log.messages)
    assert [a.seq for a in applied] == [1, 2]
    assert projection.halted is not None
    assert projection.halted[0] == newer.seq
    assert f"fleet protocol {VERSION + 1}" in projection.halted[1]
    assert projection.journal.last_seq() == newer.seq - 1
    assert [(r.host, r.epoch) for r in projection.journal.fleet_runs(1)] == [("hv1", 1), ("hv2", 0)]
    assert projection.apply_page(log.messages[newer.seq :]) == []
    assert projection.journal.last_seq() == newer.seq - 1
    again = Projection(FleetJournal(path), current_owner())
    assert again.apply_page(log.messages[newer.seq - 1 :]) == []
    assert again.halted is not None and again.halted[0] == newer.seq


def test_a_host_fact_of_a_newer_protocol_is_skipped_not_obeyed(tmp_path: Path) -> None:
    """No agent writes one for a controller that cannot read it; a host that does must not be
    able to stop the controllers."""
    log = FactLog()
    log.job([("vm1", "hv1")], steps=1)
    log.add(DispatchFact(job=1, run=1, host="hv1", epoch=1, reason="first dispatch", time=log.tick()))
    first = whole_run("hv1", 1, 1, 1)[0]
    log.raw(host_log_subject("hv1"), _newer_protocol(encode(first)))
    log.add(SkipFact(job=1, run=1, reason="r", code="c", time=log.tick()))
    projection = Projection(FleetJournal(tmp_path / "p.sqlite"), current_owner())
    applied = projection.apply_page(log.messages)
    assert projection.halted is None
    assert applied[2].skipped is not None and "fleet protocol" in applied[2].skipped
    assert projection.journal.counter("bad_messages") == 1
    assert projection.journal.last_seq() == len(log.messages)
