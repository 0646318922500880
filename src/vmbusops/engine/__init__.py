"""The job engine: jobs -> per-VM runs -> steps; rate control; the journal (SQLite)."""

from vmbusops.engine.journal import Journal, journal_path
from vmbusops.engine.runner import (
    Engine,
    EngineEvent,
    EngineOptions,
    JobResult,
    JobSource,
    RecordArrived,
    RunChanged,
    open_engine,
    resolve_targets,
)
from vmbusops.engine.states import Event, Level, State

__all__ = [
    "Engine",
    "EngineEvent",
    "EngineOptions",
    "Event",
    "JobResult",
    "JobSource",
    "Journal",
    "Level",
    "RecordArrived",
    "RunChanged",
    "State",
    "journal_path",
    "open_engine",
    "resolve_targets",
]
