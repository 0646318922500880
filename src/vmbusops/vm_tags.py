"""Tags kept in a VM's Notes: the one rule that reads them, for a bundle's ``targets.tags``.

Hyper-V gives a VM one free-text field, Notes (``Set-VM -Notes``), which providers already use for
their own prose. Tags live there as a line of their own::

    Customer: Contoso, ticket 4411.
    tags: web, prod
    Do not restart during business hours.

The rule, chosen so that prose is never misread as tags:

- a *tags line* is a line (lines end at ``\\n``; a ``\\r`` before it is dropped) that starts, after
  spaces or tabs, with ``tags:`` in any case, followed by tag names separated by commas;
- a tag name is ASCII: a letter or digit, then up to 63 letters, digits, ``.``, ``_`` or ``-``
  (no spaces, so prose is not a tag; no Unicode, so two tags that look alike are the same bytes);
  spaces around each name are ignored, and names compare case-insensitively (kept lower-case);
- a line is a tags line only if *every* name in it is a valid tag name and there is at least one:
  ``Tags: ask Bob before patching`` is prose and adds nothing, never half a tag;
- several tags lines add up; only the first :data:`MAX_NOTES_CHARS` characters of Notes are read,
  and at most :data:`MAX_TAGS` tags are kept per VM, so hostile Notes cost bounded time.

Nothing here raises on what Notes hold: Notes are written by whoever manages the VM, so every
input yields a (possibly empty) set of tags.
"""

from __future__ import annotations

import re
from typing import Final

#: What a tag name is (see the module docstring); a bundle's ``targets.tags`` are checked by it too.
TAG_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_NOTES_CHARS: Final = 65536
MAX_TAGS: Final = 256

_TAGS_LINE: Final = re.compile(r"[ \t]*tags:(.*)", re.IGNORECASE | re.ASCII | re.DOTALL)


def is_tag_name(text: str) -> bool:
    return TAG_NAME.fullmatch(text) is not None


def tags_in_notes(notes: str | None) -> frozenset[str]:
    """The tags (lower-case) that ``notes`` carries; empty when it has no tags line."""
    if not notes:
        return frozenset()
    found: list[str] = []
    for raw in notes[:MAX_NOTES_CHARS].split("\n"):
        line = raw.removesuffix("\r")
        m = _TAGS_LINE.fullmatch(line)
        if m is None:
            continue
        names = [part.strip(" \t") for part in m[1].split(",")]
        if names and all(is_tag_name(n) for n in names):
            found.extend(n.lower() for n in names)
    return frozenset(found[:MAX_TAGS])


__all__ = ["MAX_NOTES_CHARS", "MAX_TAGS", "TAG_NAME", "is_tag_name", "tags_in_notes"]
