"""Committed records and state changes, fanned out to the followers of each job.

The engine's journal writer tells the agent of every commit (:meth:`Broadcaster.publish_commit`),
so a follower is sent only what is durable and numbered: a record's ``n`` is its place in the job
for good, and a follower's position is one number. Publishing is synchronous on the writer's path
and must never wait: each follower has a bounded queue (:class:`Subscription`), and a follower too
slow to keep up loses live events instead of slowing the writer. It notices (the next record it
gets is not the next ``n``, or its queue says it lost some) and reads what it missed from the
journal, where it already is (see :mod:`vmbusops.api.follow`). So the queue bounds memory, not
correctness.

Records go out as one event per job per commit, the same object to every follower of the job: its
Server-Sent Events text is made once, by the first follower that sends it, and the others send
the same bytes (:meth:`RecordsCommitted.sse`). Publishing to a follower is a list append, and a
wake-up only if it waits; a follower takes all that is queued at once.

Between two chunks a follower rests until the next tick of the agent's one :class:`Pacer`: the
journal writer ticks it once per rhythm, at the first commit that ends it (see
:attr:`~vmbusops.engine.writer.JournalWriter.on_tick`). At the tick, what the commits since a
resting follower's last chunk brought is sent for it, when it is only records that follow its
position and its connection's socket takes them at once; only a follower with anything else to
do is woken. All that rest wait on no timer of their own (a trio timer that expires raises
``Cancelled`` in its task: one per chunk per follower was a good part of what a follower cost),
and a follower sent for at a tick costs no task switch either.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from vmbusops.engine import RunChanged, State
from vmbusops.engine.journal import StoredRecord


@dataclass(frozen=True, slots=True)
class JobEnded:
    """Published once the job's final state is committed to the journal."""

    job_id: int
    state: State


class RecordsCommitted:
    """Records of one job that one journal commit made durable, in ``n`` order."""

    __slots__ = ("_sse", "job_id", "rows")

    def __init__(self, job_id: int, rows: list[StoredRecord]) -> None:
        self.job_id = job_id
        self.rows = rows
        self._sse: bytes | None = None

    def sse(self, encode: Callable[[list[StoredRecord]], bytes]) -> bytes:
        """All the rows as SSE events, ``encode``\\ d by the first follower to ask, shared by all."""
        text = self._sse
        if text is None:
            text = self._sse = encode(self.rows)
        return text


StreamEvent = RecordsCommitted | RunChanged | JobEnded


class Subscription:
    """One follower's queue of its job's events, at most ``limit`` long. When full, what comes is
    dropped and :attr:`lost` set: the follower reads the journal for what it missed."""

    __slots__ = ("_lot", "limit", "lost", "pending")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: list[StreamEvent] = []
        self.lost = False
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, event: StreamEvent) -> bool:
        if len(self.pending) >= self.limit:
            self.lost = True
            return False
        self.pending.append(event)
        if self._lot:
            self._lot.unpark()
        return True

    async def wait(self) -> None:
        """Until something is queued (or was lost); at once if it already is."""
        if not self.pending and not self.lost:
            await self._lot.park()

    def wake(self) -> None:
        """Wake the follower if it waits, with nothing queued: something it cannot hear as an
        event changed (its job left the agent's running jobs)."""
        if self._lot:
            self._lot.unpark()

    def take(self) -> tuple[list[StreamEvent], bool]:
        """What is queued, and whether some was lost since the last take; the queue is emptied."""
        got, lost = self.pending, self.lost
        self.pending, self.lost = [], False
        return got, lost


class Pacer:
    """Ticks for the followers resting between chunks: :meth:`rest` returns at the next
    :meth:`tick`, unless the follower's ``serve`` sent for it there.

    The agent's journal writer ticks once per rhythm (30 ms while anyone follows:
    ``EngineOptions.followed_flush_interval``), at the first commit that ends it, its flusher's
    or a run's, after it has published what the commit carried. At a tick, each resting
    follower's ``serve`` (given to :meth:`rest`) may send what the commits since its last chunk
    brought, as the follower itself would have (:meth:`~vmbusops.api.follow.JobFollower.serve`):
    if it did, the follower rests on, never woken; any other follower (no ``serve``, or one that
    could not send it all) wakes. So a busy job's follower sends one chunk per tick without a
    task switch or a resumed generator, and a follower that has anything else to do (a state
    change, a gap, a slow client) does it itself.

    A timer bounds the rest should no tick come: the first rest while none keeps time starts a
    system task that waits ``period`` (four times that once ticks come, so that it does not race
    them) from that rest, or from the last tick since, and wakes every follower resting then if
    no tick came in that time. So a follower rests at most that long past the last tick (or past
    its own rest's start, for the first), and each tick costs no timer however many follow.
    """

    __slots__ = ("_keeping", "_last_tick", "_resting", "_ticked")

    def __init__(self) -> None:
        self._resting: dict[trio.lowlevel.Task, Callable[[], bool] | None] = {}
        self._keeping = False
        self._ticked = False
        self._last_tick = -math.inf

    @property
    def resting(self) -> int:
        """How many followers rest now."""
        return len(self._resting)

    def tick(self) -> None:
        self._ticked = True
        self._last_tick = trio.current_time()
        resting = self._resting
        if not resting:
            return
        woken = [task for task, serve in resting.items() if not _served(serve)]
        for task in woken:
            del resting[task]
            trio.lowlevel.reschedule(task)

    async def rest(self, period: float, serve: Callable[[], bool] | None = None) -> None:
        """Until the next tick that ``serve`` does not take (or the timer's end)."""
        task = trio.lowlevel.current_task()
        if not self._keeping:
            trio.lowlevel.spawn_system_task(self._keep_time, period, trio.current_time(), name="vmbusops-pacer")
            self._keeping = True
        self._resting[task] = serve

        def abort(_: Callable[[], BaseException]) -> trio.lowlevel.Abort:
            self._resting.pop(task, None)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _keep_time(self, period: float, since: float) -> None:
        try:
            while self._resting:
                await trio.sleep_until(since + (4 * period if self._ticked else period))
                if self._last_tick > since:
                    since = self._last_tick  # the followers resting now were served then, or came since
                    continue
                resting, self._resting = self._resting, {}
                for task in resting:
                    trio.lowlevel.reschedule(task)
        finally:
            self._keeping = False


def _served(serve: Callable[[], bool] | None) -> bool:
    """Whether ``serve`` sent what its follower had, so that it rests on. One that fails wakes its
    follower, which meets the same failure on its own path and in its own task."""
    if serve is None:
        return False
    try:
        return serve()
    except Exception:  # the writer's commit must not fail for a follower
        return False


class Broadcaster:
    #: Ended jobs whose last chunk (:meth:`final`) is kept.
    FINALS = 16

    def __init__(self, *, buffer: int = 4096) -> None:
        self.buffer = buffer
        self.pacer = Pacer()
        self._subs: dict[int, set[Subscription]] = {}
        self._finals: dict[Hashable, bytes] = {}
        self._finals_lock = threading.Lock()
        self.dropped = 0

    def final(self, key: Hashable, make: Callable[[], bytes]) -> bytes:
        """An ended job's last chunk for its followers (every run's state and the end), made by
        ``make`` for the first of them and kept under ``key`` (the job's end) for the others; the
        last :attr:`FINALS` are kept. Called from worker threads: two may both make it."""
        with self._finals_lock:
            text = self._finals.get(key)
        if text is None:
            text = make()
            with self._finals_lock:
                while len(self._finals) >= self.FINALS:
                    del self._finals[next(iter(self._finals))]
                self._finals[key] = text
        return text

    def publish(self, event: StreamEvent) -> None:
        subs = self._subs.get(event.job_id)
        if not subs:
            return
        for sub in subs:
            if not sub.put(event):
                self.dropped += 1

    def wake(self, job_id: int) -> None:
        """Wake the job's waiting followers (:meth:`Subscription.wake`)."""
        for sub in self._subs.get(job_id, ()):
            sub.wake()

    def publish_commit(self, records: Sequence[StoredRecord], events: Sequence[RunChanged]) -> None:
        """One commit: each followed job's records (one event), then the state events, in order."""
        subs = self._subs
        if not subs:
            return
        by_job: dict[int, list[StoredRecord]] = {}
        for row in records:
            if row[0] in subs:
                rows = by_job.get(row[0])
                if rows is None:
                    rows = by_job[row[0]] = []
                rows.append(row)
        for job_id, rows in by_job.items():
            self.publish(RecordsCommitted(job_id, rows))
        for event in events:
            self.publish(event)

    @contextmanager
    def subscribe(self, job_id: int) -> Iterator[Subscription]:
        sub = Subscription(self.buffer)
        self._subs.setdefault(job_id, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[job_id]

    @property
    def followers(self) -> int:
        return sum(len(s) for s in self._subs.values())
