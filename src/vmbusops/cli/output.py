"""Printing records live: one line per record, prefixed by its VM, coloured by stream on a terminal,
or one JSON object per line (NDJSON) for programs.

Records from many guests interleave as they arrive; a line is written whole with one call, so
lines never tear. Colour is only used when the stream is a terminal (and NO_COLOR is unset).

Progress records (Write-Progress) come by the hundred. On a terminal the latest one is a status
line under the records, rewritten in place and erased before the next record's line; anywhere
else an activity gets a line when it starts, each time it passes another tenth
(:data:`PROGRESS_STEP` percent) and when it completes. NDJSON keeps every record: it is data.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from vmbusops.errors import FailureCode
from vmbusops.records import (
    GuestRecord,
    PipelineStateRecord,
    ProgressRecord,
    Stream,
    display_text,
    guest_record_to_json,
)
from vmbusops.times import iso_time

if TYPE_CHECKING:
    from rich.console import Console

    from vmbusops.guestops.host import InvokeOutcome

_STYLE = {
    Stream.OUTPUT: "",
    Stream.ERROR: "\x1b[31m",
    Stream.WARNING: "\x1b[33m",
    Stream.VERBOSE: "\x1b[36m",
    Stream.DEBUG: "\x1b[35m",
    Stream.INFORMATION: "\x1b[32m",
    Stream.PROGRESS: "\x1b[34m",
    Stream.STATE: "\x1b[1m",
}
_LABEL = {
    Stream.OUTPUT: "",
    Stream.ERROR: "ERROR: ",
    Stream.WARNING: "WARNING: ",
    Stream.VERBOSE: "VERBOSE: ",
    Stream.DEBUG: "DEBUG: ",
    Stream.INFORMATION: "",
    Stream.PROGRESS: "PROGRESS: ",
    Stream.STATE: "STATE: ",
}
_RESET = "\x1b[0m"


# Guest text is hostile: a control character (ESC starting a colour, a title or a screen clear;
# BEL; a bare CR that rewrites the line) would reach the operator's terminal as a command. Each
# is shown as a visible escape instead; tab stays, and line breaks split records into lines. So
# are the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder how
# the rest of a line reads without being seen themselves.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in (0x09, 0x0A)}
_CONTROL.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})


def terminal_safe(text: str) -> str:
    """``text`` with every control character but tab and newline shown as ``\\xNN``, and each
    bidirectional override or isolate as ``\\uNNNN``."""
    return text.translate(_CONTROL)


def use_colour(stream: TextIO) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


#: The width a console writes to a file or a pipe: wide enough that no table is cut and no line wraps.
UNBOUNDED_WIDTH = 1 << 15


def console(out: TextIO | None = None, **options: Any) -> Console:
    """A Rich console for ``out`` (stdout by default).

    On a terminal it fits the terminal. Anywhere else (a file, a pipe, a program reading) nothing is
    wrapped or cut: a hint's command, a path or a table row stays on its line whole, whatever
    ``COLUMNS`` says, and no colour is written.
    """
    from rich.console import Console

    out = out or sys.stdout
    if out.isatty():
        return Console(file=out, **options)
    return Console(file=out, **{**options, "width": UNBOUNDED_WIDTH, "soft_wrap": True, "no_color": True})


#: Off a terminal, an activity's progress gets a line each time it passes another this many percent.
PROGRESS_STEP = 10
_ERASE = "\r\x1b[K"


class ProgressLines:
    """Which progress records get a line of their own off a terminal: an activity's first, one per
    :data:`PROGRESS_STEP` percent it passes, and its completion (per VM and activity)."""

    def __init__(self) -> None:
        self._shown: dict[tuple[str, int, str], int] = {}

    def shows(self, vm: str, record: ProgressRecord) -> bool:
        key = (vm, record.activity_id, record.activity)
        if record.completed:
            self._shown.pop(key, None)
            return True
        step = record.percent_complete // PROGRESS_STEP if record.percent_complete >= 0 else -1
        last = self._shown.get(key)
        if last is not None and step <= last:
            return False
        self._shown[key] = step
        return True


class RecordPrinter:
    """Writes guest records as text lines or NDJSON."""

    def __init__(
        self,
        *,
        json_lines: bool = False,
        out: TextIO | None = None,
        vm_width: int = 8,
        show_state: bool = False,
    ) -> None:
        self._out = out or sys.stdout
        self._json = json_lines
        self._colour = not json_lines and use_colour(self._out)
        self._width = vm_width
        self._show_state = show_state
        #: A status line on a terminal for progress; a line per activity's tenth elsewhere.
        self._status_line = not json_lines and self._out.isatty()
        self._status = ""
        self._progress = ProgressLines()

    def emit(self, rec: GuestRecord) -> None:
        if self._json:
            self._out.write(json.dumps(guest_record_to_json(rec), ensure_ascii=False, separators=(",", ":")) + "\n")
            return
        record = rec.record
        if isinstance(record, PipelineStateRecord) and not self._show_state:
            return
        if isinstance(record, ProgressRecord):
            if self._status_line:
                self._show_status(rec)
                return
            if not self._progress.shows(rec.vm, record):
                return
        stream = record.stream
        text = terminal_safe(display_text(record))
        label = _LABEL[stream]
        lines = text.splitlines() or [""]
        prefix = f"{rec.vm:<{self._width}} | "
        if self._colour:
            style = _STYLE[stream]
            body = "\n".join(f"{prefix}{style}{label}{line}{_RESET}" if style else f"{prefix}{label}{line}" for line in lines)
        else:
            body = "\n".join(f"{prefix}{label}{line}" for line in lines)
        self._out.write((_ERASE if self._status else "") + body + "\n" + self._status)

    def _show_status(self, rec: GuestRecord) -> None:
        """The latest progress, on the terminal's last line (cut to its width, so that erasing
        it takes one carriage return); a completed activity leaves no status."""
        assert isinstance(rec.record, ProgressRecord)
        if rec.record.completed:
            status = ""
        else:
            text = terminal_safe(display_text(rec.record)).replace("\n", " ")
            status = f"{rec.vm:<{self._width}} | {_LABEL[Stream.PROGRESS]}{text}"
            status = status[: max(10, shutil.get_terminal_size().columns - 1)]
            if self._colour:
                status = f"{_STYLE[Stream.PROGRESS]}{status}{_RESET}"
        self._out.write((_ERASE if self._status else "") + status)
        self._status = status

    def emit_result(self, vm: str, outcome: InvokeOutcome | None, *, ok: bool, ignore_exit_code: bool = False) -> None:
        """A guest's verdict as one NDJSON line (``event: result``): what exec's exit code says of
        it (``ok``), its exit code, and when it failed, the failure ``code`` and why."""
        line = {
            "vm": vm,
            "event": "result",
            "stream": "result",
            "time": iso_time(time.time()),
            "ok": ok,
            "exit_code": outcome.exit_code if outcome else None,
            "errors": outcome.script_errors if outcome else 0,
            "code": None if ok else (outcome.failure_code(ignore_exit_code=ignore_exit_code) if outcome else FailureCode.INTERNAL),
            "failure": None if ok else (outcome.why_failed(ignore_exit_code=ignore_exit_code) if outcome else "did not run"),
        }
        self._out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    def emit_interrupted(self, vm: str, *, started: bool) -> None:
        """The verdict of a guest Ctrl-C stopped (or kept from starting): a ``result`` line, as
        every guest gets, with ``interrupted``."""
        why = "the guest command was stopped" if started else "it had not started"
        line = {
            "vm": vm, "event": "result", "stream": "result", "time": iso_time(time.time()),
            "ok": False, "exit_code": None, "errors": 0, "code": FailureCode.CANCELLED,
            "failure": f"interrupted (Ctrl-C): {why}", "interrupted": True,
        }  # fmt: skip
        self._out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    def emit_summary(self, *, succeeded: list[str], failed: list[str], interrupted: list[str]) -> None:
        """After Ctrl-C, exec's last line: which guests succeeded, failed, and were interrupted."""
        line = {
            "event": "summary", "stream": "summary", "time": iso_time(time.time()),
            "succeeded": succeeded, "failed": failed, "interrupted": interrupted,
        }  # fmt: skip
        self._out.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n")

    def flush(self) -> None:
        """Write out what is pending; a progress status line goes (what it said has passed)."""
        if self._status:
            self._out.write(_ERASE)
            self._status = ""
        self._out.flush()
