"""Where vmbusops keeps its state: one directory, ``VMBUSOPS_HOME``.

Configuration, the credential store, the simulator's state, the journal, the trust policy and the
host's receipt-signing key (:mod:`vmbusops.receipts`) all live below it, so that users and tests
can run isolated instances side by side by pointing ``VMBUSOPS_HOME`` somewhere else. Without it, the platform's usual per-user data directory.

Everything below it is owner-only: folders 0700, files 0600, whatever the umask. Folders are
made with :func:`private_dir` (``Path.mkdir(parents=True)`` gives the parents it makes the
default mode, not the one asked for) and files created with :func:`private_file` or opened with
mode 0600 and ``O_CREAT``. On Windows the per-user data directory's ACL does this job.

A state directory that cannot be made or is not a folder (a file, a parent that does not exist
on a read-only or virtual file system, no permission) is a configuration error (exit code 2)
saying which path and why, raised by :func:`home_dir` before anything is written there.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import platformdirs

from vmbusops.errors import ConfigError

ENV_HOME = "VMBUSOPS_HOME"


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
_POSIX = os.name == "posix"


def home_dir(*, create: bool = True) -> Path:
    """The state directory; created owner-only on first use, and made owner-only if it was not
    (a folder made beforehand by hand, a package, or systemd's ``StateDirectory=``)."""
    raw = os.environ.get(ENV_HOME)
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("vmbusops", appauthor=False))
    if create:
        try:
            private_dir(path)
            found = path.stat()
            if not stat.S_ISDIR(found.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "it is not a directory")
            if not os.access(path, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "this user may not write in it")
            if _POSIX and found.st_mode & 0o077 and found.st_uid == os.geteuid():
                path.chmod(PRIVATE_DIR)
        except OSError as exc:
            where = f"{ENV_HOME}={raw}" if raw else f"the state directory {path}"
            raise ConfigError(
                f"{where} cannot be used: {exc.strerror or exc}",
                hint=f"point {ENV_HOME} at a directory you can write (it is created if missing)",
            ) from None
    return path


def home_path(*parts: str, create_parent: bool = True) -> Path:
    """A path below the state directory, its parent created."""
    path = home_dir().joinpath(*parts)
    if create_parent:
        private_dir(path.parent)
    return path


def private_dir(path: Path) -> Path:
    """``mkdir -p`` where every folder it makes is 0700 (existing ones are left as they are)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by another process
        if _POSIX:
            folder.chmod(PRIVATE_DIR)  # mkdir's mode is masked by the umask
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` (empty) as 0600 if it does not exist; make it 0600 if it does. For files
    another library then opens (SQLite), so they never exist with the umask's mode.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included, and another process's SQLite would then
    take this one's database for unused and delete its write-ahead log under it.
    """
    private_dir(path.parent)
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), PRIVATE_FILE)
        except FileExistsError:
            found = os.lstat(path)  # made meanwhile by another process: treated as found
        else:
            os.close(fd)  # a file nobody had open: no lock to lose
            return path
    if stat.S_ISLNK(found.st_mode):
        raise OSError(errno.ELOOP, "a symbolic link where a private file belongs", str(path))
    if _POSIX and stat.S_IMODE(found.st_mode) != PRIVATE_FILE:
        os.chmod(path, PRIVATE_FILE)
    return path
