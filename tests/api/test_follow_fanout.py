"""Many followers of one job: a commit's text is made once for all of them, each still gets exactly
the records past its own position, a follower whose queue overflows loses nothing, and a client
that goes away ends its follower even while no commit comes.

In process over the real journal, writer and broadcaster (``Surroundings`` is the agent's service
as a follower sees it); the HTTP server is left out, the response's ASGI calls are made here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.api.test_follow_commits import VMS, Surroundings, new_job, parse

from vmbusops.api import follow
from vmbusops.api.broadcast import Broadcaster, JobEnded
from vmbusops.api.follow import EventStream, JobFollower, RecordText
from vmbusops.engine.changes import JobChange, RunChange, pending
from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import Journal
from vmbusops.engine.states import State
from vmbusops.engine.writer import JournalWriter
from vmbusops.records import OutputRecord

Event = tuple[str, str | None, dict[str, Any]]


class Lab:
    def __init__(self, tmp_path: Path, buffer: int = 4096) -> None:
        self.journal = Journal(tmp_path / "j.sqlite")
        self.job_id, self.runs = new_job(self.journal)
        self.journal.apply([], [JobChange(job_id=self.job_id, state=State.IN_PROGRESS)])
        self.broadcaster = Broadcaster(buffer=buffer)
        self.service = Surroundings(self.journal.path, self.broadcaster)
        self.service.running.add(self.job_id)
        self.writer = JournalWriter(self.journal, flush_records=10**9, flush_interval=10**9)
        self.writer.on_commit = self.broadcaster.publish_commit
        self.seq = dict.fromkeys(VMS, 0)

    def follower(self, after: int) -> AsyncGenerator[bytes, None]:
        job, runs = self.journal.job(self.job_id), self.journal.runs(self.job_id)
        return JobFollower(self.service, job, runs, after=after).events()  # type: ignore[arg-type]

    async def commit(self, count: int, vm: str = "web01") -> None:
        for _ in range(count):
            self.seq[vm] += 1
            row = pending((self.job_id, self.runs[vm], self.seq[vm], "s", 1, OutputRecord(value=f"{vm} {self.seq[vm]}"), 1.0))
            await self.writer.add_record(row)
        await self.writer.commit()

    async def end(self) -> None:
        self.writer.change([JobChange(job_id=self.job_id, state=State.SUCCESS)])
        await self.writer.commit()
        self.service.running.discard(self.job_id)
        self.broadcaster.publish(JobEnded(self.job_id, State.SUCCESS))

    def close(self) -> None:
        self.service.readers.close()
        self.journal.close()


def ids(events: list[Event]) -> list[int]:
    return [int(ident or 0) for name, ident, _ in events if name == "record"]


async def rest(stream: AsyncGenerator[bytes, None]) -> list[Event]:
    return [e async for chunk in stream for e in parse(chunk.decode())]


async def test_followers_at_different_positions_get_exactly_theirs_and_share_a_commits_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab(tmp_path)
    await lab.commit(3)  # n 1..3, before anyone follows
    formatted: list[int] = []
    event = RecordText.event

    def counted(self: RecordText, row: Any) -> str:
        formatted.append(row[1])
        return event(self, row)

    monkeypatch.setattr(RecordText, "event", counted)
    # From the start; from a Last-Event-ID inside the journal; from one ahead of the job.
    streams = [lab.follower(0), lab.follower(2), lab.follower(5)]
    got: list[list[Event]] = [[], [], []]
    for i, stream in enumerate(streams):
        got[i] += parse((await stream.__anext__()).decode())  # the snapshots
    assert [e[0] for e in got[0]] == ["job", "run", "run", "run"]
    for i, stream in enumerate(streams[:2]):
        got[i] += parse((await stream.__anext__()).decode())  # caught up from the journal
    formatted.clear()
    await lab.commit(4)  # n 4..7, live to all three
    for i, stream in enumerate(streams):
        got[i] += parse((await stream.__anext__()).decode())
    # The two at the head share the commit's text; the one ahead formats the part it lacks.
    assert sorted(formatted) == [4, 5, 6, 6, 7, 7]
    formatted.clear()
    await lab.commit(2, "db01")  # n 8..9
    for i, stream in enumerate(streams):
        got[i] += parse((await stream.__anext__()).decode())
    assert formatted == [8, 9]  # once, for all three
    await lab.end()
    for i, stream in enumerate(streams):
        got[i] += await rest(stream)
    assert ids(got[0]) == list(range(1, 10))
    assert ids(got[1]) == list(range(3, 10))
    assert ids(got[2]) == list(range(6, 10))
    assert all(g[-1][0] == "end" for g in got)
    lab.close()


async def test_what_is_queued_goes_out_as_one_chunk(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    await lab.commit(1)
    stream = lab.follower(0)
    await stream.__anext__()  # the snapshots
    assert ids(parse((await stream.__anext__()).decode())) == [1]  # from the journal
    for _ in range(3):
        await lab.commit(2)
    lab.broadcaster.publish(RunChanged(lab.job_id, "web01", State.IN_PROGRESS, "s"))
    chunk = parse((await stream.__anext__()).decode())
    assert [(name, ident) for name, ident, _ in chunk] == [
        *(("record", str(n)) for n in range(2, 8)), ("run", None)
    ]  # fmt: skip
    await lab.end()
    assert ids(await rest(stream)) == []
    lab.close()


async def test_a_follower_whose_queue_overflows_loses_no_record_and_no_state(tmp_path: Path) -> None:
    lab = Lab(tmp_path, buffer=2)
    stream = lab.follower(0)
    got = parse((await stream.__anext__()).decode())
    # It does not read while five commits and a run's new state come: its queue holds two.
    for _ in range(5):
        await lab.commit(3, "web02")
    lab.writer.change(
        [RunChange(run_id=lab.runs["db01"], state=State.FAILED, current_step="s", records=0)],
        [RunChanged(lab.job_id, "db01", State.FAILED, "s")],
    )
    await lab.writer.commit()
    assert lab.broadcaster.dropped > 0
    while not any(name == "run" and data["vm"] == "db01" for name, _, data in got[4:]):
        got += parse((await stream.__anext__()).decode())
    assert ids(got) == list(range(1, 16))  # every record once, in order
    await lab.commit(1, "web02")
    await lab.end()
    got += await rest(stream)
    assert ids(got) == list(range(1, 17))
    states = {data["vm"]: data["state"] for name, _, data in got if name == "run"}
    assert states["db01"] == "failed"
    assert got[-1][0] == "end"
    lab.close()


async def test_a_client_that_goes_away_ends_its_follower_while_nothing_comes(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    response = EventStream(lab.follower(0), headers={"Cache-Control": "no-store"})
    gone, started = trio.Event(), trio.Event()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)
        if len(sent) == 2:  # the headers and the snapshots, then it waits for commits
            started.set()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(response, {"type": "http"}, receive, send)
            await started.wait()
            assert lab.broadcaster.followers == 1
            gone.set()
    assert lab.broadcaster.followers == 0
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert headers[b"cache-control"] == b"no-store"
    assert sent[1]["body"].startswith(b"retry: 1000\n\nevent: job\n")
    lab.close()


async def test_the_body_goes_to_the_servers_own_send_past_the_middleware(tmp_path: Path) -> None:
    lab = Lab(tmp_path)
    await lab.commit(2)
    await lab.end()
    via_middleware: list[dict[str, Any]] = []
    to_server: list[dict[str, Any]] = []

    async def middleware(message: Any) -> None:
        via_middleware.append(message)

    async def server(message: Any) -> None:
        to_server.append(message)

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError

    response = EventStream(lab.follower(0), headers={"Cache-Control": "no-store"})
    with trio.fail_after(10):
        await response({"type": "http", follow.SERVER_SEND: server}, receive, middleware)
    assert [m["type"] for m in via_middleware] == ["http.response.start"]
    assert {m["type"] for m in to_server} == {"http.response.body"}
    assert [m["more_body"] for m in to_server][-1] is False
    got = [e for m in to_server for e in parse(m["body"].decode())]
    assert ids(got) == [1, 2] and got[-1][0] == "end"
    lab.close()


async def test_a_follower_sends_at_most_one_chunk_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits that come within the interval after a chunk wait for the next one, together."""
    monkeypatch.setattr(follow, "COALESCE", 3600.0)
    lab = Lab(tmp_path)
    await lab.commit(1)
    stream = lab.follower(0)
    await stream.__anext__()
    assert ids(parse((await stream.__anext__()).decode())) == [1]  # from the journal
    await lab.commit(1)
    assert ids(parse((await stream.__anext__()).decode())) == [2]  # quiet before: at once
    await lab.commit(1)
    with trio.move_on_after(0.2) as waited:
        await stream.__anext__()
    assert waited.cancelled_caught  # held back: the last chunk was just sent
    lab.close()


async def test_followers_of_an_ended_job_share_its_last_chunk_until_it_ends_again(tmp_path: Path) -> None:
    """Every run's state and the end are made once for the followers of an ended job; a job
    resumed and ended again (``jobs resume``) has another last chunk, with its new states."""
    lab = Lab(tmp_path)
    await lab.commit(2)
    lab.writer.change([JobChange(job_id=lab.job_id, state=State.SUCCESS, finished_at=1.0)])
    await lab.writer.commit()
    lab.service.running.discard(lab.job_id)
    first = [chunk async for chunk in lab.follower(0)]
    second = [chunk async for chunk in lab.follower(0)]
    assert first == second
    ended = parse(first[-1].decode())
    assert [(name, data.get("vm"), data["state"]) for name, _, data in ended] == [
        *(("run", vm, "pending") for vm in VMS), ("end", None, "success")
    ]
    lab.journal.apply([], [
        JobChange(job_id=lab.job_id, state=State.IN_PROGRESS),
        RunChange(run_id=lab.runs["db01"], state=State.FAILED, current_step=None, records=0),
        JobChange(job_id=lab.job_id, state=State.FAILED, finished_at=2.0),
    ])  # fmt: skip
    third = await rest(lab.follower(0))
    assert {data["vm"]: data["state"] for name, _, data in third if name == "run"}["db01"] == "failed"
    assert third[-1][0] == "end" and third[-1][2]["state"] == "failed"
    lab.close()


async def test_the_snapshot_a_follower_starts_with_comes_a_few_runs_a_chunk_with_a_checkpoint_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "SNAPSHOT_RUNS", 2)  # the job has three runs: two chunks
    lab = Lab(tmp_path)
    stream = lab.follower(0)
    chunks = [await stream.__anext__(), await stream.__anext__()]
    await stream.aclose()
    first, second = (parse(c.decode()) for c in chunks)
    assert chunks[0].startswith(b"retry: 1000\n\n")
    assert [(name, data.get("vm")) for name, _, data in first] == [("job", None), ("run", "web01"), ("run", "web02")]
    assert [(name, data["vm"]) for name, _, data in second] == [("run", "db01")]
    # Between the two, the loop may run other tasks: a cancelled caller is cancelled there.
    stream = lab.follower(0)
    await stream.__anext__()
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.__anext__()
    assert scope.cancelled_caught
    await stream.aclose()
    lab.close()
