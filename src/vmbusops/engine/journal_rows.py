"""What the journal's readers return: a job, a run, a step, a record, as stored (and as shown)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vmbusops.engine.states import State
from vmbusops.times import iso_time


@dataclass(frozen=True, slots=True)
class LeftOut:
    """A VM the bundle's targets selected that the job does not touch, and why
    (:mod:`vmbusops.engine.targets`)."""

    vm: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"vm": self.vm, "why": self.why}


def left_out_of(text: str | None) -> tuple[LeftOut, ...]:
    """The job's ``left_out`` column (JSON) as records; () for none or a journal without it."""
    if not text:
        return ()
    return tuple(LeftOut(str(item["vm"]), str(item["why"])) for item in json.loads(text))


@dataclass(frozen=True, slots=True)
class CheckpointView:
    """A guarded span's checkpoint as the journal keeps it (see :mod:`vmbusops.engine.guard`)."""

    span: int
    name: str
    phase: str
    outcome: str | None
    production: bool | None
    reason: str | None
    planned_at: float | None
    taken_at: float | None
    restored_at: float | None
    removed_at: float | None

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> CheckpointView:
        """From a row of :data:`CHECKPOINTS_OF_RUN`."""
        production = None if r[4] is None else bool(r[4])
        return cls(r[0], r[1], r[2], r[3], production, r[5], r[6], r[7], r[8], r[9])

    def to_json(self) -> dict[str, Any]:
        """As a receipt, ``jobs show --json`` and the API give it (no host error text: that can
        carry what the guest wrote; the run's error has it)."""
        return {
            "name": self.name, "phase": self.phase, "outcome": self.outcome,
            "type": None if self.production is None else "production" if self.production else "standard",
            "taken_at": _iso(self.taken_at), "restored_at": _iso(self.restored_at),
            "removed_at": _iso(self.removed_at),
        }  # fmt: skip


#: A run's checkpoint rows, in span order.
CHECKPOINTS_OF_RUN = (
    "SELECT span, name, phase, outcome, production, reason, planned_at, taken_at, restored_at, removed_at"
    " FROM checkpoints WHERE run_id = ? ORDER BY span"
)


def _iso(t: float | None) -> str | None:
    return iso_time(t) if t is not None else None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobView:
    id: int
    bundle_name: str
    bundle_version: int
    bundle_id: str
    source: str
    #: Who submitted it: an API principal (``token:NAME``, ``cert:SUBJECT``), the local user of
    #: ``vmbusops run``, or ``schedule:NAME``; None for jobs journaled before it was recorded.
    submitter: str | None
    host: str
    state: State
    stored_state: State
    created_at: float
    started_at: float | None
    finished_at: float | None
    owner_pid: int | None
    owner_alive: bool
    cancel_requested: bool
    error: str | None
    manifest: str
    bundle_dir: str | None
    #: The trust scope that accepted the bundle lets its steps enable the Guest Service Interface.
    enable_guest_services: bool
    #: The signed envelope the bundle was accepted with (JSON), verified again on resume.
    envelope: str | None
    #: Retention removed the job's records (its runs keep their excerpts).
    pruned: bool
    run_states: dict[str, int]
    #: VMs the targets selected that the signer's scope left out, with why.
    left_out: tuple[LeftOut, ...] = ()
    #: No run of the job starts after this (epoch seconds): a schedule tick's cut-off.
    start_by: float | None = None

    @property
    def targets(self) -> int:
        return sum(self.run_states.values())


@dataclass(frozen=True, slots=True, kw_only=True)
class RunView:
    id: int
    job_id: int
    vm: str
    state: State
    stored_state: State
    current_step: str | None
    started_at: float | None
    finished_at: float | None
    error: str | None
    records: int
    cancel_requested: bool
    #: Why the run failed, for programs (a :class:`~vmbusops.errors.FailureCode`); None if it did not.
    code: str | None = None
    #: The excerpt as stored (JSON), decoded only when asked for: a job's status reads every run.
    excerpt_json: str | None = None
    #: What the run, in progress under a live owner, waits for (:data:`~.changes.WAITING_SESSION`).
    waiting: str | None = None

    @property
    def excerpt(self) -> list[str]:
        """The run's head-and-tail excerpt (its lines as an operator reads them)."""
        return list(json.loads(self.excerpt_json)) if self.excerpt_json else []


@dataclass(frozen=True, slots=True, kw_only=True)
class StepView:
    run_id: int
    idx: int
    name: str
    kind: str
    state: State
    attempts: int
    started_at: float | None
    finished_at: float | None
    error: str | None
    #: Why the step failed, for programs (a :class:`~vmbusops.errors.FailureCode`); None if it did not.
    code: str | None = None
    #: The guest script's exit code (script steps), None when none came back.
    exit_code: int | None = None


# Not frozen: a frozen dataclass sets each field through object.__setattr__, which made building
# a view cost 3.5 us against 0.9 us, and a reader of a big job builds one per record.
@dataclass(slots=True, kw_only=True)
class RecordView:
    run_id: int
    vm: str
    #: The job's record number (1, 2, 3... in the order journaled); 0 where the source has none.
    n: int = 0
    seq: int
    step: str | None
    attempt: int
    stream: str
    time: float
    content: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class VmRunView:
    """One run of a VM's history, with what it shows of the run's job."""

    run: RunView
    bundle_name: str
    bundle_version: int
    submitter: str | None


def spliced_record(vm_json: str, step_json: str, row: tuple[Any, ...]) -> str:
    """A stored record (``StoredRecord``) as its readers are given it: ``{"vm", "event", "stream",
    "seq", "time", "step", ...content}``, the object ``vmbusops logs --json`` prints, the API sends
    and a run's transcript (:mod:`vmbusops.receipts`) holds; ``vm_json`` and ``step_json`` are the
    names encoded as JSON.

    Spliced from the stored content's JSON text (an object, ``{"stream":"<stream>"`` first, the
    stream also in its own column), so a record costs one string format, not a decode and an
    encode; the stored epoch time is written as ISO 8601 UTC (:func:`vmbusops.times.iso_time`).
    """
    stream = row[6]
    rest = row[8][len(stream) + 12 :]  # what follows '{"stream":"<stream>"': ',...}' or '}'
    return (
        f'{{"vm":{vm_json},"event":"record","stream":"{stream}","seq":{row[3]},'
        f'"time":"{iso_time(row[7])}","step":{step_json}{rest}'
    )
