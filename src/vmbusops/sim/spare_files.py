"""Short-lived guest files made from spare inodes: the invoker's step files.

Theory of operation
-------------------
The guest invoker writes each step's script to ``$env:TEMP\\vmbusops\\<run>-<step>.ps1``, runs it
and removes it, as the real one does. In a lab of hundreds of guests those are hundreds of
different folders, and on ext4 creating a file in one of many folders costs hundreds of
microseconds of kernel time (a new inode near each folder's own block group; measured at about
450 us per file across 500 guest folders, against about 30 us in one folder). Removing it is
cheap; allocating the inode is what costs.

So :class:`SpareFiles` keeps the inodes. A removed step file is renamed into the store's
``spare`` folder (outside every guest's drives, so no guest sees it); the next step file is a
spare renamed into place and overwritten. The guest sees what it always saw: the file appears
with its content for the step and is gone after it. Anything unusual takes the plain path: a
path that is not a regular file of one link, no spare left, a spare another process took first
(stores may be shared between simulated hosts), a rename that fails. Spares left by a process
that died are adopted by the next one; at most :data:`LIMIT` are kept. Every step file, spare or
new, is its owner's alone (mode 0600), as everything the store keeps outside the guests' disks.
"""

from __future__ import annotations

import itertools
import os
import secrets
import stat
from pathlib import Path

__all__ = ["LIMIT", "SpareFiles"]

#: Spares a store keeps: about as many step files as run at once in its guests.
LIMIT = 256


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class SpareFiles:
    """The spare inodes of one store, in ``folder`` (created on first use)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._spares: list[str] | None = None
        self._prefix = f"{os.getpid()}-{secrets.token_hex(4)}-"
        self._counter = itertools.count()

    def _list(self) -> list[str]:
        if self._spares is None:
            try:
                self._folder.mkdir(exist_ok=True, mode=0o700)
                names = os.listdir(self._folder)
            except OSError:
                names = []
            self._spares = [os.path.join(self._folder, name) for name in names[:LIMIT]]
        return self._spares

    def write(self, path: Path, data: bytes) -> None:
        """``path.write_bytes(data)`` for a new file, from a spare inode when there is one; a file
        made anew is owner-only (mode 0600), as the spares are."""
        spares = self._list()
        while spares:
            spare = spares.pop()
            try:
                os.rename(spare, path)
            except FileNotFoundError:
                if not os.path.lexists(spare):
                    continue  # another process sharing the store took it
                spares.append(spare)  # the file's folder is missing: write_bytes says so
                break
            except OSError:
                spares.append(spare)
                break
            try:
                with open(path, "r+b") as file:
                    file.write(data)
                    file.truncate()
            except OSError:
                # Never leave another step's text behind: empty it, or remove it, then write it
                # below as any new file would be written (or fail as that would).
                try:
                    os.truncate(path, 0)
                except OSError:
                    path.unlink(missing_ok=True)
                break
            return
        # A new file, owner-only as the spares are: the store's files are its owner's alone.
        with open(path, "wb", opener=_owner_only) as file:
            file.write(data)

    def remove(self, path: Path) -> None:
        """``path.unlink(missing_ok=True)``, keeping the inode as a spare when it can."""
        spares = self._list()
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError:
            info = None
        if info is not None and stat.S_ISREG(info.st_mode) and info.st_nlink == 1 and len(spares) < LIMIT:
            spare = os.path.join(self._folder, f"{self._prefix}{next(self._counter)}")
            try:
                if stat.S_IMODE(info.st_mode) != 0o600:
                    os.chmod(path, 0o600)  # a file the step's own name already had
                os.rename(path, spare)
            except OSError:
                pass
            else:
                spares.append(spare)
                return
        path.unlink(missing_ok=True)
