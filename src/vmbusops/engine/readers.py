"""Readers of the journal that never wait on each other, for a process that serves many.

One :class:`~.journal.Journal` connection is shared by the threads of a process behind a lock, so
a reader catching up a large job would hold every other read (a job's status above all) until it
is done. WAL lets any number of connections read at once, each from its own snapshot, without
blocking the writer; :class:`JournalReaders` keeps a few such connections and lends each to one
worker thread at a time. Connections are opened when first needed and kept for reuse.

A small read (a job's status: its row, its runs' state counts and, once, its VMs' names, well
under a millisecond; a follower's catch-up page of a hundred records, a few tenths of one) costs
less than the trip to a worker thread and back, and a trip to a thread is where a busy process
makes a caller wait: the thread, and then the event loop again, each wait for the interpreter
while another thread holds it; and a thread doing Python work beside the loop makes the loop wait
for the interpreter at each of its system calls. :meth:`JournalReaders.run_here` makes such a
read on the calling thread, on a connection of its own: a WAL reader takes no lock another
connection holds for long, so it does not wait on the writer nor on the other readers either. It
does wait for the disk when the pages it reads are not in memory (a job read long after it was
written), and the event loop waits with it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio

from vmbusops.engine.journal import Journal

T = TypeVar("T")


class JournalReaders:
    def __init__(self, path: Path, *, size: int = 4) -> None:
        self.path = path
        self._limiter = trio.CapacityLimiter(size)
        self._idle: list[Journal] = []
        self._open: list[Journal] = []
        self._here: Journal | None = None

    async def run(self, fn: Callable[[Journal], T]) -> T:
        """``fn(journal)`` in a worker thread, on a connection no other call uses meanwhile."""
        async with self._limiter:
            journal = self._idle.pop() if self._idle else None
            if journal is None:
                journal = await trio.to_thread.run_sync(self._connect)
            try:
                return await trio.to_thread.run_sync(fn, journal)
            finally:
                self._idle.append(journal)

    async def run_here(self, fn: Callable[[Journal], T]) -> T:
        """``fn(journal)`` on this thread (the event loop's), for reads that take well under a
        millisecond; its connection is used by this thread only, one call at a time (``fn``
        must not keep a cursor open past its return)."""
        here = self._here
        if here is None:
            here = self._keep_here(await trio.to_thread.run_sync(self._connect))
        return fn(here)

    def _keep_here(self, opened: Journal) -> Journal:
        """The loop's connection: ``opened``, unless another first call kept one meanwhile (then
        ``opened`` joins the pool)."""
        if self._here is None:
            self._here = opened
        else:
            self._idle.append(opened)
        return self._here

    def _connect(self) -> Journal:
        journal = Journal(self.path, readonly=True)
        self._open.append(journal)
        return journal

    def close(self) -> None:
        for journal in self._open:
            journal.close()
        self._open.clear()
        self._idle.clear()
        self._here = None


__all__ = ["JournalReaders"]
