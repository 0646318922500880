"""What the engine asks the journal to write, as values (sans-IO).

The run machine (:mod:`.machine`) says what changed as :class:`JobChange`, :class:`RunChange` and
:class:`StepChange` values; the journal writer queues them behind the records that came before and
:meth:`.journal.Journal.apply` turns each into its one ``UPDATE``. So the SQL lives in the journal
alone, and what the engine decided can be read (and tested) without a database.

A field left ``None`` is not written (but a run's ``current_step`` and ``waiting``, which every
run change writes); ``clear`` on a step change (a new attempt) empties its finish time and error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from vmbusops.engine.states import State
from vmbusops.records import RECORD_JSON, STREAM_TEXT, Record


@dataclass(frozen=True, slots=True, kw_only=True)
class JobChange:
    job_id: int
    state: State
    #: Written only if the job has no start time yet (a resumed job keeps its first).
    started_at: float | None = None
    finished_at: float | None = None
    #: Why the job ended the way it did, when no run says it (a resume refused).
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunChange:
    run_id: int
    #: None: only where the run is (current step, records so far) changed.
    state: State | None
    current_step: str | None
    records: int
    error: str | None = None
    #: The failure code (:class:`~vmbusops.errors.FailureCode`) written with ``error``.
    code: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    excerpt: list[str] | None = None
    #: What the run waits for while it is in progress (:data:`WAITING_SESSION`), or None: written
    #: with every change of the run, so any later one clears it.
    waiting: str | None = None


#: A run's ``waiting`` while a step of it waits for a PowerShell Direct session: all of its
#: process's (``[host] max_sessions``) are in use.
WAITING_SESSION: Final = "session"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepChange:
    run_id: int
    index: int
    state: State
    attempts: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    code: str | None = None
    #: The guest script's exit code, when the step ran one.
    exit_code: int | None = None
    #: A new attempt: forget the previous attempt's finish time, error, code and exit code.
    clear: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointChange:
    """Where a guarded span's checkpoint stands (see :mod:`.guard`): the row of ``(run_id, span)``
    is created or updated; a time left ``None`` keeps what the row has."""

    run_id: int
    #: The span's first step index.
    span: int
    name: str
    phase: str
    #: ``kept`` (the change stays), ``rolled-back``, or ``failed`` (a restore failed: kept for the
    #: operator); None while the span runs.
    outcome: str | None = None
    production: bool | None = None
    reason: str | None = None
    planned_at: float | None = None
    taken_at: float | None = None
    restored_at: float | None = None
    removed_at: float | None = None


Change = JobChange | RunChange | StepChange | CheckpointChange

PendingRecord = tuple[int, int, int, str | None, int, str, float, str]
"""(job_id, run_id, seq, step, attempt, stream, time, content JSON): a record as the journal
writer holds it until its flush, encoded as it is queued. A tuple of plain values is one the
garbage collector stops tracking, and the record object is let go at once: the records waiting
for a flush (up to a thousand) are no work for the collector's passes, and a flood's records
no longer outlive its young generation into the older ones."""



def pending(row: tuple[int, int, int, str | None, int, Record, float]) -> PendingRecord:
    """One record, ``(job_id, run_id, seq, step, attempt, record, time)``, as the writer holds it
    (see :func:`pending_rows`)."""
    job_id, run_id, seq, step, attempt, record, at = row
    (held,) = pending_rows((record,), job_id=job_id, run_id=run_id, step=step, attempt=attempt, first_seq=seq, at=at)
    return held


def pending_rows(
    records: Iterable[Record], *, job_id: int, run_id: int, step: str | None, attempt: int, first_seq: int, at: float
) -> list[PendingRecord]:
    """Consecutive records of one run, step and attempt, numbered from ``first_seq`` and taken at
    ``at``, as the writer holds them: each record replaced by its stream's name and its JSON
    (:func:`~vmbusops.records.record_json`)."""
    return [
        (job_id, run_id, seq, step, attempt, STREAM_TEXT[type(record)], at, RECORD_JSON[type(record)](record))
        for seq, record in enumerate(records, first_seq)
    ]


__all__ = [
    "WAITING_SESSION",
    "Change",
    "CheckpointChange",
    "JobChange",
    "PendingRecord",
    "RunChange",
    "StepChange",
    "pending",
    "pending_rows",
]
