"""Wall-clock time for the scheduler, injected so that tests can drive it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import trio

#: A wall clock can jump; never sleep longer than this before looking again.
MAX_SLEEP = 60.0


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep_until(self, when: datetime) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        # A wall clock can jump, so sleep in bounded steps and look again: no event to wait on.
        while (left := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110
            await trio.sleep(min(left, MAX_SLEEP))


class ManualClock:
    """Time stands still until :meth:`advance` moves it; sleepers wake when their time comes."""

    def __init__(self, start: datetime) -> None:
        self._now = start
        self._changed = trio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        while self._now < when:
            await self._changed.wait()

    def set(self, when: datetime) -> None:
        self._now = when
        self._changed.set()
        self._changed = trio.Event()

    def advance(self, seconds: float) -> None:
        from datetime import timedelta

        self.set(self._now + timedelta(seconds=seconds))
