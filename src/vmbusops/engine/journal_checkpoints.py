"""The write-ahead log's checkpoints, taken off the committing thread.

In WAL mode SQLite copies the log back into the database (a *checkpoint*) from inside the commit
that takes the log past ``wal_autocheckpoint`` pages (1,000 by default): that one commit reads and
writes a thousand pages and syncs the file, milliseconds, where a commit otherwise takes a tenth of
one. The journal writer commits small batches on the agent's event loop (see
:meth:`.writer.JournalWriter._in_journal`), so such a commit stalls every request, stream and run
on it. A process that runs a writer therefore leaves the checkpoints to :class:`WalCheckpoints`:
its writing connection checkpoints itself only past :data:`BACKSTOP_PAGES` (should the background
ones ever fall behind), and a connection of its own copies the log back in a worker thread, a
``PASSIVE`` checkpoint (it waits for no reader), between two of the writer's commits: the writer
holds its lock meanwhile, so runs that commit wait for it as they waited for a commit that
checkpointed, but the event loop goes on. Between commits it copies the whole log, and the next
commit starts the log again from its beginning; one overtaken by commits would leave the log to
grow to the backstop (40 MiB under a flood, measured).

What is durable is unchanged: a commit is durable once it is in the log (``synchronous=NORMAL``);
a checkpoint only moves committed pages into the database file.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from vmbusops.errors import JournalError

#: How far the writing connection lets the log grow (pages, 4 KiB each) before it checkpoints
#: itself: ten times SQLite's default, reached only if the background checkpoints stop.
BACKSTOP_PAGES = 10_000

#: How long after a commit the background checkpoint follows (seconds): the commits of that
#: while are copied back together, about SQLite's 1,000 pages under a flood.
CHECKPOINT_DELAY = 0.25


class WalCheckpoints:
    """PASSIVE checkpoints of one journal file, through a connection used for nothing else."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        #: Checkpoints taken, and the log frames they copied back (for tests and benches).
        self.taken = 0
        self.frames = 0

    def checkpoint(self) -> tuple[int, int]:
        """Copy back what the log holds that no reader still needs: (frames in the log, frames
        copied back), as ``PRAGMA wal_checkpoint(PASSIVE)`` says. Blocks; call it in a worker
        thread."""
        with self._lock:
            try:
                if self._db is None:
                    self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                _busy, in_log, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:
                raise JournalError(f"cannot checkpoint the journal {self.path}: {exc}") from exc
            self.taken += 1
            self.frames += max(0, int(copied))
            return int(in_log), int(copied)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


__all__ = ["BACKSTOP_PAGES", "CHECKPOINT_DELAY", "WalCheckpoints"]
