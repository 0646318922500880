"""Where a reader of a job's records is: the ``n`` of the last record it has (sans-IO).

The journal numbers a job's records 1, 2, 3... in the order they were committed (see
:mod:`vmbusops.engine.journal_schema`), so "everything up to N" is an exact position in the job,
however many runs it has. The text form is that number (``""`` or ``"0"`` is the start). It is
the SSE event id of every record and the ``cursor`` of every page, so a client that reconnects with
``Last-Event-ID`` (or asks for ``?after=``) continues exactly after what it had.
"""

from __future__ import annotations

MAX_CURSOR_DIGITS = 18


class CursorError(ValueError):
    pass


def parse_cursor(text: str) -> int:
    """The record number a cursor's text names; :class:`CursorError` says why it names none."""
    text = text.strip()
    if not text:
        return 0
    if not text.isascii() or not text.isdigit() or len(text) > MAX_CURSOR_DIGITS:
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise CursorError(
            f"cursor {shown!r} is not a record number: use the id of a record event or a page's cursor"
        )
    return int(text)
