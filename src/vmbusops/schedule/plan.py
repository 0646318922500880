"""When a schedule's runs start, and which ticks were missed (sans-IO; time is an argument).

A *tick* is a cron match (five fields, in the schedule's time zone; croniter). Its *window*
opens at the tick and lasts ``window_seconds``; a run may start from ``tick + jitter`` until the
*cut-off*, ``window_seconds - cutoff_seconds`` after the tick, and never after. Jitter is spread
over ``[0, jitter_seconds]`` but fixed per (schedule, tick) by a hash, so a restart does not
move a run, and it is capped so that the start stays inside the window.

A tick is *missed* when its cut-off passed while no one handled it (the agent was down). The
policy ``skip`` reports them; ``run-once`` reports them and starts one run at once, in a window
of the schedule's length from now, however many were missed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from vmbusops.bundle.manifest import MissedRunPolicy, Schedule
from vmbusops.errors import ConfigError

#: Look back no further than this many ticks when counting missed ones (a minutely schedule
#: down for a month is "many", not 43,200 rows of detail).
MAX_MISSED = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    tick: datetime
    start_at: datetime
    cutoff_at: datetime
    end_at: datetime

    def open_at(self, now: datetime) -> bool:
        return self.start_at <= now < self.cutoff_at


def _zone(schedule: Schedule) -> ZoneInfo:
    try:
        return ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"unknown time zone {schedule.timezone!r} in a schedule") from exc


def ticks_after(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Cron ticks strictly after ``after``, in UTC."""
    local = after.astimezone(_zone(schedule))
    it = croniter(schedule.cron, local)
    while True:
        yield it.get_next(datetime).astimezone(UTC)


def jitter_of(key: str, tick: datetime, schedule: Schedule) -> float:
    if schedule.jitter_seconds <= 0:
        return 0.0
    digest = hashlib.sha256(f"{key}|{tick.isoformat()}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    room = max(0.0, schedule.window_seconds - schedule.cutoff_seconds)
    return min(schedule.jitter_seconds, room) * fraction


def window_of(key: str, tick: datetime, schedule: Schedule) -> Window:
    return Window(
        tick=tick,
        start_at=tick + timedelta(seconds=jitter_of(key, tick, schedule)),
        cutoff_at=tick + timedelta(seconds=schedule.window_seconds - schedule.cutoff_seconds),
        end_at=tick + timedelta(seconds=schedule.window_seconds),
    )


def next_window(key: str, schedule: Schedule, after: datetime) -> Window:
    return window_of(key, next(ticks_after(schedule, after)), schedule)


@dataclass(frozen=True, slots=True, kw_only=True)
class Catchup:
    """What to do about the time the agent was not there."""

    missed: tuple[datetime, ...]
    #: The window of a make-up run (policy run-once), or None.
    makeup: Window | None
    #: Handle ticks after this one from now on.
    resume_after: datetime


def catch_up(key: str, schedule: Schedule, last_handled: datetime, now: datetime) -> Catchup:
    """Ticks after ``last_handled`` whose cut-off is already past ``now`` were missed; a tick
    whose window is still open is not (it runs, late, like any other)."""
    missed: list[datetime] = []
    resume_after = last_handled
    for tick in ticks_after(schedule, last_handled):
        window = window_of(key, tick, schedule)
        if window.cutoff_at > now or len(missed) >= MAX_MISSED:
            break
        missed.append(tick)
        resume_after = tick
    makeup = None
    if missed and schedule.missed is MissedRunPolicy.RUN_ONCE:
        makeup = Window(
            tick=missed[-1],
            start_at=now,
            cutoff_at=now + timedelta(seconds=schedule.window_seconds - schedule.cutoff_seconds),
            end_at=now + timedelta(seconds=schedule.window_seconds),
        )
    return Catchup(missed=tuple(missed), makeup=makeup, resume_after=resume_after)
