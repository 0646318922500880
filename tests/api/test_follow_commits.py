"""Followers fed from the journal writer's commits: every record once, in order, even when they
fall behind and lose live events; and a record's JSON as ``logs --json`` gives it.

The follower runs in process over the real pieces around it (the journal, its writer, the
broadcaster, the reading connections); only the agent's HTTP layer is left out.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from vmbusops.api import follow
from vmbusops.api.broadcast import Broadcaster, JobEnded
from vmbusops.api.follow import JobFollower, RecordText
from vmbusops.api.metrics import AgentMetrics
from vmbusops.cli.record_lines import record_json
from vmbusops.engine.changes import JobChange, pending
from vmbusops.engine.journal import Journal, RecordView, StoredRecord
from vmbusops.engine.readers import JournalReaders
from vmbusops.engine.states import State
from vmbusops.engine.writer import JournalWriter
from vmbusops.owner import current_owner
from vmbusops.records import ErrorRecord, OutputRecord, Record, VerboseRecord, record_to_json
from vmbusops.times import iso_time

VMS = ["web01", "web02", "db01"]


class Surroundings:
    """What a follower asks of the agent's service, made of the real parts."""

    def __init__(self, path: Path, broadcaster: Broadcaster) -> None:
        self.readers = JournalReaders(path)
        self.catch_up = trio.CapacityLimiter(1)
        self.broadcaster = broadcaster
        self.metrics = AgentMetrics()
        self.running: set[int] = set()

    async def read(self, fn: Any) -> Any:
        return await self.readers.run(fn)


def parse(text: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            out.append((fields["event"], fields.get("id"), json.loads(fields["data"])))
    return out


async def collect(events: AsyncIterator[bytes], slow: bool) -> list[tuple[str, str | None, dict[str, Any]]]:
    got = []
    async for chunk in events:
        got += parse(chunk.decode())
        if slow:
            await trio.sleep(0.05)  # a client that reads slowly: the broadcaster drops for it
    return got


@pytest.mark.parametrize("slow", [False, True])
async def test_a_follower_sends_every_committed_record_once_in_order(tmp_path: Path, slow: bool) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job_id, runs = journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id="id-1", source="test", manifest="{}", bundle_dir=None,
        enable_guest_services=False, envelope=None, host="sim", vms=VMS, steps=[("s", "script")],
        owner=current_owner(), now=time.time(),
    )  # fmt: skip
    journal.apply([], [JobChange(job_id=job_id, state=State.IN_PROGRESS)])
    broadcaster = Broadcaster(buffer=2)
    service = Surroundings(path, broadcaster)
    service.running.add(job_id)
    writer = JournalWriter(journal, flush_records=10**9, flush_interval=10**9)
    writer.on_commit = broadcaster.publish_commit
    # Some records are committed before the follower comes: it catches up from the journal.
    for i in range(1, 6):
        await writer.add_record(pending((job_id, runs["web01"], i, "s", 1, OutputRecord(value=f"early {i}"), float(i))))
    await writer.commit()
    job, view_runs = journal.job(job_id), journal.runs(job_id)
    follower = JobFollower(service, job, view_runs, after=0)  # type: ignore[arg-type]
    got: list[tuple[str, str | None, dict[str, Any]]] = []
    total = 5

    async def follow() -> None:
        got.extend(await collect(follower.events(), slow))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await trio.sleep(0.01)
        seqs = dict.fromkeys(VMS, 0)
        seqs["web01"] = 5
        for burst in range(40):
            for vm in VMS:
                for _ in range(3):
                    seqs[vm] += 1
                    rec = VerboseRecord(message=f"{vm} {seqs[vm]} \x1b[31m<b>") if burst % 2 else OutputRecord(value=burst)
                    await writer.add_record(pending((job_id, runs[vm], seqs[vm], "s", 1, rec, 100.0 + total)))
                    total += 1
            await writer.commit()
            await trio.lowlevel.checkpoint()
        writer.change([JobChange(job_id=job_id, state=State.SUCCESS)])
        await writer.commit()
        service.running.discard(job_id)
        broadcaster.publish(JobEnded(job_id, State.SUCCESS))
    records = [(ident, data) for event, ident, data in got if event == "record"]
    assert [int(ident or 0) for ident, _ in records] == list(range(1, total + 1))
    stored = journal.records(job_id, limit=10**6)
    assert [(d["vm"], d["seq"], d["stream"]) for _, d in records] == [(r.vm, r.seq, r.stream) for r in stored]
    assert got[-1][0] == "end" and got[-1][2]["state"] == "success"
    if slow:
        assert broadcaster.dropped > 0  # the gap path was taken, not just the live one
    service.readers.close()


def test_a_records_json_is_what_logs_json_gives() -> None:
    records: list[Record] = [
        OutputRecord(value="ä\u2028 line"),
        VerboseRecord(message='quote " back\\slash \x00 \x1b[2J'),
        ErrorRecord(message="boom", category="NotSpecified", fqid="X,Y", target="<script>"),
    ]

    class Run:
        def __init__(self, id: int, vm: str) -> None:
            self.id, self.vm = id, vm

    text = RecordText([Run(7, 'we"b01'), Run(8, "db01")])  # type: ignore[list-item]
    for i, (rec, step) in enumerate(zip(records, ["s", None, 'st"ep'], strict=True)):
        content = json.dumps(record_to_json(rec), separators=(",", ":"), ensure_ascii=False)
        row: StoredRecord = (1, i + 1, 7 if i % 2 == 0 else 8, i + 3, step, 1, rec.stream.value, 1234.5 + i / 3, content)
        fields = record_to_json(rec)
        expected = {
            "vm": 'we"b01' if i % 2 == 0 else "db01", "event": "record", "stream": fields.pop("stream"),
            "seq": i + 3, "time": iso_time(1234.5 + i / 3), "step": step, **fields,
        }  # fmt: skip
        view = RecordView(
            run_id=row[2], vm=expected["vm"], seq=row[3], step=step, attempt=1, stream=row[6], time=row[7],
            content=json.loads(content),
        )  # fmt: skip
        assert json.dumps(record_json(view), separators=(",", ":"), ensure_ascii=False) == text(row)  # logs --json
        spliced = text(row)
        assert json.loads(spliced) == expected
        assert list(json.loads(spliced)) == list(expected)  # and in the same key order
        assert text.event(row) == f"id: {i + 1}\nevent: record\ndata: {spliced}\n\n"
        assert "\n" not in spliced  # one SSE data line whatever the guest printed


def new_job(journal: Journal) -> tuple[int, dict[str, int]]:
    return journal.create_job(
        bundle_name="b", bundle_version=1, bundle_id="id-1", source="test", manifest="{}", bundle_dir=None,
        enable_guest_services=False, envelope=None, host="sim", vms=VMS, steps=[("s", "script")],
        owner=current_owner(), now=time.time(),
    )  # fmt: skip


def finished_job(path: Path, records: int) -> tuple[Journal, int]:
    journal = Journal(path)
    job_id, runs = new_job(journal)
    rows = [(job_id, runs[VMS[i % 3]], i // 3 + 1, "s", 1, "output", float(i), '{"stream":"output","value":1}')
            for i in range(records)]  # fmt: skip
    journal.apply(rows, [JobChange(job_id=job_id, state=State.SUCCESS)])
    return journal, job_id


class Rests(trio.abc.Instrument):
    """How many times the event loop has rested (waited with nothing ready to run)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0:
            self.count += 1


async def test_followers_catching_up_at_once_read_one_page_per_rest_of_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages are read on the event loop when it would rest, one page of one follower at a time,
    whoever asks: never two pages back to back, before a call that came meanwhile; and each
    follower still gets every record in order."""
    monkeypatch.setattr(follow, "CATCH_UP_BATCH", 7)
    monkeypatch.setattr(follow, "CATCH_UP_PATIENCE", 60.0)  # only the loop's rests let a page go
    journal, job_id = finished_job(tmp_path / "j.sqlite", 50)
    service = Surroundings(tmp_path / "j.sqlite", Broadcaster())
    rests = Rests()
    trio.lowlevel.add_instrument(rests)
    pages: list[int] = []  # the loop's rests before each page
    page = JobFollower._page

    def counted(self: JobFollower, after: int, j: Journal) -> tuple[int, int, bytes]:
        pages.append(rests.count)
        return page(self, after, j)

    monkeypatch.setattr(JobFollower, "_page", counted)
    job, view_runs = journal.job(job_id), journal.runs(job_id)
    got: list[list[int]] = [[] for _ in range(4)]

    async def one(i: int) -> None:
        follower = JobFollower(service, job, view_runs, after=0)  # type: ignore[arg-type]
        got[i] = [int(ident or 0) for event, ident, _ in await collect(follower.events(), False) if event == "record"]

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(one, i)
    trio.lowlevel.remove_instrument(rests)
    assert got == [list(range(1, 51))] * 4
    assert len(pages) == 4 * 9  # 50 records in pages of 7 (7 full, a short one), then the stream's last catch-up
    assert len(set(pages)) == len(pages)  # a rest of the loop before every page
    service.readers.close()


async def test_a_catch_up_waits_while_other_tasks_are_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    """While another task is always ready to run, a catching-up follower sends no record until
    its patience runs out (a page per patience): the clock stands still here, so none; once the
    loop rests, every record goes."""
    monkeypatch.setattr(follow, "CATCH_UP_BATCH", 7)
    journal, job_id = finished_job(tmp_path / "j.sqlite", 50)
    service = Surroundings(tmp_path / "j.sqlite", Broadcaster())
    await service.readers.run_here(lambda j: None)  # the loop's connection opened (in a thread) beforehand
    follower = JobFollower(service, journal.job(job_id), journal.runs(job_id), after=0)  # type: ignore[arg-type]
    got: list[int] = []
    while_busy: list[int] = []

    async def follow_it() -> None:
        async for chunk in follower.events():
            got.extend(int(ident or 0) for event, ident, _ in parse(chunk.decode()) if event == "record")

    async def busy() -> None:
        for _ in range(500):
            await trio.lowlevel.checkpoint()
        while_busy.extend(got)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_it)
        nursery.start_soon(busy)
    assert while_busy == []
    assert got == list(range(1, 51))
    service.readers.close()


async def test_a_catch_up_goes_on_a_page_per_patience_when_the_loop_never_rests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_clock: trio.testing.MockClock
) -> None:
    monkeypatch.setattr(follow, "CATCH_UP_BATCH", 7)
    monkeypatch.setattr(follow, "CATCH_UP_PATIENCE", 0.01)
    journal, job_id = finished_job(tmp_path / "j.sqlite", 50)
    service = Surroundings(tmp_path / "j.sqlite", Broadcaster())
    await service.readers.run_here(lambda j: None)  # the loop's connection opened (in a thread) beforehand
    follower = JobFollower(service, journal.job(job_id), journal.runs(job_id), after=0)  # type: ignore[arg-type]
    pages: list[float] = []  # the clock at each page
    page = JobFollower._page

    def timed(self: JobFollower, after: int, j: Journal) -> tuple[int, int, bytes]:
        pages.append(trio.current_time())
        return page(self, after, j)

    monkeypatch.setattr(JobFollower, "_page", timed)
    got: list[int] = []
    done = False

    async def follow_it() -> None:
        nonlocal done
        async for chunk in follower.events():
            got.extend(int(ident or 0) for event, ident, _ in parse(chunk.decode()) if event == "record")
        done = True

    async def busy() -> None:  # always ready, a millisecond passing at each step
        while not done:
            mock_clock.jump(0.001)
            await trio.lowlevel.checkpoint()

    start = trio.current_time()
    with trio.fail_after(60):  # of the mock clock: a catch-up that never went on would stop here
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy)
            nursery.start_soon(follow_it)
    assert got == list(range(1, 51))
    gaps = [b - a for a, b in zip([start, *pages], pages, strict=False)]
    assert len(gaps) == 9 and min(gaps) >= 0.01  # each page after its patience, the loop never resting


async def test_a_read_on_the_loops_own_connection_sees_every_commit(tmp_path: Path) -> None:
    """``run_here`` keeps its connection between calls; each call still reads what is committed."""
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    job_id, runs = new_job(journal)
    readers = JournalReaders(path)
    assert (await readers.run_here(lambda j: j.job(job_id))).state is State.PENDING
    journal.apply([], [JobChange(job_id=job_id, state=State.IN_PROGRESS)])
    assert (await readers.run_here(lambda j: j.job(job_id))).state is State.IN_PROGRESS
    assert await readers.run_here(lambda j: j.run_ids(job_id)) == runs
    readers.close()
