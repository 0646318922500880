"""What a fleet agent forwards of each local commit: batches, built without I/O.

The agent's journal writer tells :meth:`BatchBuilder.applied` what each commit carried (the
records as stored, every change); for each fleet run that commit touched, the builder makes one
:class:`PendingBatch`: the run's records as the batch carries them ([seq, step, attempt, stream,
time, record json]) and its run and step changes as JSON without the local run id
(:func:`vmbusops.engine.changes_json.change_to_json`), numbered ``n`` = 1, 2, ... per (run,
epoch). Job changes are the local job's own and are not forwarded (the controller's job state is
its projection's). Records of other jobs (local submissions) and changes of runs that are not
fleet runs are not forwarded either.

Memory is bounded: while more than ``max_inline_records`` records wait unsent (a slow or absent
broker), a new batch keeps only where its records are in the local journal (the local job and its
``n`` range; a commit numbers a job's records contiguously), and the forwarder reads them back
from the journal when it publishes that batch. Nothing is dropped and the runs are not slowed: the
journal, which holds every record anyway, is the overflow.

:func:`moved_split` is the rule for a run whose VM left the host: the terminal failure of the run
(and of the step it failed in) is held back and replaced by a ``moved`` fact; everything else of
the commit still goes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmbusops.engine.changes import Change, RunChange, StepChange
from vmbusops.engine.changes_json import change_to_json
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.states import State
from vmbusops.fleet.messages import VERSION, WireRecord, changes_for

#: A bound on a batch's or a record's JSON beside the record text, for sizing a message.
_BATCH_OVERHEAD = 128

#: Run states that end a run as a failure the host's VM leaving could explain.
FAILED_STATES = frozenset({State.FAILED, State.EXECUTION_TIMED_OUT, State.DELIVERY_TIMED_OUT})


@dataclass(frozen=True, slots=True)
class FleetRunKey:
    job: int
    run: int
    epoch: int


@dataclass(slots=True)
class Tracked:
    """A fleet run this process runs as local job ``local_job`` (run ``local_run``)."""

    key: FleetRunKey
    vm: str
    vm_id: str
    local_job: int
    local_run: int
    #: The ``n`` of the last batch built for it.
    last_n: int = 0
    #: Stopped here because this host lost the broker (``FleetAgent._watch_lease``): its end is
    #: not the run's, and the controller is to dispatch it again (see ``FleetAgent._forward``).
    broker_lost: bool = False
    #: The fleet protocol of the work that dispatched it: its facts are written in it.
    protocol: int = VERSION


@dataclass(slots=True)
class PendingBatch:
    tracked: Tracked
    n: int
    #: The records, or None when they are to be read back from the journal (``spilled``).
    records: list[WireRecord] | None
    #: The local job's record numbers this batch covers: (after, last]; (0, 0) for none.
    spilled: tuple[int, int]
    changes: list[Change]
    time: float
    count: int = 0

    @property
    def ends_failed(self) -> bool:
        """Whether this commit ends the run in a failure (the moved rule looks at it)."""
        return any(isinstance(c, RunChange) and c.state in FAILED_STATES for c in self.changes)

    @property
    def ends(self) -> bool:
        return any(isinstance(c, RunChange) and c.state is not None and c.state.terminal for c in self.changes)

    @property
    def hands_back(self) -> bool:
        """Whether this commit ends, other than in success, a run this host stopped because it
        lost the broker: not the run's end (``FleetAgent._forward`` hands the run back)."""
        return self.tracked.broker_lost and any(
            isinstance(c, RunChange) and c.state is not None and c.state.terminal and c.state is not State.SUCCESS
            for c in self.changes
        )


def wire_record(stored: StoredRecord) -> WireRecord:
    _job, _n, _run, seq, step, attempt, stream, at, content = stored
    return (seq, step, attempt, stream, at, content)


def wire_changes(changes: Sequence[Change], version: int = VERSION) -> list[dict[str, Any]]:
    """Run and step changes as a batch of fleet protocol ``version`` carries them."""
    return changes_for([change_to_json(c, ids=False) for c in changes], version)


@dataclass
class BatchBuilder:
    """Turns commits into pending batches, in order, for the runs it tracks."""

    max_inline_records: int = 20_000
    by_job: dict[int, Tracked] = field(default_factory=dict)
    by_run: dict[int, Tracked] = field(default_factory=dict)
    queue: deque[PendingBatch] = field(default_factory=deque)
    #: Records held in memory by the queued batches.
    inline_records: int = 0
    #: Queued batches that end their run.
    ending: int = 0

    def track(self, tracked: Tracked) -> None:
        self.by_job[tracked.local_job] = tracked
        self.by_run[tracked.local_run] = tracked

    def untrack(self, tracked: Tracked) -> None:
        self.by_job.pop(tracked.local_job, None)
        self.by_run.pop(tracked.local_run, None)

    def applied(self, stored: Sequence[StoredRecord], changes: Sequence[Change], now: float) -> int:
        """One commit: queue a batch per tracked run it touched; how many were queued."""
        if not self.by_job:
            return 0
        touched: dict[int, PendingBatch] = {}
        order: list[PendingBatch] = []

        def batch_of(tracked: Tracked) -> PendingBatch:
            pending = touched.get(tracked.local_job)
            if pending is None:
                spill = self.inline_records >= self.max_inline_records
                pending = PendingBatch(
                    tracked=tracked, n=0, records=None if spill else [], spilled=(0, 0), changes=[], time=now
                )
                touched[tracked.local_job] = pending
                order.append(pending)
            return pending

        for rec in stored:
            tracked = self.by_job.get(rec[0])
            if tracked is None:
                continue
            pending = batch_of(tracked)
            n = rec[1]
            after, last = pending.spilled
            pending.spilled = (n - 1 if last == 0 else after, n)
            pending.count += 1
            if pending.records is not None:
                pending.records.append(wire_record(rec))
        for change in changes:
            if isinstance(change, RunChange | StepChange):
                tracked = self.by_run.get(change.run_id)
                if tracked is not None:
                    batch_of(tracked).changes.append(change)
        for pending in order:
            pending.tracked.last_n += 1
            pending.n = pending.tracked.last_n
            if pending.records is not None:
                self.inline_records += len(pending.records)
            if pending.ends:
                self.ending += 1
            self.queue.append(pending)
        return len(order)

    def due(self, max_batches: int) -> bool:
        """Whether the queue should go now rather than at the writer's next tick: a batch in it
        ends its run (the controller decides on that: the VM's next run, the job's end), or it
        holds a message's worth of batches."""
        return self.ending > 0 or len(self.queue) >= max_batches

    def next_group(self, max_batches: int, max_bytes: int) -> list[PendingBatch]:
        """What to publish next, from the head of the queue (not taken off it): every batch
        queued, up to ``max_batches`` of about ``max_bytes`` in all, as one message; a batch that
        may end in a move (:attr:`PendingBatch.ends_failed`) or hand its run back
        (:attr:`PendingBatch.hands_back`), or whose records are to be read back from the journal,
        goes alone; so do the batches of runs dispatched in another fleet protocol than the first's
        (one message, one protocol: what a newer one carries is not stripped for an older run's
        sake)."""
        group: list[PendingBatch] = []
        size = 0
        for pending in self.queue:
            if pending.records is None or pending.ends_failed or pending.hands_back:
                break
            if group and pending.tracked.protocol != group[0].tracked.protocol:
                break
            size += _BATCH_OVERHEAD + sum(len(r[5]) + _BATCH_OVERHEAD for r in pending.records)
            if group and (len(group) >= max_batches or size > max_bytes):
                break
            group.append(pending)
        return group or [self.queue[0]]

    def sent(self, pending: PendingBatch) -> None:
        """``pending`` (the head of the queue) was published: forget it."""
        if self.queue and self.queue[0] is pending:
            self.queue.popleft()
        if pending.records is not None:
            self.inline_records -= len(pending.records)
        if pending.ends:
            self.ending -= 1


def moved_split(changes: Sequence[Change]) -> list[Change]:
    """The changes of a commit that ended a run failed, minus that ending: the run's terminal
    change and every step change to a terminal state other than success (the step that failed,
    the later steps skipped) are left out, so the fleet run stands as its batches said, the step
    that was running as after a crash. Everything else (steps that succeeded, where the run is)
    is kept."""
    kept: list[Change] = []
    for c in changes:
        if isinstance(c, RunChange) and c.state is not None and c.state.terminal:
            continue
        if isinstance(c, StepChange) and c.state.terminal and c.state is not State.SUCCESS:
            continue
        kept.append(c)
    return kept


__all__ = [
    "FAILED_STATES", "BatchBuilder", "FleetRunKey", "PendingBatch", "Tracked", "moved_split", "wire_changes",
    "wire_record",
]  # fmt: skip
