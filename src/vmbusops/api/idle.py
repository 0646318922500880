"""Waiting until the event loop has nothing else to run, for work that no one waits on now.

A follower catching up a large job has many pages of records to send, each some hundreds of
microseconds of the interpreter, and only that follower's client waits on them. A status call, a
health check or a live follower's chunk is waited on now. Trio runs every ready task in turn, so a
page that runs whenever it is ready comes before each step of a call that arrives meanwhile (an
HTTP call is several steps). :func:`idle` gives such work only the time the loop would otherwise
sleep: it returns once the loop, having run everything that was ready, is about to wait for I/O or
a timer, or after ``patience`` seconds, so that a loop that never rests still gets the work done.

It is a trio instrument (:class:`trio.abc.Instrument`), added to the run the first time it is
needed: before each wait of the loop that has a timeout (nothing is ready to run), it wakes the
waiters through the run's token, which also ends that wait at once. (trio's
``wait_all_tasks_blocked`` does as much, but it lives in ``trio.testing``, which imports pytest
where pytest is installed.) A ``MockClock`` that jumps ahead whenever the loop would rest (the
tests' ``autojump_threshold=0``) never lets the loop wait with a timeout: there a waiter returns
after ``patience`` of the mock clock's time.
"""

from __future__ import annotations

import trio


class _Idle(trio.abc.Instrument):
    """The waiters of one run, woken when its loop is about to rest."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._waiters: list[trio.lowlevel.Task] = []
        self._waking = False

    def before_io_wait(self, timeout: float) -> None:
        if timeout > 0 and self._waiters and not self._waking:
            self._waking = True
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                self._waking = False

    def _wake(self) -> None:
        self._waking = False
        waiters, self._waiters = self._waiters, []
        for task in waiters:
            trio.lowlevel.reschedule(task)

    async def wait(self) -> None:
        task = trio.lowlevel.current_task()
        self._waiters.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._waiters.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)


_IDLE: trio.lowlevel.RunVar[_Idle] = trio.lowlevel.RunVar("vmbusops.api.idle")


async def idle(patience: float) -> None:
    """Return once the loop has run every other ready task and would wait, or after ``patience``
    seconds (a checkpoint either way: a cancelled caller is cancelled here)."""
    try:
        gate = _IDLE.get()
    except LookupError:
        gate = _Idle(trio.lowlevel.current_trio_token())
        trio.lowlevel.add_instrument(gate)
        _IDLE.set(gate)
    with trio.move_on_after(patience):
        await gate.wait()


__all__ = ["idle"]
