"""Guest paths: the one rule every path written into a Windows guest obeys.

The manifest checks a copy step's destination with it (so ``bundle verify``, ``bundle build``
and acceptance by ``run`` or the agent refuse the same bundles), and the host checks every
Copy-VMFile destination with it again just before the cmdlet runs (``guest copy``, DSC files).
One function, so what a bundle may name and what a run will do cannot drift apart.

A guest path is an absolute drive path, ``C:\\Folder\\file.txt``, and nothing that Windows would
read as something else: no UNC share (``\\\\server\\share``) or device namespace (``\\\\.\\``,
``\\\\?\\``), no drive-relative path (``C:file``), no alternate data stream (a ``:`` after the
drive), no reserved device name as a component (``NUL``, ``COM1.txt``: Windows opens the device,
whatever the folder), no ``.`` or ``..`` component, no component ending in a dot or space
(Windows strips them, so two different names would reach one file), and no control characters.
"""

from __future__ import annotations

import re

EXAMPLE = "C:\\Temp\\file.txt"
_DRIVE = re.compile(r"[A-Za-z]:\\")
_RESERVED = frozenset(
    {"con", "prn", "aux", "nul", "conin$", "conout$"}
    | {f"{port}{n}" for port in ("com", "lpt") for n in (*"123456789", "\u00b9", "\u00b2", "\u00b3")}
)
"""Windows' reserved device names, COM and LPT with the superscript digits 1-3 included (Windows
reserves those too)."""
_NOT_IN_NAMES = frozenset('<>"|?*/')
MAX_CHARS = 32_767


def reserved_name(part: str) -> bool:
    """Whether ``part``, one component of a path, is a Windows reserved device name (``NUL``,
    ``com1.txt``, ``CON .log``): Windows opens the device, whatever the folder or extension."""
    return part.split(".", 1)[0].rstrip(" ").casefold() in _RESERVED


def guest_path_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a guest path (a phrase to follow the path in a message),
    or None if it may be used. Sans-IO: the guest's disk is never consulted."""
    if not path:
        return "is empty"
    if len(path) > MAX_CHARS:
        return f"is longer than {MAX_CHARS} characters"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "contains a control character (such as a newline)"
    if path.startswith(("\\\\.\\", "\\\\?\\", "\\??\\", "//./", "//?/")):
        return "is a device path (\\\\.\\ or \\\\?\\)"
    if path.startswith(("\\\\", "//")):
        return "is a UNC path (\\\\server\\share)"
    if not _DRIVE.match(path):
        return "is not an absolute Windows path (a drive letter, a colon and a backslash)"
    if ":" in path[2:]:
        return "names an alternate data stream (a ':' after the drive)"
    bad = sorted(_NOT_IN_NAMES & set(path))
    if bad:
        return f"contains {''.join(bad)!r}, which Windows does not allow in names; separate folders with '\\'"
    parts = path[3:].split("\\")
    if parts and parts[-1] == "":
        parts.pop()  # one trailing backslash: the destination is a folder
    for part in parts:
        if part in ("", ".", ".."):
            return f"has an empty, '.' or '..' component ({part!r})"
        if part.endswith((".", " ")):
            return f"has a component ending in a dot or space ({part!r}); Windows strips it"
        if reserved_name(part):
            return f"has a reserved device name as a component ({part!r})"
    return None
