"""The job engine: jobs -> per-VM runs -> steps; rate control; the journal (SQLite).

:mod:`.engine` runs jobs (the trio side); :mod:`.machine` decides what every event does to a job
and its runs (sans-IO); :mod:`.executors` carries out each step kind; :mod:`.journal` owns the
schema and every SQL statement; :mod:`.writer` batches what goes into it.
"""

from vmbusops.engine.engine import Engine, EngineOptions, open_engine
from vmbusops.engine.events import EngineEvent, JobResult, RecordArrived, RunChanged
from vmbusops.engine.journal import Journal, journal_path
from vmbusops.engine.run_start import RunStart
from vmbusops.engine.source import JobSource, resolve_targets
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
    "RunStart",
    "State",
    "journal_path",
    "open_engine",
    "resolve_targets",
]
