"""Fast decoding of the common PSRP stream messages straight from their CLIXML.

Theory of operation
-------------------
psrpcore turns every message into a full PowerShell object model (``deserialize``) and only
then into an event; for a verbose line that costs ~0.2 ms, nearly all of it object
construction. A guest streaming DSC output sends thousands of such lines, so
:func:`fast_decode` builds the :mod:`vmbusops.records` record directly from the message
body, in two tiers:

1. *Exact shapes*: one anchored regular expression per byte-for-byte shape that PowerShell
   and psrpcore write for the hottest messages (verbose/warning/debug records without
   invocation info, progress records, primitive pipeline output). Only the text slots vary, and each slot is
   checked to be plain XML character data (no markup, no character references, no CR, no
   character XML forbids) before its five predefined entities and the CLIXML ``_xHHHH_``
   escapes are decoded.
2. *Element walk*: everything else parses with :func:`xml.etree.ElementTree.fromstring`
   (the parser psrpcore itself uses, so XML semantics are identical) and reads only the
   properties the record needs: information, progress, error and pipeline-state records,
   records with invocation info, output of objects, lists and hashtables.

Both tiers are strict. Anything they do not handle exactly -- a ``<Ref>`` to resolve, a
SecureString, a type psrpcore rehydrates into a class of its own, duplicate property names,
a malformed number, a non-terminal pipeline state -- makes :func:`fast_decode` return
``None`` and the caller falls back to psrpcore and :func:`~vmbusops.psrp.convert.record_from_event`.
The contract, enforced by the tests, is that a non-``None`` result always equals what that
slow path produces (see :mod:`vmbusops.psrp.convert` for the mapping).
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import re
from collections.abc import Callable
from xml.etree import ElementTree

from psrpcore.types import (
    ErrorCategory,
    HostMethodIdentifier,
    ProgressRecordType,
    PSCustomObject,
    PSRPMessageType,
)

from vmbusops.psrp.convert import TERMINAL_STATES, enum_text, offset_text, strip_deserialized
from vmbusops.psrp.psrpcore_private import REHYDRATED_TYPES
from vmbusops.records import (
    DebugRecord,
    ErrorRecord,
    InformationRecord,
    OutputRecord,
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

__all__ = ["clixml_unescape", "fast_decode", "fast_host_line"]


class _Fallback(Exception):
    """The message is not one this module decodes exactly; psrpcore must."""


def fast_decode(message_type: PSRPMessageType, data: bytes) -> Record | None:
    """The record in one PSRP message body, or ``None`` to fall back to psrpcore.

    ``data`` is the raw CLIXML of the message (what psrpcore hands to ElementTree). ``None``
    means "not decoded here", never "no record": the caller must then run psrpcore's path.
    """
    decoder = _DECODERS.get(message_type)
    if decoder is None:
        return None
    try:
        return decoder(data)
    except (_Fallback, ElementTree.ParseError, ValueError, KeyError, IndexError):
        return None


# -- text ---------------------------------------------------------------------------------------

# CLIXML escapes a character as _xHHHH_ (UTF-16 code units). psrpcore decodes on the UTF-16-BE
# bytes of the string, so a match can also start in the middle of a character; that needs
# U+5F00 ('_' as a high byte), and with neither that nor '_x' present nothing can change.
_CLIXML_ESCAPE = re.compile(rb"\x00_\x00x((?:\x00[a-fA-F0-9]){4})\x00_")


def _unhex(m: re.Match[bytes]) -> bytes:
    return bytes.fromhex(m.group(1).decode("utf-16-be"))


def clixml_unescape(value: str) -> str:
    """Decode CLIXML ``_xHHHH_`` escapes exactly as psrpcore does."""
    if "_x" not in value and "\u5f00" not in value:
        return value
    raw = _CLIXML_ESCAPE.sub(_unhex, value.encode("utf-16-be"))
    return raw.decode("utf-16-be", errors="surrogatepass")


# What a regex-matched text slot must not contain to be plain character data: characters XML
# forbids, CR (the parser would normalise it), ']]>', and any '&' that is not one of the five
# predefined entities (character references are left to the parser).
_NOT_PLAIN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\r\ufffe\uffff]|]]>|&(?!(?:lt|gt|amp|quot|apos);)")


def _slot_text(raw: str) -> str:
    """A regex-captured element text, XML- and CLIXML-decoded."""
    if _NOT_PLAIN.search(raw) is not None:
        raise _Fallback
    if "&" in raw:
        raw = (
            raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", '"')
            .replace("&apos;", "'")
            .replace("&amp;", "&")
        )
    return clixml_unescape(raw)


def _document(data: bytes) -> str:
    text = data.decode("utf-8")
    return text[1:] if text.startswith("\ufeff") else text


# -- primitives ---------------------------------------------------------------------------------

_INT_RANGES = {
    "SB": (-(2**7), 2**7 - 1),
    "By": (0, 2**8 - 1),
    "I16": (-(2**15), 2**15 - 1),
    "U16": (0, 2**16 - 1),
    "I32": (-(2**31), 2**31 - 1),
    "U32": (0, 2**32 - 1),
    "I64": (-(2**63), 2**63 - 1),
    "U64": (0, 2**64 - 1),
}
_INTEGER = re.compile(r"-?[0-9]+")
_REAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATETIME = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,7}))?(Z|[+-][0-9]{2}:[0-9]{2})?"
)


def _int_text(tag: str, text: str) -> int:
    low, high = _INT_RANGES[tag]
    if _INTEGER.fullmatch(text) is None:
        raise _Fallback
    value = int(text)
    if not low <= value <= high:
        raise _Fallback
    return value


def _datetime_text(text: str) -> str:
    m = _DATETIME.fullmatch(text)
    if m is None:
        raise _Fallback
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    # Validates the calendar exactly as psrpcore's strptime would (raises ValueError).
    datetime.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    canonical = f"{text[:19]}.{(fraction or '').ljust(7, '0')}"
    if zone is None:
        return canonical
    if zone == "Z":
        return canonical + "Z"
    hours, minutes = int(zone[1:3]), int(zone[4:6])
    if hours > 23 or minutes > 59:
        raise _Fallback
    total = hours * 60 + minutes
    return canonical + offset_text(-total if zone[0] == "-" else total)


def _primitive(tag: str, text: str | None) -> Value:
    """A primitive element's value from its (XML-decoded) text; unknown tags fall back."""
    if tag == "S":
        return clixml_unescape(text or "")
    if tag == "Nil":
        return None
    if tag == "B":
        return (text or "").lower() == "true"
    if tag in _INT_RANGES:
        return _int_text(tag, text or "")
    if tag in ("Db", "Sg"):
        if text is None or _REAL.fullmatch(text) is None:
            raise _Fallback
        return float(text)
    if tag == "D":
        if text is None or _REAL.fullmatch(text) is None:
            raise _Fallback
        return str(decimal.Decimal(text))
    if tag == "DT":
        return _datetime_text(text or "")
    if tag == "G":
        if text is None or _GUID.fullmatch(text) is None:
            raise _Fallback
        return text.lower()
    if tag == "C":
        code = _int_text("U16", text or "")
        return chr(code)
    if tag == "BA":
        return bytes(base64.b64decode(text or ""))
    raise _Fallback


# -- tier 1: exact shapes -------------------------------------------------------------------------

# InformationalRecord (verbose/warning/debug) without invocation info. psrpcore writes no
# ToString; PowerShell writes it between TN and MS (the value is not used by either side).
_INFORMATIONAL = re.compile(
    r'<Obj RefId="0"><TN RefId="0"><T>System\.Management\.Automation\.(?:Verbose|Warning|Debug)Record</T>'
    r"<T>System\.Management\.Automation\.InformationalRecord</T><T>System\.Object</T></TN>"
    r"(?:<ToString>([^<]*)</ToString>|<ToString ?/>)?"
    r'<MS><S N="InformationalRecord_Message"(?:>([^<]*)</S>| ?/>)'
    r'<B N="InformationalRecord_SerializeInvocationInfo">false</B></MS></Obj>'
)
_PRIMITIVE_OUTPUT = re.compile(
    r"<(S|I32|I64|I16|U16|U32|U64|By|SB|B|Db|Sg|D|DT|G|C)>([^<]*)</\1>|<(S|Nil) ?/>"
)

# ProgressRecord message. psrpcore writes the Type enum as RefId/N, value, TN, ToString;
# PowerShell as N/RefId, TN, ToString, value. The ToString is not used (the value decides).
_TEXT_PROP = r'(?:<S N="{0}"(?:>([^<]*)</S>| ?/>)|<Nil N="{0}" ?/>)'
_PROGRESS = re.compile(
    r'<Obj RefId="0"><MS>'
    + _TEXT_PROP.format("Activity")
    + r'<I32 N="ActivityId">([^<]*)</I32>'
    + _TEXT_PROP.format("StatusDescription")
    + _TEXT_PROP.format("CurrentOperation")
    + r'<I32 N="ParentActivityId">([^<]*)</I32><I32 N="PercentComplete">([^<]*)</I32>'
    r'<Obj (?:RefId="[0-9]+" N="Type"|N="Type" RefId="[0-9]+")>(?:<I32>([01])</I32>)?'
    r'<TN RefId="0"><T>System\.Management\.Automation\.ProgressRecordType</T><T>System\.Enum</T>'
    r"<T>System\.ValueType</T><T>System\.Object</T></TN><ToString>(?:Processing|Completed)</ToString>"
    r'(?:<I32>([01])</I32>)?</Obj><I32 N="SecondsRemaining">([^<]*)</I32></MS></Obj>'
)

_MESSAGE_TYPES: dict[PSRPMessageType, Callable[..., Record]] = {
    PSRPMessageType.VerboseRecord: VerboseRecord,
    PSRPMessageType.WarningRecord: WarningRecord,
    PSRPMessageType.DebugRecord: DebugRecord,
}


def _decode_informational(message_type: PSRPMessageType) -> Callable[[bytes], Record | None]:
    make = _MESSAGE_TYPES[message_type]

    def decode(data: bytes) -> Record | None:
        m = _INFORMATIONAL.fullmatch(_document(data))
        if m is not None:
            shown, message = m.groups()
            if shown is not None:
                _slot_text(shown)  # unused, but it must be well-formed for psrpcore too
            return make(message=_slot_text(message or ""))
        tree = _Tree(data)
        props = tree.members(tree.root, _INFORMATIONAL_TYPES)
        if "InformationalRecord_SerializeInvocationInfo" not in props:
            raise _Fallback
        return make(message=tree.text(props["InformationalRecord_Message"]))

    return decode


def _decode_output(data: bytes) -> Record | None:
    if not data:
        return OutputRecord(value=None)
    m = _PRIMITIVE_OUTPUT.fullmatch(_document(data))
    if m is not None:
        tag, raw, empty_tag = m.groups()
        if empty_tag is not None:
            return OutputRecord(value=None if empty_tag == "Nil" else "")
        if tag == "S":
            return OutputRecord(value=_slot_text(raw))
        if _NOT_PLAIN.search(raw) is not None or "&" in raw:
            raise _Fallback
        return OutputRecord(value=_primitive(tag, raw))
    tree = _Tree(data)
    return OutputRecord(value=tree.value(tree.root))


# -- tier 2: element walk -----------------------------------------------------------------------

# psrpcore turns an object whose first type name is in REHYDRATED_TYPES into an instance of its
# own class, which may transform it; the walk accepts only the known types below and otherwise
# falls back.
_CUSTOM_OBJECT = tuple(PSCustomObject.PSObject.type_names)
_REGISTERED_CONTAINERS = {
    "System.Collections.Hashtable": frozenset(("DCT",)),
    "System.Collections.ArrayList": frozenset(("LST", "IE")),
}
_LIST_TAGS = frozenset(("LST", "IE"))
_CONTAINER_TAGS = frozenset(("LST", "IE", "STK", "QUE", "DCT"))
_KEY_TAGS = frozenset(("S", *_INT_RANGES))
_ERROR_RECORD = "System.Management.Automation.ErrorRecord"
_INFORMATIONAL_TYPES = frozenset(
    f"System.Management.Automation.{name}Record" for name in ("Verbose", "Warning", "Debug", "Informational")
)
_CATEGORIES = {int(c): c.name for c in ErrorCategory}
_PROGRESS_TYPE = ProgressRecordType.PSObject.type_names[0]


class _Tree:
    """One parsed message: its TN table and the walks over it."""

    __slots__ = ("root", "type_table")

    def __init__(self, data: bytes) -> None:
        # The same parser psrpcore runs on the same bytes when this falls back: no new exposure.
        self.root = ElementTree.fromstring(data)  # noqa: S314
        self.type_table: dict[str, tuple[str, ...]] = {}
        for tn in self.root.iter("TN"):
            names = tuple(t.text or "" for t in tn)
            if not names or any(t.tag != "T" for t in tn):
                raise _Fallback
            if self.type_table.setdefault(tn.attrib["RefId"], names) != names:
                raise _Fallback  # a RefId defined twice: order of processing would matter

    def type_names(self, obj: ElementTree.Element) -> tuple[str, ...]:
        found: tuple[str, ...] | None = None
        for child in obj:
            if child.tag in ("TN", "TNRef"):
                if found is not None:
                    raise _Fallback
                found = self.type_table[child.attrib["RefId"]]
        return found or ()

    def members(
        self, obj: ElementTree.Element, first_names: frozenset[str] | None
    ) -> dict[str, ElementTree.Element]:
        """The extended properties (MS) of a message's object, by name.

        ``first_names``: the type names psrpcore must rehydrate the object as (``None``: no
        type names, or one psrpcore has no class for). An object that also has adapted
        properties falls back, since a lookup by name would consult those first.
        """
        if obj.tag != "Obj":
            raise _Fallback
        names = self.type_names(obj)
        if first_names is None:
            if names and names[0] in REHYDRATED_TYPES:
                raise _Fallback
        elif not names or names[0] not in first_names:
            raise _Fallback
        groups = self._groups(obj)
        if "Props" in groups:
            raise _Fallback
        return groups.get("MS", {})

    def _groups(self, obj: ElementTree.Element) -> dict[str, dict[str, ElementTree.Element]]:
        groups: dict[str, dict[str, ElementTree.Element]] = {}
        for child in obj:
            if child.tag not in ("Props", "MS"):
                continue
            if child.tag in groups:
                raise _Fallback
            props = groups[child.tag] = {}
            for prop in child:
                name = clixml_unescape(prop.attrib["N"])
                if name in props:
                    raise _Fallback  # psrpcore keeps the last, a lookup might find either
                props[name] = prop
        return groups

    def text(self, element: ElementTree.Element) -> str:
        """A string property (``S`` or ``Nil``) as record text."""
        if element.tag == "S":
            return clixml_unescape(element.text or "")
        if element.tag == "Nil":
            return ""
        raise _Fallback

    def integer(self, element: ElementTree.Element, default: int) -> int:
        if element.tag == "Nil":
            return default
        if element.tag not in _INT_RANGES:
            raise _Fallback
        return _int_text(element.tag, element.text or "")

    def value(self, element: ElementTree.Element) -> Value:
        if element.tag != "Obj":
            return _primitive(element.tag, element.text)
        return self._object(element)

    def _object(self, obj: ElementTree.Element) -> Value:
        names = self.type_names(obj)
        cls = REHYDRATED_TYPES.get(names[0]) if names else None
        to_string: str | None = None
        has_to_string = False
        container: ElementTree.Element | None = None
        primitive: ElementTree.Element | None = None
        for child in obj:
            tag = child.tag
            if tag in ("TN", "TNRef", "Props", "MS"):
                continue
            if tag == "ToString":
                if has_to_string:
                    raise _Fallback
                has_to_string = True
                to_string = clixml_unescape(child.text or "")
            elif container is not None or primitive is not None:
                raise _Fallback
            elif tag in _CONTAINER_TAGS:
                container = child
            else:
                primitive = child
        groups = self._groups(obj)

        if cls is not None and issubclass(cls, enum.Enum):
            if primitive is None or primitive.tag not in _INT_RANGES or groups:
                raise _Fallback
            return enum_text(cls(_int_text(primitive.tag, primitive.text or "")))
        if primitive is not None and not names and "Props" not in groups:
            # A primitive with note properties only: every object a guest sends through
            # Invoke-Command (PSComputerName, RunspaceId, PSShowComputerName). The notes are dropped.
            return _primitive(primitive.tag, primitive.text)
        if primitive is not None:
            # An integer with extra type names is an enum psrpcore has no class for; any
            # other extended primitive is rare enough to leave to psrpcore.
            if cls is not None or "System.Enum" not in names or primitive.tag not in _INT_RANGES or groups:
                raise _Fallback
            number = _int_text(primitive.tag, primitive.text or "")
            return number if to_string is None else to_string
        if container is not None:
            allowed = _REGISTERED_CONTAINERS.get(names[0], ()) if cls is not None else _CONTAINER_TAGS
            if groups or container.tag not in allowed:
                raise _Fallback
            if container.tag in _LIST_TAGS:
                return tuple(self.value(item) for item in container)
            if container.tag == "DCT":
                return self._dictionary(container)
            raise _Fallback
        if cls is not None and names != _CUSTOM_OBJECT:
            raise _Fallback
        return PSObjectValue(
            type_names=names,
            properties=tuple(
                (name, self.value(prop))
                for group in ("Props", "MS")
                for name, prop in groups.get(group, {}).items()
            ),
            to_string=to_string,
        )

    def _dictionary(self, dct: ElementTree.Element) -> PSDictValue:
        entries: dict[Value, Value] = {}
        for entry in dct:
            if entry.tag != "En" or len(entry) != 2:
                raise _Fallback
            key, val = entry
            if key.get("N") != "Key" or val.get("N") != "Value" or key.tag not in _KEY_TAGS:
                raise _Fallback
            decoded = _primitive(key.tag, key.text)
            if decoded in entries:
                raise _Fallback  # keys psrpcore's dict would have merged
            entries[decoded] = self.value(val)
        return PSDictValue(tuple(entries.items()))

    def error_record(self, obj: ElementTree.Element) -> ErrorRecord:
        props = self.members(obj, _ERROR_SHAPE)
        for required in _ERROR_REQUIRED:
            if required not in props:
                raise _Fallback  # psrpcore would fail on it

        exception = props["Exception"]
        if exception.tag != "Obj":
            raise _Fallback
        exception_names = self.type_names(exception)
        exception_groups = self._groups(exception)
        exception_extended = exception_groups.get("MS", {})
        if "Message" in exception_extended or "SerializedRemoteInvocationInfo" in exception_extended:
            raise _Fallback
        exception_props = exception_groups.get("Props", {})
        message_element = exception_props.get("Message")
        exception_message = "" if message_element is None else self.text(message_element)
        remote = exception_props.get("SerializedRemoteException")
        if remote is not None and remote.tag == "Obj" and self.type_names(remote):
            exception_names = self.type_names(remote)

        extended = props["SerializeExtendedInfo"]
        if _tag_text(extended, "B").lower() == "true":
            invocation = self._extended_invocation(props)
        elif "SerializedRemoteInvocationInfo" in exception_props:
            invocation = self._invocation(exception_props["SerializedRemoteInvocationInfo"])
        else:
            invocation = self._invocation(props["InvocationInfo"])

        category = _CATEGORIES[_int_text("I32", _tag_text(props["ErrorCategory_Category"], "I32"))]
        details = props.get("ErrorDetails_Message")
        details_message = "" if details is None else self.text(details)
        action = props.get("ErrorDetails_RecommendedAction")
        if action is not None:
            self.text(action)
        target = props["TargetObject"]
        stack = props.get("ErrorDetails_ScriptStackTrace")
        return ErrorRecord(
            message=details_message or exception_message,
            fqid=self.text(props["FullyQualifiedErrorId"]),
            category=category,
            activity=self.text(props["ErrorCategory_Activity"]),
            reason=self.text(props["ErrorCategory_Reason"]),
            target_name=self.text(props["ErrorCategory_TargetName"]),
            target_type=self.text(props["ErrorCategory_TargetType"]),
            exception_type=strip_deserialized(exception_names[0]) if exception_names else "",
            target=None if target.tag == "Nil" else value_display(self.value(target)),
            script_stack_trace=None if stack is None or stack.tag == "Nil" else self.text(stack),
            command_name=invocation[0],
            script_line_number=invocation[1],
            position_message=invocation[2],
        )

    def _invocation(self, element: ElementTree.Element) -> tuple[str, int, str]:
        """Command, line and position of a serialized InvocationInfo (adapted, then extended)."""
        if element.tag == "Nil":
            return "", 0, ""
        if element.tag != "Obj" or self.type_names(element)[:1] not in _INVOCATION_INFO:
            raise _Fallback
        groups = self._groups(element)
        props = {**groups.get("MS", {}), **groups.get("Props", {})}

        def text(name: str) -> str:
            found = props.get(name)
            return "" if found is None else self.text(found)

        line = props.get("ScriptLineNumber")
        return text("MyCommand"), 0 if line is None else self.integer(line, 0), text("PositionMessage")

    def _extended_invocation(self, props: dict[str, ElementTree.Element]) -> tuple[str, int, str]:
        """What psrpcore rebuilds from flattened ``InvocationInfo_*`` properties (no position text)."""
        command = ""
        if "CommandInfo_CommandType" in props:
            command = self.text(props["CommandInfo_Name"])
        line = props.get("InvocationInfo_ScriptLineNumber")
        if line is None or line.tag not in _INT_RANGES:
            raise _Fallback
        return command, self.integer(line, 0), ""


_ERROR_SHAPE = frozenset((_ERROR_RECORD, "System.Management.Automation.Runspaces.RemotingErrorRecord"))
_INVOCATION_INFO = (
    ("System.Management.Automation.InvocationInfo",),
    ("Deserialized.System.Management.Automation.InvocationInfo",),
)
_ERROR_REQUIRED = (
    "Exception",
    "TargetObject",
    "FullyQualifiedErrorId",
    "InvocationInfo",
    "ErrorCategory_Category",
    "ErrorCategory_Activity",
    "ErrorCategory_Reason",
    "ErrorCategory_TargetName",
    "ErrorCategory_TargetType",
    "ErrorCategory_Message",
    "SerializeExtendedInfo",
)


def _tag_text(element: ElementTree.Element, tag: str) -> str:
    if element.tag != tag:
        raise _Fallback
    return element.text or ""


def _decode_error(data: bytes) -> Record | None:
    tree = _Tree(data)
    return tree.error_record(tree.root)


def _decode_information(data: bytes) -> Record | None:
    tree = _Tree(data)
    props = tree.members(tree.root, None)
    time_generated = props.get("TimeGenerated")
    if time_generated is None or time_generated.tag == "Nil":
        generated = ""
    elif time_generated.tag == "DT":
        generated = _datetime_text(time_generated.text or "")
    else:
        raise _Fallback
    tags: tuple[str, ...] = ()
    tags_element = props.get("Tags")
    if tags_element is not None and tags_element.tag != "Nil":
        tag_values = tree.value(tags_element)
        if not isinstance(tag_values, tuple):
            raise _Fallback
        tags = tuple(t for t in tag_values if isinstance(t, str))
        if len(tags) != len(tag_values):
            raise _Fallback
    message_data = props.get("MessageData")
    return InformationRecord(
        message_data=None if message_data is None else tree.value(message_data),
        source=_optional_text(tree, props.get("Source")),
        time_generated=generated,
        tags=tags,
        user=_optional_text(tree, props.get("User")),
        computer=_optional_text(tree, props.get("Computer")),
        process_id=_optional_int(tree, props.get("ProcessId"), 0),
        native_thread_id=_optional_int(tree, props.get("NativeThreadId"), 0),
        managed_thread_id=_optional_int(tree, props.get("ManagedThreadId"), 0),
    )


def _optional_text(tree: _Tree, element: ElementTree.Element | None) -> str:
    return "" if element is None else tree.text(element)


def _optional_int(tree: _Tree, element: ElementTree.Element | None, default: int) -> int:
    return default if element is None else tree.integer(element, default)


def _decode_progress(data: bytes) -> Record | None:
    m = _PROGRESS.fullmatch(_document(data))
    if m is not None:
        activity, activity_id, status, operation, parent, percent, kind_first, kind_last, seconds = m.groups()
        if (kind_first is None) == (kind_last is None):
            raise _Fallback
        return ProgressRecord(
            activity=_slot_text(activity or ""),
            activity_id=_int_text("I32", activity_id),
            status_description=_slot_text(status or ""),
            current_operation=_slot_text(operation or ""),
            parent_activity_id=_int_text("I32", parent),
            percent_complete=_int_text("I32", percent),
            seconds_remaining=_int_text("I32", seconds),
            completed=(kind_first or kind_last) == "1",
        )
    tree = _Tree(data)
    props = tree.members(tree.root, None)
    record_type = props["Type"]
    if record_type.tag != "Obj" or tree.type_names(record_type)[:1] != (_PROGRESS_TYPE,):
        raise _Fallback
    kind = tree.value(record_type)
    return ProgressRecord(
        activity=tree.text(props["Activity"]),
        activity_id=tree.integer(props["ActivityId"], 0),
        status_description=tree.text(props["StatusDescription"]),
        current_operation=tree.text(props["CurrentOperation"]),
        parent_activity_id=tree.integer(props["ParentActivityId"], -1),
        percent_complete=tree.integer(props["PercentComplete"], -1),
        seconds_remaining=tree.integer(props["SecondsRemaining"], -1),
        completed=kind == "Completed",
    )


def _decode_pipeline_state(data: bytes) -> Record | None:
    tree = _Tree(data)
    props = tree.members(tree.root, None)
    state = TERMINAL_STATES.get(_int_text("I32", _tag_text(props["PipelineState"], "I32")))
    if state is None:
        raise _Fallback  # non-terminal: psrpcore's bookkeeping, not a record
    reason = props.get("ExceptionAsErrorRecord")
    error = None if reason is None or reason.tag == "Nil" else tree.error_record(reason)
    return PipelineStateRecord(state=state, error=error)


_DECODERS: dict[PSRPMessageType, Callable[[bytes], Record | None]] = {
    PSRPMessageType.VerboseRecord: _decode_informational(PSRPMessageType.VerboseRecord),
    PSRPMessageType.WarningRecord: _decode_informational(PSRPMessageType.WarningRecord),
    PSRPMessageType.DebugRecord: _decode_informational(PSRPMessageType.DebugRecord),
    PSRPMessageType.PipelineOutput: _decode_output,
    PSRPMessageType.ErrorRecord: _decode_error,
    PSRPMessageType.InformationRecord: _decode_information,
    PSRPMessageType.ProgressRecord: _decode_progress,
    PSRPMessageType.PipelineState: _decode_pipeline_state,
}


# -- host calls ---------------------------------------------------------------------------------

# A void host call (ci -100) with one string argument: WriteVerboseLine and its kin, as PowerShell
# writes them. With a UI declared every verbose, warning and debug line comes as a record and
# again as one of these; psrpcore's generic deserializer would cost more than the record itself.
_HOST_LINE = re.compile(
    r'<Obj RefId="0"><MS><I64 N="ci">-100</I64><Obj N="mi" RefId="1"><TN RefId="0">'
    r"<T>System\.Management\.Automation\.Remoting\.RemoteHostMethodId</T><T>System\.Enum</T>"
    r"<T>System\.ValueType</T><T>System\.Object</T></TN><ToString>[A-Za-z0-9]*</ToString>"
    r'<I32>([0-9]+)</I32></Obj><Obj N="mp" RefId="2"><TN RefId="1"><T>System\.Collections\.ArrayList</T>'
    r"<T>System\.Object</T></TN><LST>(?:<S>([^<]*)</S>|<S ?/>)</LST></Obj></MS></Obj>"
)
_HOST_LINE_METHODS = {
    int(m): m
    for m in (
        HostMethodIdentifier.WriteVerboseLine,
        HostMethodIdentifier.WriteWarningLine,
        HostMethodIdentifier.WriteDebugLine,
        HostMethodIdentifier.WriteErrorLine,
        HostMethodIdentifier.WriteLine2,
        HostMethodIdentifier.Write1,
    )
}


def fast_host_line(data: bytes) -> tuple[HostMethodIdentifier, str] | None:
    """``(method, text)`` of a void one-string host call message, or ``None`` for psrpcore's path."""
    m = _HOST_LINE.fullmatch(_document(data))
    if m is None:
        return None
    method = _HOST_LINE_METHODS.get(int(m.group(1)))
    if method is None:
        return None
    try:
        return method, _slot_text(m.group(2) or "")
    except _Fallback:
        return None
