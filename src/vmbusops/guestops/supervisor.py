"""Keeping the agent's host connection open: reopen it when it dies, say meanwhile that it is down.

Theory of operation
-------------------
A :class:`HostSupervisor` owns one host connection at a time, made by the ``connect`` it was
given (a :func:`~vmbusops.guestops.connect.open_host` for a name: a host process, an SSH
subsystem or a WinRM shell). Its task (:meth:`HostSupervisor.run`) holds the connection open
until its session breaks - the host process died, the SSH channel or WinRM shell went away: the
runspace pool's reader sees that at once, whether or not a command was running - then closes
it and opens a new one after a backoff (:class:`Backoff`: exponential, capped, jittered so that
many agents whose host came back at once do not return in step). It logs one line when the host
goes down and one when it is back, never one per attempt; each failed attempt's error becomes the
``reason`` of :attr:`HostSupervisor.status`.

New work asks :meth:`HostSupervisor.current` for the host (or waits a bounded time for one with
:meth:`HostSupervisor.wait_current`); while none is up that raises
:class:`~vmbusops.errors.HostDownError` (transient) naming the host, since when it is down and
when the next attempt is due. Work already started keeps the host object it started on and, when
that connection dies, sees that connection's own error: it is never moved to the new connection
half-way.

The first connection is opened before :meth:`HostSupervisor.run` reports started, and its failure
is the caller's: a host that cannot be reached at start-up is a configuration question, answered
at once with the real error.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from vmbusops.errors import HostDownError, VmbusOpsError
from vmbusops.guestops.host import HyperVHost

log = logging.getLogger("vmbusops.host")


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """How long to wait before the n-th attempt to reopen (n from 0): ``first * factor**n``,
    at most ``cap``, times a random factor in [1 - jitter, 1]."""

    first: float = 0.5
    cap: float = 30.0
    factor: float = 2.0
    jitter: float = 0.5

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.cap, self.first * self.factor ** min(attempt, 64))
        return base * (1.0 - self.jitter * rng.random())


@dataclass(frozen=True, slots=True)
class HostStatus:
    """The host connection as ``/v1/health`` and ``/metrics`` show it."""

    name: str
    up: bool
    #: When it last went up or down (seconds since the epoch).
    since: float
    #: Why it is down: the error that broke it, then each failed attempt's.
    reason: str | None
    #: How often it was reopened after going down.
    reconnects: int


Connect = Callable[[], AbstractAsyncContextManager[HyperVHost]]


class HostSupervisor:
    """The agent's host connection, reopened when it dies. Run :meth:`run` in a nursery."""

    def __init__(
        self,
        name: str,
        connect: Connect,
        *,
        backoff: Backoff | None = None,
        wrap: Callable[[HyperVHost], HyperVHost] | None = None,
        on_change: Callable[[HostStatus], None] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self._connect = connect
        self._backoff = backoff or Backoff()
        self._wrap = wrap
        self._on_change = on_change
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._clock = clock
        self._host: HyperVHost | None = None
        self._opened = False
        self._status = HostStatus(name=name, up=False, since=clock(), reason="not opened yet", reconnects=0)
        self._retry_at = 0.0
        self._changed = trio.Event()

    @property
    def status(self) -> HostStatus:
        return self._status

    @property
    def retry_after(self) -> float:
        """Seconds until the next attempt to reopen the host (0 while it is up)."""
        return 0.0 if self._host is not None else max(0.0, self._retry_at - trio.current_time())

    def current(self) -> HyperVHost:
        """The host to start new work on; :class:`HostDownError` while there is none."""
        if self._host is not None:
            return self._host
        status = self._status
        retry_after = self.retry_after
        raise HostDownError(
            f"the Hyper-V host {self.name} is down since {_utc(status.since)}; the agent is reopening it",
            host=self.name,
            since=status.since,
            retry_after=retry_after,
            hint=f"nothing was started; submit again in {max(1, math.ceil(retry_after))}s or later",
        )

    async def wait_current(self, timeout: float) -> HyperVHost:
        """:meth:`current`, waiting up to ``timeout`` seconds for the host to come back."""
        with trio.move_on_after(timeout):
            while self._host is None:
                await self._changed.wait()
        return self.current()

    async def wait_up(self, up: bool = True) -> None:
        """Wait until the host is up (or, with ``up=False``, down)."""
        while self._status.up is not up:
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the host, hold it, reopen it whenever it breaks; forever (cancel to stop).

        Reports started once the first connection is up; until then a failure is raised."""
        started = False
        attempt = 0
        while True:
            try:
                async with self._connect() as host:
                    self._went_up(self._wrap(host) if self._wrap is not None else host)
                    if not started:
                        task_status.started()
                        started = True
                    attempt = 0
                    broken = await host.pool.wait_broken()
                    self._went_down(broken)
            except VmbusOpsError as exc:
                if not started:
                    raise
                self._went_down(exc)
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            self._retry_at = trio.current_time() + delay
            await trio.sleep(delay)

    # ------------------------------------------------------------------ state changes
    def _went_up(self, host: HyperVHost) -> None:
        first = not self._opened
        self._opened = True
        reconnects = self._status.reconnects + (0 if first else 1)
        self._host = host
        self._set(HostStatus(name=self.name, up=True, since=self._clock(), reason=None, reconnects=reconnects))
        if not first:
            log.info(
                "host reopened",
                extra={"event": "host-up", "host": self.name, "reconnects": reconnects},
            )

    def _went_down(self, error: VmbusOpsError) -> None:
        self._host = None
        was_up = self._status.up
        since = self._clock() if was_up else self._status.since
        self._set(
            HostStatus(name=self.name, up=False, since=since, reason=error.message, reconnects=self._status.reconnects)
        )
        if was_up:
            log.warning(
                "host down; reopening it", extra={"event": "host-down", "host": self.name, "reason": error.message}
            )

    def _set(self, status: HostStatus) -> None:
        self._status = status
        self._changed.set()
        self._changed = trio.Event()
        if self._on_change is not None:
            self._on_change(status)


@asynccontextmanager
async def supervise_host(supervisor: HostSupervisor) -> AsyncIterator[HostSupervisor]:
    """Open the supervisor's host (its first failure is raised as itself), keep it open while
    the block runs, close it on exit."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            try:
                yield supervisor
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The supervisor's task raises only before it started; either way a group here holds one
        # exception: hand it back as itself, so callers can catch our error types.
        leaves = _leaves(group)
        if len(leaves) != 1:
            raise
        raise leaves[0] from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out


def _utc(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


__all__ = ["Backoff", "HostStatus", "HostSupervisor", "supervise_host"]
