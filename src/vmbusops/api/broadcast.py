"""The engine's events, fanned out to the followers of each job.

The engine calls :meth:`Broadcaster.publish` synchronously on the path of every record, so it
must never wait: each follower has a bounded buffer, and a follower too slow to keep up loses
live events instead of slowing the guests. It notices (the next record it gets is not the next
in its run) and reads what it missed from the journal, which has every record (see
:mod:`vmbusops.api.follow`). So the buffer bounds memory, not correctness.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from vmbusops.engine import EngineEvent, State


@dataclass(frozen=True, slots=True)
class JobEnded:
    """Published once the job's final state is committed to the journal."""

    job_id: int
    state: State


StreamEvent = EngineEvent | JobEnded


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
