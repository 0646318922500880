"""psrpcore events and values to vmbusops records: the reference conversion.

This is the one place where psrpcore's deserialized objects become :mod:`vmbusops.records`
types. It is complete but slow (psrpcore builds a full PowerShell object model first);
:mod:`vmbusops.psrp.decode` produces the same records straight from the CLIXML for the
common messages and falls back to this module for everything else. The two must agree
exactly, so the mapping below is the contract both implement.

Canonical value mapping
-----------------------
======================================  ==========================================================
PowerShell / psrpcore                   :data:`~vmbusops.records.Value`
======================================  ==========================================================
``$null`` (Nil)                         ``None``
Boolean (B)                             ``bool``
SByte .. UInt64 (SB By I16 .. U64)      ``int``
Single, Double (Sg Db)                  ``float``
Decimal (D)                             ``str`` of the decimal, exact (``"1.50"``)
Char (C)                                ``str`` of one character
String, Uri, XmlDocument, ScriptBlock   ``str`` (CLIXML ``_xHHHH_`` escapes decoded)
DateTime (DT)                           ``str``, ``yyyy-MM-ddTHH:mm:ss.fffffff`` then ``Z`` for a
                                        zero offset, ``+HH:MM`` for another offset, nothing for
                                        an unspecified kind (.NET's round-trip form, always
                                        seven fraction digits)
TimeSpan (TS)                           ``str``, .NET's constant form ``[-][d.]hh:mm:ss[.fffffff]``
Guid (G)                                ``str``, lower case, hyphenated
Version                                 ``str``
Byte[] (BA)                             ``bytes``
SecureString (SS)                       ``PSObjectValue(("System.Security.SecureString",
                                        "System.Object"), (), "System.Security.SecureString")``,
                                        never the content, encrypted or not
enum (psrpcore enum class, or any       ``str``, its string form (``"Gray"``, ``"ReadOnly, Hidden"``)
integer whose type names include
``System.Enum``)
other primitive with extra type         the plain primitive; the extra note properties and type
names or note properties                names are dropped
list, array, ArrayList, IEnumerable,    ``tuple`` of the items
Stack, Queue
Hashtable, dictionary                   :class:`~vmbusops.records.PSDictValue`, items in order
any other object                        :class:`~vmbusops.records.PSObjectValue`: type names as
                                        sent (psrpcore's ``Deserialized.`` prefix for types it
                                        does not know is removed), adapted then extended
                                        properties in order, the ``ToString`` form or ``None``
======================================  ==========================================================

A value that refers back to an object it is inside of is cut at the repeat: the repeated
object becomes a ``PSObjectValue`` with its type names and string form but no properties.

Records
-------
Verbose, warning and debug records keep only their message. An ErrorRecord is flattened as
:class:`~vmbusops.records.ErrorRecord` documents: the message is ``ErrorDetails.Message`` when
that is set and not empty, else the exception's ``Message``; ``exception_type`` is the
exception's first type name; ``target`` is the display text
(:func:`~vmbusops.records.value_display`) of ``TargetObject`` or ``None``. Missing text fields
become ``""``, missing numbers their record default.

A PipelineState message becomes a :class:`~vmbusops.records.PipelineStateRecord` only for
the terminal states Completed, Failed and Stopped, with the ``ExceptionAsErrorRecord`` (if
any) as its error. The non-terminal states (NotStarted, Running, Stopping, Disconnected) are
protocol bookkeeping, not records: :func:`record_from_event` returns ``None`` for them, as
for every message that is not a stream record.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import queue
import re
import uuid
from collections.abc import Iterable
from typing import Any

import psrpcore
from psrpcore.types import (
    ErrorRecord as PSErrorRecord,
)
from psrpcore.types import (
    ProgressRecordType,
    PSChar,
    PSDictBase,
    PSEnumBase,
    PSFlagBase,
    PSInvocationState,
    PSObject,
    PSSecureString,
    PSVersion,
)

from vmbusops.psrp.psrpcore_private import RemoteCommandInfo
from vmbusops.records import (
    DebugRecord,
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    ProgressRecord,
    PSDictValue,
    PSObjectValue,
    Record,
    Value,
    VerboseRecord,
    WarningRecord,
    value_display,
)

__all__ = [
    "SECURE_STRING",
    "datetime_text",
    "enum_text",
    "error_record_from_ps",
    "progress_from_ps",
    "record_from_event",
    "value_from_ps",
    "whole_text",
]

SECURE_STRING = PSObjectValue(
    type_names=("System.Security.SecureString", "System.Object"),
    to_string="System.Security.SecureString",
)
"""What every SecureString becomes: its type, never its content."""

_DESERIALIZED = "Deserialized."
_ERROR_RECORD = "System.Management.Automation.ErrorRecord"

TERMINAL_STATES: dict[int, PipelineState] = {
    int(PSInvocationState.Completed): PipelineState.COMPLETED,
    int(PSInvocationState.Failed): PipelineState.FAILED,
    int(PSInvocationState.Stopped): PipelineState.STOPPED,
}


def record_from_event(event: psrpcore.PSRPEvent[Any, Any]) -> Record | None:
    """The record a psrpcore event carries, or ``None`` if it is not a stream record."""
    if isinstance(event, psrpcore.PipelineOutputEvent):
        return OutputRecord(value=value_from_ps(event.data))
    if isinstance(event, psrpcore.ErrorRecordEvent):
        return error_record_from_ps(event.record)
    if isinstance(event, psrpcore.WarningRecordEvent):
        return WarningRecord(message=_text(event.record.Message))
    if isinstance(event, psrpcore.VerboseRecordEvent):
        return VerboseRecord(message=_text(event.record.Message))
    if isinstance(event, psrpcore.DebugRecordEvent):
        return DebugRecord(message=_text(event.record.Message))
    if isinstance(event, psrpcore.InformationRecordEvent):
        return _information_from_ps(event.record)
    if isinstance(event, psrpcore.ProgressRecordEvent):
        return progress_from_ps(event.record)
    if isinstance(event, psrpcore.PipelineStateEvent):
        state = TERMINAL_STATES.get(int(event.state))
        if state is None:
            return None
        reason = event.reason
        error = None if reason is None else error_record_from_ps(reason)
        return PipelineStateRecord(state=state, error=error)
    return None


def error_record_from_ps(record: object) -> ErrorRecord:
    """Flatten a psrpcore ErrorRecord (anything else becomes a record with its text)."""
    if (
        not isinstance(record, PSErrorRecord)
        and isinstance(record, PSObject)
        and _ERROR_RECORD in _type_names(record)
        and _prop(record, "ErrorCategory_Category") is not None
    ):
        # A subclass psrpcore has no class for (a guest's RemotingErrorRecord, relayed by
        # Invoke-Command): the same flattened properties, so read it as an ErrorRecord.
        record = PSErrorRecord.FromPSObjectForRemoting(record)
    if not isinstance(record, PSErrorRecord):
        return ErrorRecord(message=value_display(value_from_ps(record)))

    exception = _prop(record, "Exception")
    exception_type = ""
    exception_message: object = None
    invocation: object = None
    if isinstance(exception, PSObject):
        names = _type_names(exception)
        # A guest's error arrives wrapped in a RemoteException; the guest's own exception
        # type is what tells one failure from another.
        remote = _prop(exception, "SerializedRemoteException")
        if isinstance(remote, PSObject) and _type_names(remote):
            names = _type_names(remote)
        exception_type = strip_deserialized(names[0]) if names else ""
        exception_message = _prop(exception, "Message")
        # psrpcore leaves a non-extended InvocationInfo here (a RemoteException has its own).
        invocation = _prop(exception, "SerializedRemoteInvocationInfo")
    if record.InvocationInfo is not None:
        invocation = record.InvocationInfo

    details = _prop(record, "ErrorDetails")
    details_message = _prop(details, "Message") if details is not None else None
    message = details_message if details_message else exception_message

    info = _prop(record, "CategoryInfo")
    category = _prop(info, "Category") if info is not None else None
    target = _prop(record, "TargetObject")
    stack = _prop(record, "ScriptStackTrace")
    return ErrorRecord(
        message=_text(message),
        fqid=_text(_prop(record, "FullyQualifiedErrorId")),
        category=category.name if isinstance(category, enum.Enum) and category.name else "NotSpecified",
        activity=_text(_prop(info, "Activity")),
        reason=_text(_prop(info, "Reason")),
        target_name=_text(_prop(info, "TargetName")),
        target_type=_text(_prop(info, "TargetType")),
        exception_type=exception_type,
        target=None if target is None else value_display(value_from_ps(target)),
        script_stack_trace=None if stack is None else _text(stack),
        **_invocation_fields(invocation),
    )


def _invocation_fields(invocation: object) -> dict[str, Any]:
    if not isinstance(invocation, PSObject):
        return {}
    command = _prop(invocation, "MyCommand")
    if isinstance(command, RemoteCommandInfo):  # psrpcore's, from extended info
        command = command.Name
    return {
        "command_name": _text(command),
        "script_line_number": _int(_prop(invocation, "ScriptLineNumber"), 0),
        "position_message": _text(_prop(invocation, "PositionMessage")),
    }


def strip_deserialized(name: str) -> str:
    """A type name without PowerShell's ``Deserialized.`` prefix (a guest's types carry it)."""
    return name[len(_DESERIALIZED) :] if name.startswith(_DESERIALIZED) else name


def _information_from_ps(record: PSObject) -> InformationRecord:
    time_generated = _prop(record, "TimeGenerated")
    tags = _prop(record, "Tags")
    return InformationRecord(
        message_data=value_from_ps(_prop(record, "MessageData")),
        source=_text(_prop(record, "Source")),
        time_generated=datetime_text(time_generated)
        if isinstance(time_generated, datetime.datetime)
        else _text(time_generated),
        tags=() if tags is None else tuple(_text(tag) for tag in _items(tags)),
        user=_text(_prop(record, "User")),
        computer=_text(_prop(record, "Computer")),
        process_id=_int(_prop(record, "ProcessId"), 0),
        native_thread_id=_int(_prop(record, "NativeThreadId"), 0),
        managed_thread_id=_int(_prop(record, "ManagedThreadId"), 0),
    )


def progress_from_ps(record: PSObject) -> ProgressRecord:
    return ProgressRecord(
        activity=_text(_prop(record, "Activity")),
        activity_id=_int(_prop(record, "ActivityId"), 0),
        status_description=_text(_prop(record, "StatusDescription")),
        current_operation=_text(_prop(record, "CurrentOperation")),
        parent_activity_id=_int(_prop(record, "ParentActivityId"), -1),
        percent_complete=_int(_prop(record, "PercentComplete"), -1),
        seconds_remaining=_int(_prop(record, "SecondsRemaining"), -1),
        completed=_prop(record, "RecordType") == ProgressRecordType.Completed,
    )


def value_from_ps(obj: object) -> Value:
    """Convert a value psrpcore deserialized into a record :data:`~vmbusops.records.Value`."""
    return _convert(obj, set())


def _convert(obj: object, seen: set[int]) -> Value:
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, PSSecureString):
        return SECURE_STRING
    if isinstance(obj, enum.Enum):
        return enum_text(obj)
    if isinstance(obj, PSChar):
        return whole_text(chr(int(obj)))
    if isinstance(obj, int):
        if isinstance(obj, PSObject) and "System.Enum" in _type_names(obj):
            shown = obj.PSObject.to_string
            return int(obj) if shown is None else _plain(shown)
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, datetime.datetime):
        return datetime_text(obj)
    if isinstance(obj, datetime.timedelta):
        return _duration_text(obj)
    if isinstance(obj, uuid.UUID):
        return str(obj)
    if isinstance(obj, PSVersion):
        return str(obj)
    if isinstance(obj, bytes | bytearray):
        return bytes(obj)
    if isinstance(obj, str):
        return _plain(obj)

    key = id(obj)
    if key in seen:
        return _object_head(obj)
    seen.add(key)
    try:
        if isinstance(obj, dict | PSDictBase):
            return PSDictValue(tuple((_convert(k, seen), _convert(v, seen)) for k, v in obj.items()))
        if isinstance(obj, list | tuple | queue.Queue):
            return tuple(_convert(item, seen) for item in _items(obj))
        if isinstance(obj, PSObject):
            meta = obj.PSObject
            return PSObjectValue(
                type_names=_type_names(obj),
                properties=tuple(
                    (prop.name, _convert(prop.get_value(obj), seen))
                    for prop in (*meta.adapted_properties, *meta.extended_properties)
                ),
                to_string=None if meta.to_string is None else _plain(meta.to_string),
            )
    finally:
        seen.discard(key)
    return PSObjectValue(type_names=(type(obj).__qualname__,), to_string=str(obj))


def _object_head(obj: object) -> PSObjectValue:
    if isinstance(obj, PSObject):
        shown = obj.PSObject.to_string
        return PSObjectValue(type_names=_type_names(obj), to_string=None if shown is None else _plain(shown))
    return PSObjectValue(type_names=(type(obj).__qualname__,))


def enum_text(value: enum.Enum) -> str:
    """An enum's string form as PowerShell prints it: the name, or the set flags' names."""
    shown: list[enum.Enum]
    if isinstance(value, enum.Flag):
        members = [m for m in type(value).__members__.values() if m in value]
        shown = [m for m in members if m.value != 0 or len(members) == 1]
    else:
        shown = [value]
    normalise_none = isinstance(value, PSEnumBase | PSFlagBase)
    return ", ".join("None" if m.name == "none" and normalise_none else str(m.name) for m in shown)


def datetime_text(value: datetime.datetime) -> str:
    """The canonical text of a DateTime: round-trip form with seven fraction digits."""
    ticks = value.microsecond * 10 + (getattr(value, "nanosecond", 0) or 0) // 100
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{ticks:07d}"
    )
    offset = value.utcoffset()
    if offset is None:
        return text
    return text + offset_text(int(offset.total_seconds()) // 60)


def offset_text(minutes: int) -> str:
    """``Z`` for UTC, else ``+HH:MM`` / ``-HH:MM``."""
    if minutes == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _duration_text(value: datetime.timedelta) -> str:
    nanoseconds = getattr(value, "nanoseconds", 0) or 0
    ticks = ((value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds) * 10 + nanoseconds // 100
    sign = "-" if ticks < 0 else ""
    seconds, fraction = divmod(abs(ticks), 10_000_000)
    minutes, secs = divmod(seconds, 60)
    hours, mins = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    text = f"{sign}{f'{days}.' if days else ''}{hours:02d}:{mins:02d}:{secs:02d}"
    return f"{text}.{fraction:07d}" if fraction else text


def _type_names(obj: PSObject) -> tuple[str, ...]:
    names = obj.PSObject.type_names
    if type(obj).__module__.startswith("psrpcore") and all(n.startswith(_DESERIALIZED) for n in names):
        # psrpcore marks every type it has no class for as 'Deserialized.<name>'; the peer did not.
        return tuple(n[len(_DESERIALIZED) :] for n in names)
    return tuple(names)


def _items(obj: object) -> Iterable[object]:
    if isinstance(obj, queue.Queue):
        return list(obj.queue)
    if isinstance(obj, list | tuple):
        return obj
    return (obj,)


def _prop(obj: object, name: str) -> object:
    """A property's value by name (adapted first, as PowerShell looks it up), or ``None``."""
    if not isinstance(obj, PSObject):
        return None
    meta = obj.PSObject
    for prop in (*meta.adapted_properties, *meta.extended_properties):
        if prop.name == name:
            return prop.get_value(obj)
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def whole_text(value: str) -> str:
    """``value`` with each UTF-16 surrogate that has no pair made U+FFFD.

    A .NET string may hold one (``"a" + [char]0xD800`` in a guest), and CLIXML carries it as
    ``_xD800_``; psrpcore decodes it to a lone surrogate, which no UTF-8 text can hold: the
    journal, a terminal and JSON all refuse it. .NET's own UTF-8 encoder writes U+FFFD in its
    place, so a guest's console shows the same. (A CLIXML escape is the only way in: the XML is
    UTF-8, which cannot encode a surrogate.)"""
    return value if value.isascii() or _SURROGATE.search(value) is None else _SURROGATE.sub("\ufffd", value)


def _plain(value: str) -> str:
    # psrpcore's strings are str subclasses carrying a PSObject; records hold plain str, and
    # never a surrogate without its pair (psrpcore decodes "_xD800_" to one).
    return whole_text(str.__str__(value))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return _plain(value)
    return value_display(value_from_ps(value))


def _int(value: object, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    try:
        return int(str(value))
    except ValueError:
        return default
