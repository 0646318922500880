"""Committed records and state changes, fanned out to the followers of each job.

The engine's journal writer tells the agent of every commit (:meth:`Broadcaster.publish_commit`),
so a follower is sent only what is durable and numbered: a record's ``n`` is its place in the job
for good, and a follower's position is one number. Publishing is synchronous on the writer's path
and must never wait: each follower has a bounded buffer, and a follower too slow to keep up loses
live events instead of slowing the writer. It notices (the next record it gets is not the next
``n``) and reads what it missed from the journal, where it already is (see
:mod:`vmbusops.api.follow`). So the buffer bounds memory, not correctness.

Records go out as one event per job per commit, so a follower's cost is per batch where it can be.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
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


@dataclass(frozen=True, slots=True)
class RecordsCommitted:
    """Records of one job that one journal commit made durable, in ``n`` order."""

    job_id: int
    rows: list[StoredRecord]


StreamEvent = RecordsCommitted | RunChanged | JobEnded


class Broadcaster:
    def __init__(self, *, buffer: int = 4096) -> None:
        self.buffer = buffer
        self._subs: dict[int, set[trio.MemorySendChannel[StreamEvent]]] = {}
        self.dropped = 0

    def publish(self, event: StreamEvent) -> None:
        subs = self._subs.get(event.job_id)
        if not subs:
            return
        for send in subs:
            try:
                send.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1

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
    def subscribe(self, job_id: int) -> Iterator[trio.MemoryReceiveChannel[StreamEvent]]:
        send, receive = trio.open_memory_channel[StreamEvent](self.buffer)
        self._subs.setdefault(job_id, set()).add(send)
        try:
            yield receive
        finally:
            subs = self._subs.get(job_id)
            if subs is not None:
                subs.discard(send)
                if not subs:
                    del self._subs[job_id]
            send.close()
            receive.close()

    @property
    def followers(self) -> int:
        return sum(len(s) for s in self._subs.values())
