"""Times as the product gives them to programs: ISO 8601, in UTC, with its offset.

The journal and the stores keep seconds since the epoch (REAL columns: ordering, ranges and
durations stay arithmetic). Everything that writes JSON for a reader (the command line's
``--json`` lines, the API's bodies and its Server-Sent Events) converts at output with
:func:`iso_time`, so one moment reads the same whichever way it is fetched.

The text has a fixed shape, ``2026-11-30T20:15:29.123456+00:00`` (what
``datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")`` writes), so it sorts as
it reads. A flood of records is converted one by one, so the text of recent whole seconds is kept.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from functools import lru_cache


@lru_cache(maxsize=256)
def _second(whole: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as ISO 8601 UTC text, to the microsecond."""
    fraction, integral = math.modf(seconds)  # as datetime.fromtimestamp rounds
    whole, micro = int(integral), round(fraction * 1_000_000)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1, micro + 1_000_000
    return f"{_second(whole)}.{micro:06d}+00:00"


def iso_time_or_none(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def seconds_of(text: str) -> float:
    """The seconds since the epoch of an ISO 8601 time with an offset (what :func:`iso_time` wrote)."""
    return datetime.fromisoformat(text).timestamp()


__all__ = ["iso_time", "iso_time_or_none", "seconds_of"]
