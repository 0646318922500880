"""Guest text is hostile: what the live view writes to a terminal carries no control characters."""

from __future__ import annotations

import io

from vmbusops.cli.output import RecordPrinter, terminal_safe
from vmbusops.records import ErrorRecord, GuestRecord, OutputRecord

HOSTILE = "a\x1b[31mRED\x1b]0;TITLE\x07b\rover\x9bc\tend"


def test_control_characters_become_visible_escapes() -> None:
    assert terminal_safe(HOSTILE) == "a\\x1b[31mRED\\x1b]0;TITLE\\x07b\\x0dover\\x9bc\tend"
    assert terminal_safe("two\nlines") == "two\nlines"


def test_the_live_view_writes_guest_text_without_control_characters() -> None:
    out = io.StringIO()
    printer = RecordPrinter(out=out)
    printer.emit(GuestRecord(vm="web01", seq=1, time=0.0, record=OutputRecord(value=HOSTILE)))
    printer.emit(GuestRecord(vm="web01", seq=2, time=0.0, record=ErrorRecord(message="x\x1b[2Jy")))
    text = out.getvalue()
    assert not any(ch in text for ch in "\x1b\x07\r\x9b"), repr(text)
    assert "x\\x1b[2Jy" in text
