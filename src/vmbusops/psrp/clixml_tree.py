"""The element walk: tier 2 of :mod:`.decode`, for messages no exact shape matches.

A message body is parsed with :func:`xml.etree.ElementTree.fromstring` (the parser psrpcore
itself uses, so XML semantics are identical) and :class:`Tree` reads only the properties a
record needs. It is strict in the way :mod:`.decode` describes: whatever psrpcore would read
differently - a ``<Ref>``, a type psrpcore rehydrates into a class of its own, duplicate
property names, a RefId defined twice - raises :class:`~.clixml_text.Fallback`.
"""

from __future__ import annotations

import enum
from xml.etree import ElementTree

from psrpcore.types import ErrorCategory, PSCustomObject

from vmbusops.psrp.clixml_text import INT_RANGES, Fallback, guest_text, int_text, primitive_value
from vmbusops.psrp.convert import enum_text, strip_deserialized
from vmbusops.psrp.psrpcore_private import REHYDRATED_TYPES
from vmbusops.records import ErrorRecord, PSDictValue, PSObjectValue, Value, value_display

__all__ = ["Tree", "tag_text"]

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
_KEY_TAGS = frozenset(("S", *INT_RANGES))
_ERROR_RECORD = "System.Management.Automation.ErrorRecord"
_CATEGORIES = {int(c): c.name for c in ErrorCategory}


class Tree:
    """One parsed message: its TN table and the walks over it."""

    __slots__ = ("root", "type_table")

    def __init__(self, data: bytes) -> None:
        # The same parser psrpcore runs on the same bytes when this falls back: no new exposure.
        self.root = ElementTree.fromstring(data)  # noqa: S314
        self.type_table: dict[str, tuple[str, ...]] = {}
        for tn in self.root.iter("TN"):
            names = tuple(t.text or "" for t in tn)
            if not names or any(t.tag != "T" for t in tn):
                raise Fallback
            if self.type_table.setdefault(tn.attrib["RefId"], names) != names:
                raise Fallback  # a RefId defined twice: order of processing would matter

    def type_names(self, obj: ElementTree.Element) -> tuple[str, ...]:
        found: tuple[str, ...] | None = None
        for child in obj:
            if child.tag in ("TN", "TNRef"):
                if found is not None:
                    raise Fallback
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
            raise Fallback
        names = self.type_names(obj)
        if first_names is None:
            if names and names[0] in REHYDRATED_TYPES:
                raise Fallback
        elif not names or names[0] not in first_names:
            raise Fallback
        groups = self._groups(obj)
        if "Props" in groups:
            raise Fallback
        return groups.get("MS", {})

    def _groups(self, obj: ElementTree.Element) -> dict[str, dict[str, ElementTree.Element]]:
        groups: dict[str, dict[str, ElementTree.Element]] = {}
        for child in obj:
            if child.tag not in ("Props", "MS"):
                continue
            if child.tag in groups:
                raise Fallback
            props = groups[child.tag] = {}
            for prop in child:
                name = guest_text(prop.attrib["N"])
                if name in props:
                    raise Fallback  # psrpcore keeps the last, a lookup might find either
                props[name] = prop
        return groups

    def text(self, element: ElementTree.Element) -> str:
        """A string property (``S`` or ``Nil``) as record text."""
        if element.tag == "S":
            return guest_text(element.text or "")
        if element.tag == "Nil":
            return ""
        raise Fallback

    def integer(self, element: ElementTree.Element, default: int) -> int:
        if element.tag == "Nil":
            return default
        if element.tag not in INT_RANGES:
            raise Fallback
        return int_text(element.tag, element.text or "")

    def value(self, element: ElementTree.Element) -> Value:
        if element.tag != "Obj":
            return primitive_value(element.tag, element.text)
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
                    raise Fallback
                has_to_string = True
                to_string = guest_text(child.text or "")
            elif container is not None or primitive is not None:
                raise Fallback
            elif tag in _CONTAINER_TAGS:
                container = child
            else:
                primitive = child
        groups = self._groups(obj)

        if cls is not None and issubclass(cls, enum.Enum):
            if primitive is None or primitive.tag not in INT_RANGES or groups:
                raise Fallback
            return enum_text(cls(int_text(primitive.tag, primitive.text or "")))
        if primitive is not None and not names and "Props" not in groups:
            # A primitive with note properties only: every object a guest sends through
            # Invoke-Command (PSComputerName, RunspaceId, PSShowComputerName). The notes are dropped.
            return primitive_value(primitive.tag, primitive.text)
        if primitive is not None:
            # An integer with extra type names is an enum psrpcore has no class for; any
            # other extended primitive is rare enough to leave to psrpcore.
            if cls is not None or "System.Enum" not in names or primitive.tag not in INT_RANGES or groups:
                raise Fallback
            number = int_text(primitive.tag, primitive.text or "")
            return number if to_string is None else to_string
        if container is not None:
            allowed = _REGISTERED_CONTAINERS.get(names[0], ()) if cls is not None else _CONTAINER_TAGS
            if groups or container.tag not in allowed:
                raise Fallback
            if container.tag in _LIST_TAGS:
                return tuple(self.value(item) for item in container)
            if container.tag == "DCT":
                return self._dictionary(container)
            raise Fallback
        if cls is not None and names != _CUSTOM_OBJECT:
            raise Fallback
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
                raise Fallback
            key, val = entry
            if key.get("N") != "Key" or val.get("N") != "Value" or key.tag not in _KEY_TAGS:
                raise Fallback
            decoded = primitive_value(key.tag, key.text)
            if decoded in entries:
                raise Fallback  # keys psrpcore's dict would have merged
            entries[decoded] = self.value(val)
        return PSDictValue(tuple(entries.items()))

    def error_record(self, obj: ElementTree.Element) -> ErrorRecord:
        props = self.members(obj, _ERROR_SHAPE)
        for required in _ERROR_REQUIRED:
            if required not in props:
                raise Fallback  # psrpcore would fail on it

        exception = props["Exception"]
        if exception.tag != "Obj":
            raise Fallback
        exception_names = self.type_names(exception)
        exception_groups = self._groups(exception)
        exception_extended = exception_groups.get("MS", {})
        if "Message" in exception_extended or "SerializedRemoteInvocationInfo" in exception_extended:
            raise Fallback
        exception_props = exception_groups.get("Props", {})
        message_element = exception_props.get("Message")
        exception_message = "" if message_element is None else self.text(message_element)
        remote = exception_props.get("SerializedRemoteException")
        if remote is not None and remote.tag == "Obj" and self.type_names(remote):
            exception_names = self.type_names(remote)

        extended = props["SerializeExtendedInfo"]
        if tag_text(extended, "B").lower() == "true":
            invocation = self._extended_invocation(props)
        elif "SerializedRemoteInvocationInfo" in exception_props:
            invocation = self._invocation(exception_props["SerializedRemoteInvocationInfo"])
        else:
            invocation = self._invocation(props["InvocationInfo"])

        category = _CATEGORIES[int_text("I32", tag_text(props["ErrorCategory_Category"], "I32"))]
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
            raise Fallback
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
        if line is None or line.tag not in INT_RANGES:
            raise Fallback
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


def tag_text(element: ElementTree.Element, tag: str) -> str:
    """The text of ``element``, which must be a ``tag`` element."""
    if element.tag != tag:
        raise Fallback
    return element.text or ""
