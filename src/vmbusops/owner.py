"""Who owns a job: a process, named by its pid and its start time.

A pid alone is not an identity (pids are reused); the kernel's start time of the process makes it
one. A reader decides whether an owner is alive by asking the kernel, never by trusting a flag the
owner would have had to clear before dying: a process killed with SIGKILL clears nothing. A zombie
(dead, not yet reaped by its parent) counts as dead.

Where ``/proc`` is missing, liveness falls back to ``kill(pid, 0)`` and to the owner's heartbeat,
which it refreshes every second or so; a heartbeat older than the lease's time to live means dead
either way.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

#: A heartbeat older than this means the owner is gone, whatever the kernel says.
LEASE_TTL_SECONDS = 60.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces; fields start after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    fields = _stat_fields(pid)
    # Field 22 of /proc/PID/stat is the start time; fields[0] here is field 3 (the state).
    return None if fields is None or len(fields) < 20 else fields[19]


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    started: str

    def __str__(self) -> str:
        return f"pid {self.pid}"


@cache
def _this_process(pid: int) -> Owner:
    return Owner(pid=pid, started=process_start_time(pid) or f"t{time.time():.6f}")


def current_owner() -> Owner:
    return _this_process(os.getpid())


def owner_alive(
    pid: int | None, started: str | None, heartbeat_at: float | None, *, now: float | None = None
) -> bool:
    """Whether the process that wrote this lease is still running (and still the same process)."""
    if pid is None or started is None:
        return False
    me = current_owner()
    if pid == me.pid:
        return started == me.started
    if (
        heartbeat_at is not None
        and (now if now is not None else time.time()) - heartbeat_at > LEASE_TTL_SECONDS
    ):
        return False
    fields = _stat_fields(pid)
    if fields is not None:
        return fields[0] not in ("Z", "X") and len(fields) >= 20 and fields[19] == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
