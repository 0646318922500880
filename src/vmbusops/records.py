"""PowerShell stream records as frozen dataclasses.

A pipeline produces, in order, records of seven streams (output, error, warning, verbose, debug,
information, progress) and then one final state. The PSRP client decodes each PSRP message into
exactly one of the classes below; nothing above the ``psrp`` layer ever sees psrpcore's objects.

Values inside records (an output object, an information record's message data) are plain,
immutable Python data: ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``tuple`` (a
PowerShell list or array), :class:`PSDictValue` (a hashtable) or :class:`PSObjectValue` (any
other object, as its type names, its properties and its string form). That keeps records
hashable, comparable and serialisable to JSON without a PowerShell type system.

Records do not know which VM or step they came from; :class:`GuestRecord` carries them with the
VM, the step, a per-run sequence number and the time the agent received them.
"""

from __future__ import annotations

import base64
import enum
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any, ClassVar, TypeAlias

from vmbusops.times import iso_time


class Stream(enum.StrEnum):
    OUTPUT = "output"
    ERROR = "error"
    WARNING = "warning"
    VERBOSE = "verbose"
    DEBUG = "debug"
    INFORMATION = "information"
    PROGRESS = "progress"
    STATE = "state"


class PipelineState(enum.StrEnum):
    """Final states of a pipeline (PowerShell's PSInvocationState, terminal ones only)."""

    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"


@dataclass(frozen=True, slots=True)
class PSObjectValue:
    """A PowerShell object that is not a primitive: its type names, properties, string form."""

    type_names: tuple[str, ...]
    properties: tuple[tuple[str, Value], ...] = ()
    to_string: str | None = None

    def get(self, name: str, default: Value = None) -> Value:
        for key, value in self.properties:
            if key == name:
                return value
        return default


@dataclass(frozen=True, slots=True)
class PSDictValue:
    """A PowerShell hashtable / dictionary, order kept as received."""

    items: tuple[tuple[Value, Value], ...] = ()


Value: TypeAlias = (
    None | bool | int | float | str | bytes | tuple["Value", ...] | PSDictValue | PSObjectValue
)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputRecord:
    stream: ClassVar[Stream] = Stream.OUTPUT
    value: Value


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRecord:
    """A PowerShell ErrorRecord, flattened to what an operator and a retry policy need."""

    stream: ClassVar[Stream] = Stream.ERROR
    message: str
    fqid: str = ""
    category: str = "NotSpecified"
    activity: str = ""
    reason: str = ""
    target_name: str = ""
    target_type: str = ""
    exception_type: str = ""
    target: str | None = None
    script_stack_trace: str | None = None
    #: Where it happened, when PowerShell sent its InvocationInfo (for a guest's error, the
    #: guest's command): the command, its line in the script, and PowerShell's "At line:..." text.
    command_name: str = ""
    script_line_number: int = 0
    position_message: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class WarningRecord:
    stream: ClassVar[Stream] = Stream.WARNING
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class VerboseRecord:
    stream: ClassVar[Stream] = Stream.VERBOSE
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DebugRecord:
    stream: ClassVar[Stream] = Stream.DEBUG
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InformationRecord:
    stream: ClassVar[Stream] = Stream.INFORMATION
    message_data: Value
    source: str = ""
    time_generated: str = ""
    tags: tuple[str, ...] = ()
    user: str = ""
    computer: str = ""
    process_id: int = 0
    native_thread_id: int = 0
    managed_thread_id: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgressRecord:
    stream: ClassVar[Stream] = Stream.PROGRESS
    activity: str
    activity_id: int = 0
    status_description: str = ""
    current_operation: str = ""
    parent_activity_id: int = -1
    percent_complete: int = -1
    seconds_remaining: int = -1
    completed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineStateRecord:
    """The last record of every pipeline."""

    stream: ClassVar[Stream] = Stream.STATE
    state: PipelineState
    error: ErrorRecord | None = None
    #: The pipeline's exit code: the N of a top-level ``exit N`` (PowerShell's SetShouldExit host
    #: call) or, for a guest invocation, the exit code of the last step that ended (see
    #: ``guestops.invoker``); None when there is none.
    exit_code: int | None = None


Record: TypeAlias = (
    OutputRecord
    | ErrorRecord
    | WarningRecord
    | VerboseRecord
    | DebugRecord
    | InformationRecord
    | ProgressRecord
    | PipelineStateRecord
)


@dataclass(frozen=True, slots=True, kw_only=True)
class GuestRecord:
    """A record as the agent received it from one guest."""

    vm: str
    seq: int
    time: float
    record: Record
    step: str | None = None

    @property
    def stream(self) -> Stream:
        return self.record.stream


def value_to_json(value: Value) -> Any:
    """A JSON-ready form of a record value (bytes become base64 text)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return [value_to_json(v) for v in value]
    if isinstance(value, PSDictValue):
        return {"$dict": [[value_to_json(k), value_to_json(v)] for k, v in value.items]}
    return {
        "$type": list(value.type_names),
        "properties": {k: value_to_json(v) for k, v in value.properties},
        "string": value.to_string,
    }


def value_from_json(obj: Any) -> Value:
    """The value :func:`value_to_json` made, back again (as the journal gives it)."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list):
        return tuple(value_from_json(v) for v in obj)
    if isinstance(obj, dict):
        if "$bytes" in obj:
            return base64.b64decode(obj["$bytes"])
        if "$dict" in obj:
            return PSDictValue(tuple((value_from_json(k), value_from_json(v)) for k, v in obj["$dict"]))
        if "$type" in obj:
            return PSObjectValue(
                tuple(obj["$type"]),
                tuple((k, value_from_json(v)) for k, v in (obj.get("properties") or {}).items()),
                obj.get("string"),
            )
    return str(obj)


def record_to_json(record: Record) -> dict[str, Any]:
    """The record's own fields as a JSON-ready dict, with ``stream`` first."""
    out: dict[str, Any] = {"stream": record.stream.value}
    for name in record.__dataclass_fields__:
        if name != "stream":
            out[name] = _field_to_json(name, getattr(record, name))
    return out


def _field_to_json(name: str, value: Any) -> Any:
    if isinstance(value, ErrorRecord):
        return record_to_json(value)
    if isinstance(value, enum.Enum):
        return value.value
    if name in ("value", "message_data"):
        return value_to_json(value)
    if isinstance(value, tuple):
        return list(value)
    return value


#: The json module's own string escaper (its C one when built): what ``json.dumps`` writes for a
#: ``str`` with ``ensure_ascii=False``.
_json_string: Callable[[str], str] = encode_basestring
_json_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def record_json(record: Record) -> str:
    """``json.dumps(record_to_json(record))``, compact and non-ASCII kept: a record as the journal stores it.

    The same text, made without the dict: a journaled flood of output spends its CPU here. Each
    field's text is made on its own, a string by json's own escaper and any other value by
    ``json.dumps`` of what :func:`record_to_json` gives for it, so the text cannot differ.
    """
    return RECORD_JSON[type(record)](record)


def _field_json(name: str, value: Any) -> str:
    if type(value) is str:
        return _json_string(value)
    if value is None:
        return "null"
    if type(value) is int:
        return int.__repr__(value)
    if type(value) is bool:
        return "true" if value else "false"
    return _json_dumps(_field_to_json(name, value))


def _record_json_of(cls: type[Any]) -> Callable[[Any], str]:
    """The :func:`record_json` of one record class: its stream and field keys written once."""
    head = '{"stream":' + _json_string(cls.stream.value)
    fields = [(f",{_json_string(name)}:", name) for name in cls.__dataclass_fields__ if name != "stream"]
    if len(fields) == 1:  # output, warning, verbose, debug: the records a flood is made of
        ((key, name),) = fields
        head += key
        get = operator.attrgetter(name)

        def one_field(record: Any) -> str:
            value = get(record)
            return f"{head}{_json_string(value) if type(value) is str else _field_json(name, value)}}}"

        return one_field

    def many_fields(record: Any) -> str:
        parts = [head]
        for key, name in fields:
            parts += (key, _field_json(name, getattr(record, name)))
        parts.append("}")
        return "".join(parts)

    return many_fields


#: :func:`record_json` by record class (a loop over many records looks it up itself).
RECORD_JSON: dict[type[Any], Callable[[Any], str]] = {
    cls: _record_json_of(cls)
    for cls in (
        OutputRecord,
        ErrorRecord,
        WarningRecord,
        VerboseRecord,
        DebugRecord,
        InformationRecord,
        ProgressRecord,
        PipelineStateRecord,
    )
}


#: Each record class's stream as plain text (``cls.stream.value``, without an Enum lookup): the
#: journal's ``stream`` column, looked up once per journaled record.
STREAM_TEXT: dict[type[Any], str] = {cls: cls.stream.value for cls in RECORD_JSON}


def guest_record_to_json(rec: GuestRecord) -> dict[str, Any]:
    """One NDJSON line's object: ``vm``, ``event`` (``record``), ``stream``, ``seq``, ``time`` (ISO
    8601 UTC), the ``step`` if any, then the record's fields: the keys ``logs --json`` and the API
    give a journaled record."""
    body = record_to_json(rec.record)
    out: dict[str, Any] = {
        "vm": rec.vm, "event": "record", "stream": body.pop("stream"), "seq": rec.seq, "time": iso_time(rec.time)
    }
    if rec.step is not None:
        out["step"] = rec.step
    out.update(body)
    return out


def display_text(record: Record) -> str:
    """The one-line text an operator reads for a record."""
    match record:
        case OutputRecord(value=value):
            return value_display(value)
        case ErrorRecord():
            return record.message
        case WarningRecord() | VerboseRecord() | DebugRecord():
            return record.message
        case InformationRecord(message_data=data):
            return value_display(data)
        case ProgressRecord():
            return progress_text(
                record.activity, record.status_description, record.percent_complete, completed=record.completed
            )
        case PipelineStateRecord(state=state, error=error):
            return state.value if error is None else f"{state.value}: {error.message}"


def progress_text(activity: str, status: str, percent: int, *, completed: bool = False) -> str:
    """A progress record's line: ``activity: status 40%``, ``(completed)`` at its end."""
    pct = f" {percent}%" if percent >= 0 else ""
    shown = f": {status}" if status else ""
    done = " (completed)" if completed else ""
    return f"{activity}{shown}{pct}{done}"


def value_display(value: Value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return " ".join(value_display(v) for v in value)
    if isinstance(value, PSDictValue):
        return "; ".join(f"{value_display(k)}={value_display(v)}" for k, v in value.items)
    # Like PowerShell's formatter: an object whose ToString is only its type name (a
    # ServiceController, a hotfix) is shown by its properties instead.
    if value.to_string is not None and value.to_string not in value.type_names:
        return value.to_string
    if not value.properties:
        return value.to_string or ""
    return "@{" + "; ".join(f"{k}={value_display(v)}" for k, v in value.properties) + "}"
