"""A follower with nothing to send. Of a job this agent runs, it waits on no timer but the
keep-alive's, and the job's leaving the agent (``AgentService.job_left``) wakes it; of a job
another process runs, it reads the journal every ``IDLE_POLL`` seconds.

In process over the real journal, writer and broadcaster, on trio's autojump clock: time moves
only when every task waits, to the next deadline, so a follower that polls moves it in
``IDLE_POLL`` steps and is counted doing so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import trio.testing
from tests.api.test_follow_commits import Surroundings, parse
from tests.api.test_follow_fanout import Lab, rest

from vmbusops.api import follow
from vmbusops.api.service import AgentService
from vmbusops.engine.changes import JobChange
from vmbusops.engine.states import State


class Looks(set[int]):
    """The running jobs, counting how often a follower looks whether its job is one of them."""

    looks = 0

    def __contains__(self, job_id: object) -> bool:
        self.looks += 1
        return super().__contains__(job_id)


class Service(Surroundings):
    job_left = AgentService.job_left  # the agent's own, over these parts

    async def read(self, fn: Any) -> Any:
        # On the loop's own connection: a worker thread would let the autojump clock move while
        # it reads, past the deadlines the tests look at.
        return await self.readers.run_here(fn)


async def lab_with(tmp_path: Path, running: bool) -> tuple[Lab, Service, Looks]:
    lab = Lab(tmp_path)
    lab.service = service = Service(lab.journal.path, lab.broadcaster)
    service.running = looks = Looks({lab.job_id} if running else ())
    await service.readers.run_here(lambda _: None)  # the loop's reading connection, opened beforehand
    return lab, service, looks


async def test_a_follower_of_a_running_job_waits_on_no_timer_but_the_keep_alives(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    lab, _, looks = await lab_with(tmp_path, running=True)
    stream = lab.follower(0)
    await stream.__anext__()  # every run's state
    at = trio.current_time()
    assert await stream.__anext__() == b": keep-alive\n\n"
    assert abs(trio.current_time() - at - follow.KEEPALIVE) < 0.01  # (the catch-up's patience: 1 ms)
    # One look before the wait, one after it: not one per IDLE_POLL (that would be 30).
    assert looks.looks <= 3
    # The same again: the keep-alive's timer counts from the last chunk.
    assert await stream.__anext__() == b": keep-alive\n\n"
    assert abs(trio.current_time() - at - 2 * follow.KEEPALIVE) < 0.01
    await lab.end()
    assert (await rest(stream))[-1][0] == "end"
    lab.close()


async def ended_after(lab: Lab, looks: Looks, idle: float, end: Callable[[], None]) -> tuple[int, float, str]:
    """Follow the job past its first chunk; after ``idle`` seconds of nothing, ``end`` it. Returns
    how often the follower had looked at the running jobs by then, the clock that passed from
    ``end`` to the stream's end, and the state its last event (the end) gave."""
    stream = lab.follower(0)
    await stream.__anext__()  # every run's state
    got: list[bytes] = []

    async def follow_it() -> None:
        got.extend([chunk async for chunk in stream])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow_it)
        await trio.sleep(idle)
        looked = looks.looks
        at = trio.current_time()
        end()
    name, _, data = parse(b"".join(got).decode())[-1]
    assert name == "end"
    return looked, trio.current_time() - at, data["state"]


async def test_a_job_leaving_the_agent_wakes_its_followers_at_once(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A job that ends here without its end reaching the broadcaster (the agent stopped it, or the
    end's event was lost) is not waited for: its leaving the running jobs wakes the follower,
    which reads where it stands from the journal."""
    lab, service, looks = await lab_with(tmp_path, running=True)

    def end() -> None:
        lab.journal.apply([], [JobChange(job_id=lab.job_id, state=State.SUCCESS, finished_at=1.0)])
        service.job_left(lab.job_id)

    looked, took, state = await ended_after(lab, looks, 1.2, end)
    assert looked == 1  # once, before it waited; a poll looks after each IDLE_POLL: twice by now
    assert took < follow.IDLE_POLL
    assert state == "success"
    lab.close()


async def test_a_follower_of_another_processs_job_reads_the_journal_every_idle_poll(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    lab, _, looks = await lab_with(tmp_path, running=False)

    def end() -> None:
        lab.journal.apply([], [JobChange(job_id=lab.job_id, state=State.FAILED, finished_at=1.0)])

    looked, took, state = await ended_after(lab, looks, 2.0 + follow.IDLE_POLL / 2, end)
    assert looked >= 4  # polled: nothing else would tell it
    assert took <= follow.IDLE_POLL
    assert state == "failed"
    lab.close()
