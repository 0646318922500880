"""``--since WHEN`` (and the API's ``?since=``): a point in time as an operator types it
(sans-IO: ``now`` is given).

WHEN is an ISO 8601 date or date-time (``2026-11-30``, ``2026-11-30T08:00``, with an offset or
``Z``; without one it is local time), or an age: a whole number and a unit, ``90s``, ``30m``,
``2h``, ``3d``, ``1w``, meaning that long before now.
"""

from __future__ import annotations

import re
from datetime import datetime

from vmbusops.errors import ConfigError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(\d{1,9})\s*([smhdw])")


def parse_since(text: str, now: float, *, name: str = "--since") -> float:
    """The epoch time ``text`` names; :class:`ConfigError` (a usage error) says why it names none."""
    value = text.strip()
    age = _AGE.fullmatch(value.lower())
    if age is not None:
        return now - int(age.group(1)) * _UNITS[age.group(2)]
    try:
        return datetime.fromisoformat(value).timestamp()
    except (ValueError, OverflowError, OSError):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ConfigError(
            f"{name} {shown!r} is not a time: give an ISO date or date-time (2026-11-30,"
            " 2026-11-30T08:00Z) or an age (30m, 2h, 3d, 1w)"
        ) from None


__all__ = ["parse_since"]
