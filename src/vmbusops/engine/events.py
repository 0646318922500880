"""What the engine tells its watchers (the CLI's live view, the agent's event streams)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmbusops.engine.states import State
from vmbusops.records import GuestRecord


@dataclass(frozen=True, slots=True)
class RunChanged:
    """A run moved: a new state, or a new current step (``step`` may carry a progress note)."""

    job_id: int
    vm: str
    state: State
    step: str | None
    error: str | None = None
    #: The failure code (:class:`~vmbusops.errors.FailureCode`) of a run that ended unsuccessfully.
    code: str | None = None


@dataclass(frozen=True, slots=True)
class RecordArrived:
    """A record of a run, numbered as the journal stores it."""

    job_id: int
    record: GuestRecord


EngineEvent = RunChanged | RecordArrived


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: int
    state: State
    runs: dict[str, State]
    errors: dict[str, str]
    #: Per VM, what its dsc and patch steps did (resources changed and failed, reboot pending, ...).
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


__all__ = ["EngineEvent", "JobResult", "RecordArrived", "RunChanged"]
