"""Paths inside a bundle: the one rule that manifest file entries, step references and tar member
names all obey, so a path the manifest accepts is a path the archive may hold, and the reverse."""

from __future__ import annotations

import re

from vmbusops.bundle.errors import ManifestError
from vmbusops.guest_paths import reserved_name

ENVELOPE_MEMBER = "envelope.json"
MAX_PATH_BYTES = 255
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+ -]{0,127}")


def check_bundle_path(path: str, *, what: str = "file path") -> str:
    """A relative POSIX path with plain components: no ``..``, no absolute, drive or UNC paths,
    no backslashes, no control characters, no Windows reserved device name (``NUL``, ``com1.txt``).
    The same check guards manifest entries and tar members."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ManifestError(f"{what} {path!r} is empty or longer than {MAX_PATH_BYTES} bytes")
    for part in path.split("/"):
        if part in ("", ".", "..") or not _PATH_COMPONENT.fullmatch(part) or part.endswith((" ", ".")):
            raise ManifestError(
                f"{what} {path!r} is not a plain relative path (component {part!r})",
                hint="use relative paths of letters, digits, '._+- ' separated by '/'",
            )
        if reserved_name(part):
            # Every file of a bundle may reach a Windows guest under its own name (a DSC
            # module's files do), where this name opens a device instead.
            raise ManifestError(
                f"{what} {path!r} has a Windows reserved device name as a component ({part!r})",
                hint="rename it: CON, PRN, AUX, NUL, COM1-9 and LPT1-9 (with any extension) name devices on Windows",
            )
    if path == ENVELOPE_MEMBER:
        raise ManifestError(f"{what} {path!r} is reserved for the signature envelope")
    return path
