"""A tick of the pacer sends for a resting follower (``JobFollower.serve``), against a real
Hypercorn server on loopback, the real journal, writer and broadcaster, and a raw HTTP client:
records the commits brought go out at the tick with the follower left resting; a state change,
the job's end or a socket that takes part of a chunk wakes it, and the client gets every record
once, in order, with the rest of the chunk before anything else.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.api.test_connection import following, next_event
from tests.api.test_follow_commits import parse
from tests.api.test_follow_fanout import Event, Lab, ids

from vmbusops.api import follow
from vmbusops.api.app import Api
from vmbusops.api.connection import AgentTCPServer
from vmbusops.api.follow import EventStream, JobFollower
from vmbusops.engine.changes import pending
from vmbusops.engine.events import RunChanged
from vmbusops.engine.states import State
from vmbusops.records import OutputRecord


class Served:
    """How each tick's ``serve`` of the followers answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: list[bool] = []
        serve = JobFollower.serve

        def counted(follower: JobFollower) -> bool:
            answer = serve(follower)
            self.answers.append(answer)
            return answer

        monkeypatch.setattr(JobFollower, "serve", counted)


@asynccontextmanager
async def follow_server(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    monkeypatch.setattr(hypercorn_run, "TCPServer", AgentTCPServer)

    async def events(request: Request) -> Response:
        job, runs = lab.journal.job(lab.job_id), lab.journal.runs(lab.job_id)
        follower = JobFollower(lab.service, job, runs, after=0)  # type: ignore[arg-type]
        return EventStream(follower.events(), headers={"Cache-Control": "no-store"}, on_writer=follower.use_writer)

    # The loop's reading connection, opened (in a thread) before anyone follows: a follower's way
    # from its request to waiting for commits is then all on the loop, so that once every task
    # is blocked (``settled``) it waits for them. Opened by the follower's catch-up instead, the
    # thread may outlast ``settled`` on a loaded machine; a commit made meanwhile is then read by
    # the catch-up, and the follower, with nothing new to send, never rests on the pacer.
    await lab.service.readers.run_here(lambda journal: None)
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    app = Api(routes=[Route("/events", events)])
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))  # type: ignore[arg-type]
        yield int(binds[0].rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def read_to_end(stream: trio.SocketStream, conn: h11.Connection) -> list[Event]:
    body = bytearray()
    while not isinstance(event := await next_event(stream, conn), h11.EndOfMessage):
        body += event.data
    return parse(body.decode())


async def commit_value(lab: Lab, value: str) -> None:
    lab.seq["web01"] += 1
    row = (lab.job_id, lab.runs["web01"], lab.seq["web01"], "s", 1, OutputRecord(value=value), 1.0)
    await lab.writer.add_record(pending(row))
    await lab.writer.commit()


async def resting(lab: Lab) -> None:
    """Until the follower rests on the pacer, with all it had to send sent."""
    await trio.testing.wait_all_tasks_blocked(0.02)
    while lab.broadcaster.pacer.resting != 1:
        await trio.testing.wait_all_tasks_blocked(0.02)


async def settled() -> None:
    await trio.testing.wait_all_tasks_blocked(0.02)


async def test_a_tick_sends_what_commits_brought_and_the_follower_wakes_only_for_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "COALESCE", 3600.0)  # no rest ends but at a tick
    lab, served = Lab(tmp_path), Served(monkeypatch)
    with trio.fail_after(30):
        async with follow_server(lab, monkeypatch) as port, following(port) as (stream, conn):
            await settled()
            await lab.commit(3)  # the follower waits for commits: it wakes, sends them, and rests
            await resting(lab)
            for _ in range(3):
                await lab.commit(2)
                lab.broadcaster.pacer.tick()
                await resting(lab)
            assert served.answers == [True, True, True]  # sent by the ticks; it never woke
            await lab.commit(1)
            lab.broadcaster.publish(RunChanged(lab.job_id, "web01", State.IN_PROGRESS, "s"))
            lab.broadcaster.pacer.tick()  # a state change: not the tick's to send
            await settled()
            assert served.answers[3:] == [False]
            await lab.commit(2)
            await lab.end()
            lab.broadcaster.pacer.tick()  # the job's end: not the tick's either
            got = await read_to_end(stream, conn)
    assert ids(got) == list(range(1, 13))  # every record once, in order
    state = next(i for i, (name, _, data) in enumerate(got) if name == "run" and data["state"] == "in-progress")
    assert ids(got[:state]) == list(range(1, 11))  # the state change where it came: after record 10
    assert got[-1][0] == "end"
    lab.close()


async def test_what_the_socket_does_not_take_at_a_tick_is_sent_by_the_woken_follower_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(follow, "COALESCE", 3600.0)
    lab, served = Lab(tmp_path), Served(monkeypatch)
    big = "x" * (1 << 16)
    with trio.fail_after(60):
        async with follow_server(lab, monkeypatch) as port, following(port) as (stream, conn):
            await settled()
            await lab.commit(1)
            await resting(lab)
            # The client reads nothing while each tick sends a 64 KiB record: the socket fills,
            # and the tick that meets it full leaves the rest of its chunk to the woken follower.
            while len(served.answers) < 1000 and (not served.answers or served.answers[-1]):
                await commit_value(lab, big)
                lab.broadcaster.pacer.tick()
                await settled()
            await lab.commit(1)
            await lab.end()
            lab.broadcaster.pacer.tick()
            got = await read_to_end(stream, conn)
    assert served.answers[0] is True and served.answers[-1] is False  # the socket filled, a tick met it
    records = ids(got)
    assert records == list(range(1, len(served.answers) + 3))  # every record once, in order
    values = [data["value"] for name, _, data in got if name == "record"]
    assert values[1:-1] == [big] * len(served.answers)  # whole: the woken follower sent the rest
    assert got[-1][0] == "end"
    lab.close()
