"""Journaled records as ``vmbusops logs`` prints them, from the local journal or an agent's API.

Both ``cli/engine_cmds.py`` (the journal) and ``cli/remote.py`` (an agent) print through here, so a
record reads the same whichever way it arrived.
"""

from __future__ import annotations

import json
from typing import Any

import click

from vmbusops.cli.output import terminal_safe
from vmbusops.engine.journal import RecordView
from vmbusops.records import Stream, progress_text, value_display, value_from_json
from vmbusops.times import iso_time

_LABEL = {
    "error": "ERROR: ",
    "warning": "WARNING: ",
    "verbose": "VERBOSE: ",
    "debug": "DEBUG: ",
    "progress": "PROGRESS: ",
    "state": "STATE: ",
}


def _value_text(value: Any) -> str:
    """A journaled value as the live view shows it (one renderer for both)."""
    return value_display(value_from_json(value))


def record_text(rec: RecordView) -> str:
    """A journaled record's text, without the VM or stream label."""
    c = rec.content
    if rec.stream == Stream.OUTPUT:
        return _value_text(c.get("value"))
    if rec.stream == Stream.INFORMATION:
        return _value_text(c.get("message_data"))
    if rec.stream == Stream.PROGRESS:
        percent = c.get("percent_complete")
        return progress_text(
            str(c.get("activity", "")), str(c.get("status_description") or ""),
            percent if isinstance(percent, int) else -1, completed=bool(c.get("completed")),
        )  # fmt: skip
    if rec.stream == Stream.STATE:
        return str(c.get("state", ""))
    return str(c.get("message", ""))


def record_json(rec: RecordView) -> dict[str, Any]:
    """A journaled record as ``logs --json`` prints it and the agent's API gives it (see
    :class:`vmbusops.api.follow.RecordText`): ``vm``, ``event``, ``stream``, ``seq``, ``time`` (ISO
    8601 UTC), ``step``, then the record's own fields."""
    content = dict(rec.content)
    head = {
        "vm": rec.vm, "event": "record", "stream": content.pop("stream", rec.stream), "seq": rec.seq,
        "time": iso_time(rec.time), "step": rec.step,
    }  # fmt: skip
    return {**head, **content}


def print_records(records: list[RecordView], as_json: bool, width: int) -> None:
    """``vmbusops logs`` lines (or JSON objects), the VM name padded to ``width``."""
    for rec in records:
        if as_json:
            click.echo(json.dumps(record_json(rec), separators=(",", ":"), ensure_ascii=False))
        else:
            lines = terminal_safe(record_text(rec)).splitlines() or [""]
            label = _LABEL.get(rec.stream, "")
            click.echo("\n".join(f"{rec.vm:<{width}} | {label}{line}" for line in lines))
