"""Journal changes (:mod:`.changes`) as JSON objects, for a journal in another process.

A fleet agent runs a fleet job's run as a local job and forwards what each of its commits carried
(:attr:`.writer.JournalWriter.on_applied`); the controller applies the same changes to its own
journal (:meth:`.journal.Journal.apply`). Between them is a broker that is never trusted, so
:func:`change_from_json` parses strictly: anything but the exact shape :func:`change_to_json`
writes raises ValueError with what was wrong, before a single field reaches SQL.

The shape: ``{"t": "job" | "run" | "step", <field>: <value>, ...}`` with the dataclass's field
names; a state is its value (``"in-progress"``); a field that is None is left out, and so is a
step change's ``clear`` when it is false. :func:`change_to_json` with ``ids=False`` leaves the
job or run id out too (the message that carries the change names the run); the reader then
gives it to :func:`change_from_json` (``run_id=`` / ``job_id=``), usually the run's id in its own
journal.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from vmbusops.engine.changes import Change, CheckpointChange, JobChange, RunChange, StepChange
from vmbusops.engine.states import State

#: What SQLite can store in an INTEGER column.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1

_TYPES: Final[Mapping[str, type[JobChange] | type[RunChange] | type[StepChange]]] = {
    "job": JobChange,
    "run": RunChange,
    "step": StepChange,
}
_KIND_OF: Final = {cls: kind for kind, cls in _TYPES.items()}
_STATES: Final = {s.value: s for s in State}


def change_to_json(change: Change, *, ids: bool = True) -> dict[str, Any]:
    """``change`` as a JSON-ready dict (see the module's docstring); ``ids=False`` leaves its
    job or run id out."""
    if isinstance(change, CheckpointChange):
        raise TypeError("a checkpoint's phases stay in the journal of the host that took it")
    out: dict[str, Any] = {"t": _KIND_OF[type(change)]}
    for f in dataclasses.fields(change):
        value = getattr(change, f.name)
        if value is None or (f.name == "clear" and value is False):
            continue
        if not ids and f.name in ("job_id", "run_id"):
            continue
        if isinstance(value, State):
            value = value.value
        elif isinstance(value, list):
            value = list(value)
        out[f.name] = value
    return out


def change_from_json(data: object, *, run_id: int | None = None, job_id: int | None = None) -> Change:
    """The change ``data`` (parsed JSON) describes; ValueError, saying what was wrong, for anything
    :func:`change_to_json` would not have written.

    ``run_id`` (a run or step change) or ``job_id`` (a job change), when given, is the change's
    id, and ``data`` must then not carry one of its own; otherwise it must. An id given for the
    other kind of change is not used.
    """
    if not isinstance(data, dict):
        raise ValueError(f"a journal change must be a JSON object, not {_json_type(data)}")  # noqa: TRY004 - one error type for every bad message
    kind = data.get("t")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"a journal change has the type {kind!r}; one of job, run, step expected")
    what = f"a {kind} change"
    parsers = _FIELDS[cls]
    given = {"job_id": job_id} if cls is JobChange else {"run_id": run_id}
    unknown = sorted(str(k) for k in data if k != "t" and k not in parsers)
    if unknown:
        raise ValueError(f"{what} has unknown field(s): {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, (parse, required) in parsers.items():
        if name in given and given[name] is not None:
            if name in data:
                raise ValueError(f"{what} must not carry {name}: the message that carries it names it")
            values[name] = given[name]
            continue
        if name not in data:
            if required:
                raise ValueError(f"{what} has no {name}")
            values[name] = False if name == "clear" else None
            continue
        values[name] = parse(what, name, data[name])
    return cls(**values)


# ------------------------------------------------------------------ field parsers
Parser = Callable[[str, str, object], Any]


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "an array"
        case dict():
            return "an object"
    return type(value).__name__


def _whole(low: int) -> Parser:
    def parse(what: str, name: str, value: object) -> int:
        if type(value) is not int or value < low:
            bound = f" >= {low}" if low > _INT_MIN else ""
            raise ValueError(f"{what}: {name} must be a whole number{bound}, not {value!r}")
        if value > _INT_MAX:
            raise ValueError(f"{what}: {name} is too large ({value})")
        return value

    return parse


def _time(what: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{what}: {name} must be a finite number, not {value!r}")
    return float(value)


def _text(what: str, name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what}: {name} must be a string, not {_json_type(value)}")  # noqa: TRY004 - as above
    return value


def _state(what: str, name: str, value: object) -> State:
    state = _STATES.get(value) if isinstance(value, str) else None
    if state is None:
        allowed = ", ".join(_STATES)
        raise ValueError(f"{what}: {name} must be one of {allowed}, not {value!r}")
    return state


def _lines(what: str, name: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise ValueError(f"{what}: {name} must be an array of strings")
    return list(value)


def _flag(what: str, name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: {name} must be true or false, not {value!r}")  # noqa: TRY004 - as above
    return value


_ID: Final = _whole(1)
_COUNT: Final = _whole(0)

#: Per change type, each field's parser and whether it must be there (a field that may be None
#: is left out when it is). Checked against the dataclasses by the tests.
_FIELDS: Final[Mapping[type, Mapping[str, tuple[Parser, bool]]]] = {
    JobChange: {
        "job_id": (_ID, True),
        "state": (_state, True),
        "started_at": (_time, False),
        "finished_at": (_time, False),
        "error": (_text, False),
    },
    RunChange: {
        "run_id": (_ID, True),
        "state": (_state, False),
        "current_step": (_text, False),
        "records": (_COUNT, True),
        "error": (_text, False),
        "code": (_text, False),
        "started_at": (_time, False),
        "finished_at": (_time, False),
        "excerpt": (_lines, False),
        "waiting": (_text, False),
    },
    StepChange: {
        "run_id": (_ID, True),
        "index": (_COUNT, True),
        "state": (_state, True),
        "attempts": (_COUNT, False),
        "started_at": (_time, False),
        "finished_at": (_time, False),
        "error": (_text, False),
        "code": (_text, False),
        "exit_code": (_whole(_INT_MIN), False),
        "clear": (_flag, False),
    },
}

__all__ = ["change_from_json", "change_to_json"]
