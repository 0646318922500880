"""Batched journal writes that never slow the record stream.

Records arrive one by one from many guests; writing each in its own transaction would tie the
stream's pace to the disk. :class:`JournalWriter` buffers them in memory and a flusher task writes
a batch (one transaction, in a worker thread) every ``flush_records`` records or every
``flush_interval`` seconds, whichever comes first; with nothing queued and nothing committed since
its last tick it sleeps without a timer until something is queued or committed, and commits it when
the timer would have fired had it kept running. State changes queue behind the records that came
before them and go out in the same transaction, so the journal never shows a step finished without
its records.

The buffer is bounded: a producer that gets ``max_buffer`` records ahead of the disk waits for a
flush (back-pressure through :meth:`add_record` and :meth:`queue`), so memory stays flat however much a guest prints.

Each commit numbers the records it carries (their job's ``n``, see :mod:`.journal_schema`) and,
after it is durable, tells :attr:`JournalWriter.on_commit` what it carried: the records as stored
and the state events of its changes. That is how the agent feeds its followers only what is
durable, in the order it was committed. :attr:`JournalWriter.on_applied` is told the same records
and every change the commit carried (what a fleet agent forwards to the fleet's controller).

:meth:`commit` is the engine's commit point: it returns once everything queued before the call is
durable. It runs shielded from cancellation, so a cancelled run still records that it was
cancelled; a flush is bounded by SQLite's busy timeout. A commit is a group commit: it first lets
the other tasks ready to run queue what they have (one pass of the scheduler), and a caller whose
writes a flush already carried (another caller's, or the flusher's) returns without one of its
own, and without the writer's lock. What is queued is counted (:attr:`JournalWriter._queued_at`)
and each flush notes how far it carried (:attr:`JournalWriter._durable_at`), so a caller knows
without a lock whether its writes are durable. The runs of a job end together, and their
commits share a transaction.

A flush that fails (a full disk, above all) is rolled back whole, and what it carried is gone. From
then on the writer writes nothing more and every call raises that first error (:attr:`failure`):
a later, smaller write could succeed and leave a hole in a run's records, or a state written
after records that are missing. So the journal stays exactly as it was at the last commit, as
after a crash: the owner's runs read as interrupted once it exits, and resume from there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import trio

from vmbusops.engine.changes import Change, PendingRecord
from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import Journal, JournalBusy, StoredRecord
from vmbusops.errors import JournalError

T = TypeVar("T")


class JournalWriter:
    def __init__(
        self,
        journal: Journal,
        *,
        flush_records: int = 1000,
        flush_interval: float = 0.05,
        followed_interval: float = 0.03,
        max_buffer: int = 20_000,
        inline_records: int = 64,
    ) -> None:
        self.journal = journal
        self.inline_records = inline_records
        self.flush_records = flush_records
        self.flush_interval = flush_interval
        #: While :attr:`followed` says someone waits on commits, they come at least this often.
        self.followed_interval = followed_interval
        self.followed: Callable[[], bool] | None = None
        self.max_buffer = max_buffer
        self._records: list[PendingRecord] = []
        self._changes: list[Change] = []
        self._events: list[RunChanged] = []
        self._released: list[tuple[str, int]] = []
        #: How many times something was queued (records, changes, events, a lease's release), and
        #: that count as the last successful flush took what was queued: whatever was queued at or
        #: before ``_durable_at`` is durable.
        self._queued_at = 0
        self._durable_at = 0
        #: Told of every commit, on the trio thread: the records as stored (numbered) and the
        #: state events of the changes it carried, in order. The agent feeds its followers from it.
        self.on_commit: Callable[[list[StoredRecord], list[RunChanged]], None] | None = None
        #: Told of every commit that wrote something, on the trio thread, before
        #: :attr:`on_commit`: the records as stored and every change it carried (job, run and
        #: step changes), in the order they were applied. A fleet agent forwards from it what
        #: each commit carried for a run, for the controller's journal to apply the same. Like
        #: :attr:`on_commit` it must neither block nor raise (an error would fail the committer).
        self.on_applied: Callable[[list[StoredRecord], list[Change]], None] | None = None
        #: Told once per rhythm (``flush_interval``, or ``followed_interval`` while followed),
        #: after :attr:`on_commit`, at the first commit that ends it: the flusher's own, or a
        #: run's if that comes first (the flusher may be waiting behind the runs' commits for
        #: the lock). The agent's followers rest between chunks until then, so each sends at most
        #: one chunk per tick, with what the commits since the last one brought.
        self.on_tick: Callable[[], None] | None = None
        self._ticked_at = -math.inf
        self._lock = trio.Lock()
        self._wake = trio.Event()
        #: Something was committed since :attr:`on_tick` was last told; the flusher waits on
        #: :attr:`_wake` alone (no timer) while it is not and nothing is queued (``_dormant``).
        self._dirty = False
        self._dormant = False
        #: CPU seconds spent in journal writes (the writing thread's CPU time), counted only
        #: while :attr:`timed` (a bench's: reading a thread's CPU clock is a system call, and
        #: costs microseconds a flush on a loaded host), and what was written.
        self.timed = False
        self.cpu_seconds = 0.0
        self.records_written = 0
        self.flushes = 0
        #: The error of the flush that failed; once set, nothing more is written.
        self.failure: JournalError | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The flusher; start it in a nursery. Flushes what is left when cancelled."""
        task_status.started()
        try:
            while True:
                if not self._dirty and not self._queued():
                    # Nothing written since the last tick, nothing queued: no timer until
                    # something is (an idle host would otherwise wake every rhythm). What comes
                    # then is committed when the rhythm's timer would have fired had it kept
                    # running: no later than before, and batched as before.
                    since = trio.current_time()
                    self._dormant = True
                    try:
                        await self._wake.wait()
                    finally:
                        self._dormant = False
                    self._wake = trio.Event()
                    rhythm = self._rhythm()
                    due = since + (math.floor((trio.current_time() - since) / rhythm) + 1) * rhythm
                    with trio.move_on_at(due):
                        await self._wake.wait()
                else:
                    with trio.move_on_after(self._rhythm()):
                        await self._wake.wait()
                self._wake = trio.Event()
                await self.commit()
                self._tick()
        finally:
            if self.failure is None:
                await self.commit()

    def _stir(self) -> None:
        """Wake a flusher sleeping with no timer: something is queued, or was committed."""
        if self._dormant:
            self._wake.set()

    def _queued(self) -> bool:
        return bool(self._records or self._changes or self._events or self._released)

    async def add_record(self, row: PendingRecord) -> None:
        if self.queue((row,)):
            await self.commit()

    def queue(self, rows: Sequence[PendingRecord]) -> bool:
        """:meth:`add_record` for consecutive records, without waiting: True when the buffer is
        full, and the caller must await :meth:`commit` before it queues more (the engine's record
        path: a call per run of a guest's records, so the buffer holds at most one such run past
        ``max_buffer``)."""
        records = self._records
        records.extend(rows)
        self._queued_at += 1
        self._stir()
        if len(records) < self.flush_records:
            return False
        self._wake.set()
        return len(records) >= self.max_buffer

    def change(self, changes: Sequence[Change], events: Sequence[RunChanged] = ()) -> None:
        """State changes, written with the next batch (after every record queued before them);
        ``events`` say what they change, told to :attr:`on_commit` once they are committed."""
        self._changes.extend(changes)
        if self.on_commit is not None:
            self._events.extend(events)
        self._queued_at += 1
        self._stir()

    def release_vm(self, vm: str, run_id: int) -> None:
        """Release the run's VM lease in the next batch, after everything queued before (the
        run's end: one transaction, and no other process takes the VM before it is written)."""
        self._released.append((vm, run_id))
        self._queued_at += 1
        self._stir()

    async def commit(self) -> None:
        """Return when everything queued so far is committed: written by this call, or by a flush
        that took it meanwhile (see the module's docstring)."""
        wanted = self._queued_at
        # One pass of the scheduler: the other runs ready now queue theirs, for the same flush.
        await trio.lowlevel.cancel_shielded_checkpoint()
        if self._durable_at >= wanted and self.failure is None:
            return
        with trio.CancelScope(shield=True):
            async with self._lock:
                if self._durable_at < wanted or self.failure is not None:
                    await self._flush()

    async def _flush(self) -> None:
        """Write what is queued (the lock held); a failure stops every later write."""
        if self.failure is not None:
            raise self.failure
        taken = self._queued_at
        records, self._records = self._records, []
        changes, self._changes = self._changes, []
        events, self._events = self._events, []
        released, self._released = self._released, []
        if not (records or changes or events or released):
            self._durable_at = taken  # what earlier flushes (this lock's holders) took is written
            return
        try:
            stored = await self._in_journal(len(records), self._apply, records, changes, released)
        except JournalError as exc:
            self.failure = exc
            raise
        self._durable_at = taken
        self._dirty = True  # a tick is owed a rhythm after this commit
        self._stir()
        if self.on_applied is not None and (stored or changes):
            self.on_applied(stored, changes)
        if self.on_commit is not None and (stored or events):
            self.on_commit(stored, events)
            self._tick()

    def _rhythm(self) -> float:
        """How long the flusher waits after its last commit (and :attr:`on_tick` is told a
        rhythm after the last tick): shorter while followed. Counted from a commit's end, so under
        load the commits come this plus a commit's own time apart."""
        followed = self.followed is not None and self.followed()
        return self.followed_interval if followed else self.flush_interval

    def _tick(self) -> None:
        """Tell :attr:`on_tick`, if a rhythm has passed since it was last told."""
        if self.on_tick is None:
            self._dirty = False
            return
        now = trio.current_time()
        # (A microsecond of slack: the flusher wakes a rhythm after the last tick, to the float.)
        if now - self._ticked_at >= self._rhythm() - 1e-6:
            self._ticked_at = now
            self._dirty = False
            self.on_tick()

    async def _in_journal(self, records: int, fn: Callable[..., T], *args: Any) -> T:
        """Run a journal call here when SQLite takes it at once, else in a worker thread.

        State changes and leases are tens of microseconds of SQLite; a thread hop costs more,
        and under a busy event loop the worker waits milliseconds for the GIL while every other
        run queues behind this writer's lock. So small calls run on the trio thread without
        waiting; a large batch of records, or a journal busy with another process's write,
        goes to a worker thread as before.
        """
        if records <= self.inline_records:
            try:
                return self.journal.without_waiting(fn, *args)
            except JournalBusy:
                pass
        return await trio.to_thread.run_sync(fn, *args)

    def _apply(
        self, records: list[PendingRecord], changes: list[Change], released: list[tuple[str, int]]
    ) -> list[StoredRecord]:
        started = time.thread_time() if self.timed else 0.0
        try:
            stored = self.journal.apply(records, changes, released)
        finally:
            if self.timed:
                self.cpu_seconds += time.thread_time() - started
        self.records_written += len(records)
        self.flushes += 1
        return stored

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run another journal method in a worker thread, after what is queued (shielded)."""
        with trio.CancelScope(shield=True):
            async with self._lock:
                await self._flush()
                result = await self._in_journal(0, fn, *args)
        return result
