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
2. *Element walk* (:mod:`.clixml_tree`): everything else parses with
   :func:`xml.etree.ElementTree.fromstring` (the parser psrpcore itself uses, so XML semantics
   are identical) and reads only the properties the record needs: information, progress, error
   and pipeline-state records, records with invocation info, output of objects, lists and
   hashtables.

Both tiers decode text and primitive values with :mod:`.clixml_text`.

Both tiers are strict. Anything they do not handle exactly -- a ``<Ref>`` to resolve, a
SecureString, a type psrpcore rehydrates into a class of its own, duplicate property names,
a malformed number, a non-terminal pipeline state -- makes :func:`fast_decode` return
``None`` and the caller falls back to psrpcore and :func:`~vmbusops.psrp.convert.record_from_event`.
The contract, enforced by the tests, is that a non-``None`` result always equals what that
slow path produces (see :mod:`vmbusops.psrp.convert` for the mapping).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from xml.etree import ElementTree

from psrpcore.types import HostMethodIdentifier, ProgressRecordType, PSRPMessageType

from vmbusops.psrp.clixml_text import (
    NOT_PLAIN,
    Fallback,
    clixml_unescape,
    datetime_text,
    document_text,
    int_text,
    primitive_value,
    slot_text,
)
from vmbusops.psrp.clixml_tree import Tree, tag_text
from vmbusops.psrp.convert import TERMINAL_STATES
from vmbusops.records import (
    DebugRecord,
    InformationRecord,
    OutputRecord,
    PipelineStateRecord,
    ProgressRecord,
    Record,
    VerboseRecord,
    WarningRecord,
)

__all__ = ["clixml_unescape", "fast_decode", "fast_host_line"]


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
    except (Fallback, ElementTree.ParseError, ValueError, KeyError, IndexError):
        return None


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
        m = _INFORMATIONAL.fullmatch(document_text(data))
        if m is not None:
            shown, message = m.groups()
            if shown is not None:
                slot_text(shown)  # unused, but it must be well-formed for psrpcore too
            return make(message=slot_text(message or ""))
        tree = Tree(data)
        props = tree.members(tree.root, _INFORMATIONAL_TYPES)
        if "InformationalRecord_SerializeInvocationInfo" not in props:
            raise Fallback
        return make(message=tree.text(props["InformationalRecord_Message"]))

    return decode


def _decode_output(data: bytes) -> Record | None:
    if not data:
        return OutputRecord(value=None)
    m = _PRIMITIVE_OUTPUT.fullmatch(document_text(data))
    if m is not None:
        tag, raw, empty_tag = m.groups()
        if empty_tag is not None:
            return OutputRecord(value=None if empty_tag == "Nil" else "")
        if tag == "S":
            return OutputRecord(value=slot_text(raw))
        if NOT_PLAIN.search(raw) is not None or "&" in raw:
            raise Fallback
        return OutputRecord(value=primitive_value(tag, raw))
    tree = Tree(data)
    return OutputRecord(value=tree.value(tree.root))


# -- the records ----------------------------------------------------------------------------------

_INFORMATIONAL_TYPES = frozenset(
    f"System.Management.Automation.{name}Record" for name in ("Verbose", "Warning", "Debug", "Informational")
)
_PROGRESS_TYPE = ProgressRecordType.PSObject.type_names[0]


def _decode_error(data: bytes) -> Record | None:
    tree = Tree(data)
    return tree.error_record(tree.root)


def _decode_information(data: bytes) -> Record | None:
    tree = Tree(data)
    props = tree.members(tree.root, None)
    time_generated = props.get("TimeGenerated")
    if time_generated is None or time_generated.tag == "Nil":
        generated = ""
    elif time_generated.tag == "DT":
        generated = datetime_text(time_generated.text or "")
    else:
        raise Fallback
    tags: tuple[str, ...] = ()
    tags_element = props.get("Tags")
    if tags_element is not None and tags_element.tag != "Nil":
        tag_values = tree.value(tags_element)
        if not isinstance(tag_values, tuple):
            raise Fallback
        tags = tuple(t for t in tag_values if isinstance(t, str))
        if len(tags) != len(tag_values):
            raise Fallback
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


def _optional_text(tree: Tree, element: ElementTree.Element | None) -> str:
    return "" if element is None else tree.text(element)


def _optional_int(tree: Tree, element: ElementTree.Element | None, default: int) -> int:
    return default if element is None else tree.integer(element, default)


def _decode_progress(data: bytes) -> Record | None:
    m = _PROGRESS.fullmatch(document_text(data))
    if m is not None:
        activity, activity_id, status, operation, parent, percent, kind_first, kind_last, seconds = m.groups()
        if (kind_first is None) == (kind_last is None):
            raise Fallback
        return ProgressRecord(
            activity=slot_text(activity or ""),
            activity_id=int_text("I32", activity_id),
            status_description=slot_text(status or ""),
            current_operation=slot_text(operation or ""),
            parent_activity_id=int_text("I32", parent),
            percent_complete=int_text("I32", percent),
            seconds_remaining=int_text("I32", seconds),
            completed=(kind_first or kind_last) == "1",
        )
    tree = Tree(data)
    props = tree.members(tree.root, None)
    record_type = props["Type"]
    if record_type.tag != "Obj" or tree.type_names(record_type)[:1] != (_PROGRESS_TYPE,):
        raise Fallback
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
    tree = Tree(data)
    props = tree.members(tree.root, None)
    state = TERMINAL_STATES.get(int_text("I32", tag_text(props["PipelineState"], "I32")))
    if state is None:
        raise Fallback  # non-terminal: psrpcore's bookkeeping, not a record
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
    m = _HOST_LINE.fullmatch(document_text(data))
    if m is None:
        return None
    method = _HOST_LINE_METHODS.get(int(m.group(1)))
    if method is None:
        return None
    try:
        return method, slot_text(m.group(2) or "")
    except Fallback:
        return None
