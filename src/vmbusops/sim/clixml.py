"""The simulator's wire format: CLIXML for its records and PSRP messages and fragments around them.

Why not psrpcore's serializer for everything: it builds an ElementTree per record, about 0.1-0.2 ms
each, which caps a stream of verbose lines at a few thousand records a second. The records a
guest writes most (verbose / warning / debug / information strings, string and integer output) have
a fixed shape, and so do objects whose properties are all primitives (Get-VM's VMs), so their
CLIXML is rendered from templates. The templates are cut out of psrpcore's own serialization of a
prototype (at import time; an object's on the first use of its shape), so they cannot drift from
it; the tests check byte-for-byte equality with psrpcore for many inputs. Everything else (nested objects, error
records, progress) goes through psrpcore.

Strings follow psrpcore's escaping exactly: ``_x`` is escaped first, then C0/C1 controls and
surrogates become ``_xHHHH_``, then XML's ``& < >``.
"""

from __future__ import annotations

import datetime
import os
import re
import struct
import threading
import uuid
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

from psrpcore import PSRemotingCrypto
from psrpcore.types import (
    DebugRecord,
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    InformationRecordMsg,
    NETException,
    PSDateTime,
    PSObject,
    PSRPMessageType,
    VerboseRecord,
    WarningRecord,
    add_note_property,
    serialize,
)

from vmbusops.sim.streams import SimError, SimObject

EMPTY_GUID = uuid.UUID(int=0)
# PowerShell's default PSRP fragment size; bigger messages are split.
MAX_FRAGMENT = 32 * 1024
# psrpcore (as the server) marks messages as going to the client.
_DESTINATION_CLIENT = 1

# The same expressions psrpcore uses, so the escaping is identical (including its ranges).
_ESCAPE_ESCAPE = re.compile("(?i)_(x)")
_ESCAPE = re.compile("[\u0000-\u001f\u007f-\u009f\ud800-\ud8ff\udc00-\udfff\U00010000-\U0010ffff]")
_NEEDS_ESCAPE = re.compile(
    "(?i)_x|[\u0000-\u001f\u007f-\u009f\ud800-\ud8ff\udc00-\udfff\U00010000-\U0010ffff]"
)


def _escape_char(match: re.Match[str]) -> str:
    raw = match.group(0).encode("utf-16-be", errors="surrogatepass").hex().upper()
    return "".join(f"_x{raw[i : i + 4]}_" for i in range(0, len(raw), 4))


def clixml_text(value: str) -> bytes:
    """A string's CLIXML element text, encoded, as psrpcore writes it."""
    if _NEEDS_ESCAPE.search(value):
        value = _ESCAPE_ESCAPE.sub("_x005F_\\1", value)
        value = _ESCAPE.sub(_escape_char, value)
    if "&" in value or "<" in value or ">" in value:
        value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return value.encode("utf-8")


def clixml_datetime(value: datetime.datetime) -> bytes:
    """A naive or UTC datetime as psrpcore serializes it (microseconds only when non-zero)."""
    if value.tzinfo is None and value.year >= 1000:
        # Every information record's time (now, naive): what strftime writes below, formatted
        # directly (strftime's %Y does not pad years before 1000, so those take the long way).
        v = value
        text = f"{v.year}-{v.month:02d}-{v.day:02d}T{v.hour:02d}:{v.minute:02d}:{v.second:02d}"
        return (f"{text}.{v.microsecond:06d}" if v.microsecond else text).encode("ascii")
    fraction = value.strftime(".%f") if value.microsecond else ""
    zone = "Z" if value.tzinfo == datetime.UTC else ""
    if value.tzinfo not in (None, datetime.UTC):
        offset = value.strftime("%z")
        zone = f"{offset[:3]}:{offset[3:]}"
    return value.strftime(f"%Y-%m-%dT%H:%M:%S{fraction}{zone}").encode("ascii")


def psrpcore_xml(value: Any) -> bytes:
    """psrpcore's own serialization of a value (the slow path, and the reference for templates)."""
    element = serialize(value, PSRemotingCrypto())
    xml: bytes = ElementTree.tostring(element, encoding="utf-8", method="xml")
    return xml


class _Template:
    """CLIXML bytes with holes, cut from a serialized prototype at its sentinel values."""

    def __init__(self, xml: bytes, slots: dict[bytes, str]) -> None:
        marks: list[tuple[int, bytes, str]] = []
        for sentinel, name in slots.items():
            at = xml.find(sentinel)
            if at < 0 or xml.find(sentinel, at + 1) >= 0:
                raise RuntimeError(f"template sentinel {sentinel!r} must occur exactly once")
            marks.append((at, sentinel, name))
        marks.sort()
        self.literals: list[bytes] = []
        self.names: list[str] = []
        pos = 0
        for at, sentinel, name in marks:
            self.literals.append(xml[pos:at])
            self.names.append(name)
            pos = at + len(sentinel)
        self.literals.append(xml[pos:])

    def render(self, values: dict[str, bytes]) -> bytes:
        out = [self.literals[0]]
        for name, literal in zip(self.names, self.literals[1:], strict=True):
            out.append(values[name])
            out.append(literal)
        return b"".join(out)


_MSG = "VMBUSOPSSIMMESSAGESLOT"


def _informational_template(cls: type[PSObject]) -> _Template:
    proto = cls(Message=_MSG, InvocationInfo=None, PipelineIterationInfo=None)
    proto.serialize_extended_info = False
    return _Template(psrpcore_xml(proto), {_MSG.encode(): "msg"})


_VERBOSE = _informational_template(VerboseRecord)
_WARNING = _informational_template(WarningRecord)
_DEBUG = _informational_template(DebugRecord)

_SENTINEL_TIME = PSDateTime(1999, 9, 9, 9, 9, 9, 999999)
_TAG = "VMBUSOPSSIMTAGSLOT"


def _information_template(tags: list[str]) -> _Template:
    slots = {
        _MSG.encode(): "msg",
        b"VMBUSOPSSIMSOURCESLOT": "source",
        clixml_datetime(_SENTINEL_TIME): "time",
        b"VMBUSOPSSIMUSERSLOT": "user",
        b"VMBUSOPSSIMCOMPUTERSLOT": "computer",
        b"987654301": "pid",
        b"987654302": "ntid",
        b"987654303": "mtid",
    }
    if tags:
        slots[_TAG.encode()] = "tag"
    return _Template(
        psrpcore_xml(
            InformationRecordMsg(
                MessageData=_MSG,
                Source="VMBUSOPSSIMSOURCESLOT",
                TimeGenerated=_SENTINEL_TIME,
                Tags=tags,
                User="VMBUSOPSSIMUSERSLOT",
                Computer="VMBUSOPSSIMCOMPUTERSLOT",
                ProcessId=987654301,
                NativeThreadId=987654302,
                ManagedThreadId=987654303,
            )
        ),
        slots,
    )


_INFORMATION = _information_template([])
# One tag: the guest invoker's step markers, two per step, are the common case.
_INFORMATION_TAGGED = _information_template([_TAG])


def _informational_xml(template: _Template, cls: type[PSObject], message: str) -> bytes:
    if not message:
        # ElementTree writes an empty element as ``<S N="..." />``; rare, so let psrpcore do it.
        record = cls(Message=message, InvocationInfo=None, PipelineIterationInfo=None)
        record.serialize_extended_info = False
        return psrpcore_xml(record)
    return template.render({"msg": clixml_text(message)})


def verbose_xml(message: str) -> bytes:
    return _informational_xml(_VERBOSE, VerboseRecord, message)


def warning_xml(message: str) -> bytes:
    return _informational_xml(_WARNING, WarningRecord, message)


def debug_xml(message: str) -> bytes:
    return _informational_xml(_DEBUG, DebugRecord, message)


def information_xml(
    message: str,
    *,
    source: str,
    time_generated: datetime.datetime,
    user: str,
    computer: str,
    process_id: int,
    native_thread_id: int,
    managed_thread_id: int = 0,
    tag: str | None = None,
) -> bytes:
    """An InformationRecord whose message data is a string and which has no tag or one."""
    if not (message and source and user and computer) or tag == "":
        return psrpcore_xml(
            InformationRecordMsg(
                MessageData=message,
                Source=source,
                TimeGenerated=time_generated,
                Tags=[tag] if tag is not None else [],
                User=user,
                Computer=computer,
                ProcessId=process_id,
                NativeThreadId=native_thread_id,
                ManagedThreadId=managed_thread_id,
            )
        )
    template = _INFORMATION if tag is None else _INFORMATION_TAGGED
    return template.render(
        {
            "tag": clixml_text(tag or ""),
            "msg": clixml_text(message),
            "source": clixml_text(source),
            "time": clixml_datetime(time_generated),
            "user": clixml_text(user),
            "computer": clixml_text(computer),
            "pid": str(process_id).encode(),
            "ntid": str(native_thread_id).encode(),
            "mtid": str(managed_thread_id).encode(),
        }
    )


# A void host call with one string, byte for byte as pwsh 7.6.9 serializes it (psrpcore orders
# the attributes and elements otherwise): what PowerShell sends after a verbose, warning or debug
# record when the client declared a UI.
_HOST_LINE = (
    b'<Obj RefId="0"><MS><I64 N="ci">-100</I64><Obj N="mi" RefId="1"><TN RefId="0">'
    b"<T>System.Management.Automation.Remoting.RemoteHostMethodId</T><T>System.Enum</T>"
    b"<T>System.ValueType</T><T>System.Object</T></TN><ToString>%s</ToString>"
    b'<I32>%d</I32></Obj><Obj N="mp" RefId="2"><TN RefId="1"><T>System.Collections.ArrayList</T>'
    b"<T>System.Object</T></TN><LST>%s</LST></Obj></MS></Obj>"
)


def host_line_xml(method_name: str, method_id: int, text: str) -> bytes:
    """A void one-string host call (WriteVerboseLine and its kind), in pwsh's own bytes."""
    item = b"<S>" + clixml_text(text) + b"</S>" if text else b"<S />"
    return _HOST_LINE % (method_name.encode("ascii"), method_id, item)


_INT32 = range(-(2**31), 2**31)
_INT64 = range(-(2**63), 2**63)


def output_xml(value: Any) -> bytes:
    """CLIXML of one output object; primitives and flat objects on the fast path, the rest through
    psrpcore."""
    if type(value) is str:
        return b"<S>" + clixml_text(value) + b"</S>" if value else b"<S />"
    if type(value) is bool:
        return b"<B>true</B>" if value else b"<B>false</B>"
    if type(value) is int:
        if value in _INT32:
            return b"<I32>%d</I32>" % value
        if value in _INT64:
            return b"<I64>%d</I64>" % value
    if type(value) is SimObject:
        flat = _flat_xml(value)
        if flat is not None:
            return flat
    return psrpcore_xml(to_psobject(value))


# Objects whose properties are all strings, integers, booleans or null (Get-VM's VMs, Get-Service's
# services, ...): one template per shape (type names, property names and kinds), cut from
# psrpcore's serialization of a prototype of that shape. A listing of 500 VMs is 1000 such objects.
_FLAT_TEXT = "VMBUSOPSSIMPROP%03dSLOT"
_FLAT_TO_STRING = "VMBUSOPSSIMTOSTRINGSLOT"
_FLAT_I32 = 987_650_000
_FLAT_I64 = 98_765_000_000_000
_FLAT_SHAPES_MAX = 256
_flat_templates: dict[tuple[Any, ...], _Template | None] = {}


def _flat_kind(prop: Any) -> Any:
    """How a property shapes its element: "S" (a string with text), "I32"/"I64", or the value itself
    (an empty string, a boolean, null: nothing to fill in). ``...`` when it is not flat."""
    kind = type(prop)
    if kind is str:
        return "S" if prop else ""
    if kind is int:
        return "I32" if prop in _INT32 else "I64" if prop in _INT64 else ...
    if kind is bool or prop is None:
        return prop
    return ...


def _flat_xml(value: SimObject) -> bytes | None:
    kinds = tuple(_flat_kind(prop) for _, prop in value.properties)
    if ... in kinds:
        return None
    to_string = value.to_string
    if to_string and _NEEDS_ESCAPE.search(to_string):
        return None  # psrpcore writes a ToString's control characters raw: its way, on its path
    shape = (value.type_names, tuple(n for n, _ in value.properties), kinds, _flat_kind(to_string))
    template = _flat_templates.get(shape, ...)
    if template is ...:
        if len(_flat_templates) >= _FLAT_SHAPES_MAX:
            return None
        template = _flat_templates[shape] = _flat_template(value, kinds)
    if template is None:
        return None
    fill: dict[str, bytes] = {}
    for index, ((_, prop), kind) in enumerate(zip(value.properties, kinds, strict=True)):
        if kind == "S":
            fill[str(index)] = clixml_text(prop)
        elif kind in ("I32", "I64"):
            fill[str(index)] = b"%d" % prop
    if to_string:
        fill["to_string"] = clixml_text(to_string)
    return template.render(fill)


def _flat_template(value: SimObject, kinds: tuple[Any, ...]) -> _Template | None:
    """The template for ``value``'s shape, or None when a sentinel does not come out once."""
    props: list[tuple[str, Any]] = []
    slots: dict[bytes, str] = {}
    for index, ((name, prop), kind) in enumerate(zip(value.properties, kinds, strict=True)):
        sentinel: Any = prop
        if kind == "S":
            sentinel = _FLAT_TEXT % index
        elif kind == "I32":
            sentinel = _FLAT_I32 + index
        elif kind == "I64":
            sentinel = _FLAT_I64 + index
        if sentinel is not prop:
            slots[str(sentinel).encode()] = str(index)
        props.append((name, sentinel))
    to_string = value.to_string
    if to_string:
        to_string = _FLAT_TO_STRING
        slots[_FLAT_TO_STRING.encode()] = "to_string"
    proto = SimObject(value.type_names, tuple(props), to_string)
    try:
        return _Template(psrpcore_xml(to_psobject(proto)), slots)
    except RuntimeError:
        return None


def to_psobject(value: Any) -> Any:
    """A simulator value as something psrpcore serializes the way PowerShell would."""
    if isinstance(value, SimObject):
        obj = PSObject()
        obj.PSObject.type_names = list(value.type_names)
        if value.to_string is not None:
            obj.PSObject.to_string = value.to_string
        for name, prop in value.properties:
            add_note_property(obj, name, to_psobject(prop))
        return obj
    if isinstance(value, list | tuple):
        return [to_psobject(v) for v in value]
    if isinstance(value, dict):
        return {k: to_psobject(v) for k, v in value.items()}
    return value


def to_error_record(error: SimError) -> ErrorRecord:
    exception = NETException(Message=error.message, HResult=error.hresult)
    chain = [error.exception_type]
    if error.exception_type != "System.Exception":
        chain.append("System.SystemException")
    chain.extend(exception.PSTypeNames)
    # Keep the .NET type chain in order without repeats, as PowerShell sends it.
    exception.PSObject.type_names = list(dict.fromkeys(chain))
    try:
        category = ErrorCategory[error.category]
    except KeyError:
        category = ErrorCategory.NotSpecified
    target = error.target_object
    return ErrorRecord(
        Exception=exception,
        CategoryInfo=ErrorCategoryInfo(
            Category=category,
            Activity=error.activity or None,
            Reason=error.reason,
            TargetName=error.target_name or None,
            TargetType=type_name_of(target),
        ),
        TargetObject=to_psobject(target),
        FullyQualifiedErrorId=error.fqid,
    )


def type_name_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Int32"
    if isinstance(value, str):
        return "String"
    if isinstance(value, SimObject):
        return value.type_names[0].rsplit(".", 1)[-1]
    return "Object"


_TO_STRING = re.compile(rb"<ToString>([^<]*)</ToString>")


def _escape_to_string(match: re.Match[bytes]) -> bytes:
    text = match.group(1).decode("utf-8")
    if _NEEDS_ESCAPE.search(text):
        text = _ESCAPE.sub(_escape_char, _ESCAPE_ESCAPE.sub("_x005F_\\1", text))
    return b"<ToString>" + text.encode("utf-8") + b"</ToString>"


def error_xml(error: SimError) -> bytes:
    # psrpcore writes an object's <ToString> raw: a control character in the message (an ESC a
    # guest wrote) would make the message XML no client can parse. PowerShell escapes it as
    # _xHHHH_, as in every other string.
    record = to_error_record(error)
    record.serialize_extended_info = False
    return _TO_STRING.sub(_escape_to_string, psrpcore_xml(record))


# ---- PSRP messages and fragments ------------------------------------------------------------


def psrp_message(message_type: PSRPMessageType, data: bytes, rpid: uuid.UUID, pid: uuid.UUID | None) -> bytes:
    """MS-PSRP 2.2.1: destination, message type, runspace pool id, pipeline id, then the data."""
    return b"".join(
        (
            struct.pack("<iI", _DESTINATION_CLIENT, message_type.value),
            rpid.bytes_le,
            (pid or EMPTY_GUID).bytes_le,
            data,
        )
    )


def fragments(object_id: int, message: bytes, max_fragment: int = MAX_FRAGMENT) -> Iterator[bytes]:
    """MS-PSRP 2.2.4: the message split into fragments of at most ``max_fragment`` data bytes."""
    total = len(message)
    if total <= max_fragment:
        yield struct.pack(">QQBI", object_id, 0, 0x3, total) + message
        return
    for fragment_id, start in enumerate(range(0, total, max_fragment)):
        chunk = message[start : start + max_fragment]
        flags = (0x1 if start == 0 else 0) | (0x2 if start + max_fragment >= total else 0)
        yield struct.pack(">QQBI", object_id, fragment_id, flags, len(chunk)) + chunk


def native_thread_id() -> int:
    return threading.get_native_id()


PROCESS_ID = os.getpid()
