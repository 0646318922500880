"""Reading a CreatePipeline message's commands straight from its CLIXML.

Theory of operation
-------------------
psrpcore turns a CreatePipeline message into its whole object model (about 75 PSObjects and
several milliseconds for one ``Invoke-Command``), and the simulator then reads only each
command's name, whether it is a script, and its parameters. :func:`parse_create_pipeline`
reads just those in one walk over the element tree of :func:`xml.etree.ElementTree.fromstring`
(the parser psrpcore uses, so XML semantics are identical), with psrpcore's string decoding
(:func:`~vmbusops.psrp.decode.clixml_unescape`) and psrpcore's session-key cipher for
SecureStrings.

A fan-out sends the same few shapes of message again and again: one per VM and command, each
differing from the next only in the text of its strings (the VM's name, the credential's user
and SecureString, the step's script). So the walk is kept per *shape*, the body with the text of
every string leaf (``<S>``, ``<SS>``) taken out, in a small LRU: the first body of a shape is read
with a unique marker in each leaf, and every later one fills the markers with its own leaves'
texts, decoded as the parser and psrpcore decode them. A leaf whose text the parser would not
read as plain characters (a character reference, a CR, ']]>', a character XML forbids, text that
is not UTF-8) or a body that declares its encoding makes that body read whole, as before. What
is kept holds each credential's SecureString still encrypted (:class:`_SealedCredential`): every
use decrypts it with the pool's current key, so a key exchanged since, or another pool's key,
fails exactly as a fresh parse would, and the values handed out are new objects each time.

It is strict. It reads the values host cmdlets take -- strings, bools, integers, ``$null``,
lists of those, and PSCredentials (also through a ``<Ref>`` to one read before) -- and returns
``None`` for anything else: a hashtable, a float, a SecureString that does not decrypt with the
pool's key, a property psrpcore needs that is missing, a ``<Ref>`` or ``<TNRef>`` to nothing
before it, a type name psrpcore would rehydrate into a class of its own. The caller then uses psrpcore's path, so the fast path only ever changes speed. Values
come out as :func:`vmbusops.sim.hyperv.plain` makes psrpcore's values; the tests check that
both paths agree over many shapes of pipelines and strings.

:class:`SimRunspacePool` is psrpcore's server pool with that hook: for a CreatePipeline it
parses, and returns a :class:`ParsedCreatePipelineEvent` carrying the commands; every other
message goes through psrpcore unchanged.
"""

from __future__ import annotations

import functools
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

from psrpcore import CreatePipelineEvent, PowerShell, PSRPCoreError, PSRPEvent
from psrpcore.types import PSObject, PSRPMessageType, deserialize

from vmbusops.psrp.decode import clixml_unescape
from vmbusops.psrp.psrpcore_private import HookedServerRunspacePool, ReceivedMessage, session_cipher

__all__ = [
    "GuestCredentialValue",
    "ParsedCreatePipelineEvent",
    "PipelineCommand",
    "SimRunspacePool",
    "parse_create_pipeline",
]

PSCREDENTIAL = "System.Management.Automation.PSCredential"

# CLIXML integer elements and the range psrpcore accepts for each (it raises outside them).
_INT_RANGES: dict[str, tuple[int, int]] = {
    "By": (0, 2**8 - 1),
    "SB": (-(2**7), 2**7 - 1),
    "U16": (0, 2**16 - 1),
    "I16": (-(2**15), 2**15 - 1),
    "U32": (0, 2**32 - 1),
    "I32": (-(2**31), 2**31 - 1),
    "U64": (0, 2**64 - 1),
    "I64": (-(2**63), 2**63 - 1),
}
# psrpcore uses int(), which also takes spaces, '+', '_' and non-ASCII digits: those fall back.
_INT_TEXT = re.compile(r"-?[0-9]+", re.ASCII)

# What psrpcore's PowerShell.FromPSObjectForRemoting and Command.FromPSObjectForRemoting read;
# without any of them psrpcore fails, so the fast path must not succeed.
_PIPELINE_PROPS = ("NoInput", "ApartmentState", "RemoteStreamOptions", "AddToHistory", "HostInfo", "IsNested")
_POWERSHELL_PROPS = ("Cmds", "History", "RedirectShellErrorOutputPipe")
_COMMAND_PROPS = (
    "Cmd",
    "IsScript",
    "UseLocalScope",
    "Args",
    "MergePreviousResults",
    "MergeMyResult",
    "MergeToResult",
)


@dataclass(slots=True)
class PipelineCommand:
    """One command of a pipeline, as the host cmdlets read it (``hyperv.CommandSpec``)."""

    command_text: str
    is_script: bool
    parameters: list[tuple[str | None, Any]] = field(default_factory=list)
    end_of_statement: bool = False


@dataclass(frozen=True, slots=True)
class GuestCredentialValue:
    """A PSCredential parameter; the password already decrypted with the session key."""

    UserName: str
    Password: str = field(repr=False)

    def __str__(self) -> str:
        return PSCREDENTIAL  # what PowerShell prints for a credential; never the password


@dataclass(frozen=True, slots=True)
class _SealedCredential:
    """A credential as the message holds it: the password is still the SecureString's text."""

    UserName: str
    secret: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class _Hole:
    """Where a template takes the text of the message's ``index``-th string leaf."""

    index: int


# A string leaf: <S> or <SS>, with any attributes, holding text only. Its text is a hole in the
# message's shape. An attribute value with a '>' in it, CDATA or a child element make the element
# part of the shape instead, which only costs a cache entry.
_LEAF = re.compile(rb"(<(S|SS)(?:\s[^<>]*)?>)([^<]*)</\2>")
# Character data the parser reads without a surprise: no character XML 1.0 forbids, no CR (the
# parser normalises line ends), no reference but the five named ones. Anything else (a character
# reference, ']]>', U+FFFE, U+FFFF, text that is not UTF-8) makes that body parsed whole.
_FORBIDDEN = bytes(c for c in range(32) if c not in b"\t\n")
_OTHER_REFERENCE = re.compile(rb"&(?!(?:amp|lt|gt|quot|apos);)")
_NOT_CHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")  # U+FFFE, U+FFFF
_ENTITY = re.compile(r"&(amp|lt|gt|quot|apos);")
_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}

# Shapes whose text without their leaves' text is longer than this are parsed each time (the
# cache should stay small); CACHE_ENTRIES shapes are kept, least recently used first out.
CACHE_MAX_SHAPE = 16 * 1024
CACHE_ENTRIES = 1024
_Template = tuple[tuple[Any, bool, tuple[tuple[Any, Any], ...], bool], ...]
_templates: OrderedDict[bytes, tuple[_Template, dict[int, bool]] | None] = OrderedDict()


class _Unhandled(Exception):
    """Something the fast path does not read exactly as psrpcore does."""


def parse_create_pipeline(
    data: bytes | bytearray, decrypt: Callable[[str], str]
) -> list[PipelineCommand] | None:
    """The commands of a CreatePipeline message body, or None to use psrpcore's path.

    ``decrypt`` turns a SecureString's text into the plain string (the pool's session key).
    """
    found = _filled_template(bytes(data))
    if found is None:
        return None
    template, holes = found
    try:
        return [
            PipelineCommand(
                _fill(name, holes),
                is_script,
                [(_fill(param, holes), _unseal(value, decrypt, holes)) for param, value in parameters],
                end,
            )
            for name, is_script, parameters, end in template
        ]
    except _Unhandled:
        return None


def _filled_template(data: bytes) -> tuple[_Template, dict[int, str]] | None:
    """The template of the body's shape and its leaves' texts, or the body read whole."""
    pieces, texts = _shape(data)
    # NUL joins the shape's pieces: a body with a NUL anywhere is not XML. A body that declares
    # its encoding may not be UTF-8, which the leaves' texts are read as. Both are read whole.
    shape = b"\0".join(pieces)
    if len(shape) <= CACHE_MAX_SHAPE and b"\0" not in data and data.startswith(b"<") and not data.startswith(b"<?"):
        try:
            entry = _templates[shape]
            _templates.move_to_end(shape)
        except KeyError:
            entry = _templates[shape] = _template_with_holes(pieces)
            if len(_templates) > CACHE_ENTRIES:
                _templates.popitem(last=False)
        if entry is None:
            return None
        holes = _hole_texts(texts, entry[1])
        if holes is not None:
            return entry[0], holes
        # A leaf's text the template cannot vouch for: the parser reads this body whole.
    template = _template(data)
    return None if template is None else (template, {})


def _shape(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """The markup around the string leaves' text (the shape), and those texts in document order."""
    pieces: list[bytes] = []
    texts: list[bytes] = []
    last = 0
    for match in _LEAF.finditer(data):
        start, end = match.span(3)
        pieces.append(data[last:start])
        texts.append(match.group(3))
        last = end
    pieces.append(data[last:])
    return pieces, texts


def _hole_texts(texts: list[bytes], used: dict[int, bool]) -> dict[int, str] | None:
    """Each used leaf's text as the parser and psrpcore read it, or None if one is not plain.

    Every leaf is checked, used or not: the parser would reject the whole body for any of them.
    """
    decoded: list[str] = []
    for raw in texts:
        if (
            len(raw.translate(None, _FORBIDDEN)) != len(raw)
            or b"]]>" in raw
            or (b"&" in raw and _OTHER_REFERENCE.search(raw) is not None)
        ):
            return None
        if raw.isascii():
            decoded.append(raw.decode("ascii"))
            continue
        if any(bad in raw for bad in _NOT_CHARACTERS):
            return None
        try:
            decoded.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return None
    holes: dict[int, str] = {}
    for index, clixml in used.items():
        text = decoded[index]
        if "&" in text:
            text = _ENTITY.sub(lambda m: _ENTITIES[m.group(1)], text)
        # A SecureString's text is the cipher's own; a string's is CLIXML-escaped.
        holes[index] = (_unescape_long(text) if len(text) > 512 else clixml_unescape(text)) if clixml else text
    return holes


def _template_with_holes(pieces: list[bytes]) -> tuple[_Template, dict[int, bool]] | None:
    """The template of every body of this shape: read once, a unique marker in each leaf."""
    nonce = secrets.token_hex(8)
    marked = bytearray(pieces[0])
    for index, piece in enumerate(pieces[1:]):
        marked += f"vmbusopsslot{index}x{nonce}".encode()
        marked += piece
    template = _template(bytes(marked))
    if template is None:
        return None
    marker = re.compile(rf"vmbusopsslot(\d+)x{nonce}")
    used: dict[int, bool] = {}

    def hole(text: Any, clixml: bool) -> Any:
        if not isinstance(text, str):
            return text
        found = marker.fullmatch(text)
        if found is None:
            if marker.search(text) is not None:
                raise _Unhandled  # a marker inside other text: this shape is parsed whole
            return text
        index = int(found.group(1))
        if used.setdefault(index, clixml) != clixml:
            raise _Unhandled
        return _Hole(index)

    def holes_in(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(holes_in(v) for v in value)
        if isinstance(value, _SealedCredential):
            return _SealedCredential(UserName=hole(value.UserName, True), secret=hole(value.secret, False))
        return hole(value, True)

    try:
        recipe = tuple(
            (hole(name, True), is_script, tuple((hole(n, True), holes_in(v)) for n, v in parameters), end)
            for name, is_script, parameters, end in template
        )
    except _Unhandled:
        return None
    return recipe, used


def _template(data: bytes | bytearray) -> _Template | None:
    """The commands with credentials still sealed, or None if psrpcore's path must read them."""
    try:
        # The same parser psrpcore runs on these bytes anyway; nothing new is exposed.
        root = ElementTree.fromstring(data)  # noqa: S314
    except ElementTree.ParseError:
        return None
    try:
        commands = _Reader(root).commands()
    except _Unhandled:
        return None
    return tuple(
        (c.command_text, c.is_script, tuple((n, _freeze(v)) for n, v in c.parameters), c.end_of_statement)
        for c in commands
    )


def _freeze(value: Any) -> Any:
    # Lists become tuples in the template so no caller can change what the next one gets.
    return tuple(_freeze(v) for v in value) if isinstance(value, list) else value


def _fill(value: Any, holes: dict[int, str]) -> Any:
    return holes[value.index] if type(value) is _Hole else value


def _unseal(value: Any, decrypt: Callable[[str], str], holes: dict[int, str]) -> Any:
    """A template value as the host cmdlets take it: new lists, leaves filled, credentials decrypted."""
    if type(value) is _Hole:
        return holes[value.index]
    if isinstance(value, tuple):
        return [_unseal(v, decrypt, holes) for v in value]
    if isinstance(value, _SealedCredential):
        try:
            password = decrypt(_fill(value.secret, holes))
        except Exception as exc:
            # No session key yet, or another key: psrpcore's path keeps the SecureString and the
            # cmdlet reports the credential invalid, as before.
            raise _Unhandled from exc
        return GuestCredentialValue(UserName=_fill(value.UserName, holes), Password=password)
    return value


@dataclass(slots=True)
class _References:
    """What each <TNRef> and <Ref> names, resolved in document order as psrpcore does."""

    type_names: dict[ElementTree.Element, list[str]] = field(default_factory=dict)
    objects: dict[ElementTree.Element, ElementTree.Element] = field(default_factory=dict)


def _resolve_references(root: ElementTree.Element) -> _References:
    """Each <TNRef> and <Ref> must name a <TN> / <Obj> before it, or psrpcore fails on the message."""
    type_names: dict[str | None, list[str]] = {}
    objects: dict[str | None, ElementTree.Element] = {}
    found = _References()
    for el in root.iter():
        tag = el.tag
        if tag == "TN":
            names = [t.text or "" for t in el if t.tag == "T"]
            if names:
                if "RefId" not in el.attrib:
                    raise _Unhandled
                type_names[el.get("RefId")] = names
        elif tag == "Obj":
            objects[el.get("RefId")] = el
        elif tag == "TNRef":
            if el.get("RefId") not in type_names:
                raise _Unhandled
            found.type_names[el] = type_names[el.get("RefId")]
        elif tag == "Ref":
            if el.get("RefId") not in objects:
                raise _Unhandled
            found.objects[el] = objects[el.get("RefId")]
    return found


class _Reader:
    """One message's walk and where each <Ref> points; SecureStrings are left sealed."""

    def __init__(self, root: ElementTree.Element) -> None:
        self._root = root
        self._references = _resolve_references(root)
        self._resolving: set[ElementTree.Element] = set()

    def commands(self) -> list[PipelineCommand]:
        pipeline = _structure(self._root)
        _require(pipeline, (*_PIPELINE_PROPS, "PowerShell"))
        shell = _structure(pipeline["PowerShell"])
        _require(shell, _POWERSHELL_PROPS)
        extra = shell.get("ExtraCmds")
        if extra is not None and extra.tag != "Nil":
            # Several statements: each statement's Cmds are here (Cmds holds only the first).
            statements = []
            for item in _list_items(extra):
                holder = _structure(item)
                _require(holder, ("Cmds",))
                statements.append(holder["Cmds"])
        else:
            statements = [shell["Cmds"]]
        commands: list[PipelineCommand] = []
        for statement in statements:
            items = _list_items(statement)
            if not items:
                raise _Unhandled  # psrpcore fails on an empty statement
            commands.extend(self._command(item) for item in items)
            commands[-1].end_of_statement = True
        return commands

    def _command(self, item: ElementTree.Element) -> PipelineCommand:
        props = _structure(item)
        _require(props, _COMMAND_PROPS)
        name, is_script = props["Cmd"], props["IsScript"]
        if name.tag != "S" or is_script.tag != "B":
            raise _Unhandled
        command = PipelineCommand(_string(name), _bool(is_script))
        for argument in _list_items(props["Args"]):
            pair = _structure(argument)
            _require(pair, ("N", "V"))
            key = pair["N"]
            if key.tag == "Nil":
                param: str | None = None
            elif key.tag == "S":
                param = _string(key)
            else:
                raise _Unhandled
            command.parameters.append((param, self._value(pair["V"])))
        return command

    def _value(self, el: ElementTree.Element) -> Any:
        tag = el.tag
        if tag == "S":
            return _string(el)
        if tag == "B":
            return _bool(el)
        if tag == "Nil":
            return None
        limits = _INT_RANGES.get(tag)
        if limits is not None:
            text = el.text or ""
            if _INT_TEXT.fullmatch(text) is None or not limits[0] <= (number := int(text)) <= limits[1]:
                raise _Unhandled
            return number
        if tag == "Ref":
            # The same object again (psrpcore's serializer refers back to a credential used
            # twice, and to every value of the first statement from ExtraCmds).
            target = self._references.objects[el]
            if target in self._resolving:
                raise _Unhandled  # an object that contains itself
            self._resolving.add(target)
            try:
                return self._value(target)
            finally:
                self._resolving.discard(target)
        if tag != "Obj":
            raise _Unhandled  # floats, dates, SecureStrings outside a credential, ...
        if self._type_names(el)[:1] == [PSCREDENTIAL]:
            return self._credential(el)
        # Any other object is read only as a list: psrpcore makes a list of an <LST> whatever the
        # type names say, and anything else (hashtables, custom objects, <TNRef> to a
        # PSCredential's names) is not handled here.
        return [self._value(item) for item in _list_items(el)]

    def _type_names(self, obj: ElementTree.Element) -> list[str]:
        """An object's type names, as psrpcore finds them: every ``TN/T``, else its ``TNRef``."""
        names = _type_names(obj)
        if not names:
            for ref in obj:
                if ref.tag == "TNRef":
                    return self._references.type_names[ref]
        return names

    def _credential(self, el: ElementTree.Element) -> _SealedCredential:
        adapted = None
        type_name_groups = 0
        for child in el:
            if child.tag == "Props" and adapted is None:
                adapted = child
            elif child.tag in ("TN", "TNRef"):
                type_name_groups += 1
            elif child.tag != "ToString":
                raise _Unhandled
        if adapted is None or type_name_groups != 1:
            raise _Unhandled
        props = _properties(adapted)
        if set(props) != {"UserName", "Password"}:
            raise _Unhandled
        user, secret = props["UserName"], props["Password"]
        if user.tag != "S" or secret.tag != "SS":
            raise _Unhandled
        return _SealedCredential(UserName=_string(user), secret=secret.text or "")


def _require(props: dict[str, ElementTree.Element], names: tuple[str, ...]) -> None:
    for name in names:
        if name not in props:
            raise _Unhandled


def _properties(group: ElementTree.Element) -> dict[str, ElementTree.Element]:
    """A property group (<MS> or <Props>) by name; the last of duplicates wins, as in psrpcore."""
    props: dict[str, ElementTree.Element] = {}
    for child in group:
        name = child.get("N")
        if name is None:
            raise _Unhandled
        props[clixml_unescape(name)] = child
    return props


def _structure(obj: ElementTree.Element) -> dict[str, ElementTree.Element]:
    """The extended properties of a plain object (pipeline, command, argument)."""
    if obj.tag != "Obj":
        raise _Unhandled
    members = None
    for child in obj:
        tag = child.tag
        if tag == "MS" and members is None:
            members = child
        elif tag == "TN":
            # psrpcore would rehydrate a registered type name into a class of its own.
            if _type_names(obj)[:1] not in ([], ["System.Object"]):
                raise _Unhandled
        elif tag != "ToString":
            raise _Unhandled
    if members is None:
        raise _Unhandled
    return _properties(members)


def _list_items(obj: ElementTree.Element) -> list[ElementTree.Element]:
    """The entries of a list object; psrpcore makes a list of it whatever its type names."""
    if obj.tag != "Obj":
        raise _Unhandled
    entries = None
    for child in obj:
        tag = child.tag
        if tag == "LST" and entries is None:
            entries = child
        elif tag not in ("TN", "TNRef", "ToString"):
            raise _Unhandled
    if entries is None:
        raise _Unhandled
    return list(entries)


def _string(el: ElementTree.Element) -> str:
    if len(el):
        raise _Unhandled
    text = el.text or ""
    # The guest invoker's script text (kilobytes, every line break escaped) is the same in every
    # pipeline, and each fills a template's leaf with it again: its decoding is kept too.
    return _unescape_long(text) if len(text) > 512 else clixml_unescape(text)


@functools.lru_cache(maxsize=32)
def _unescape_long(text: str) -> str:
    return clixml_unescape(text)


def _bool(el: ElementTree.Element) -> bool:
    return (el.text or "").lower() == "true"  # psrpcore's own rule


def _type_names(obj: ElementTree.Element) -> list[str]:
    """An object's inline type names (every ``TN/T``)."""
    return [t.text or "" for tn in obj if tn.tag == "TN" for t in tn if t.tag == "T"]


# ---- the hook into psrpcore's server pool ----------------------------------------------------


class ParsedCreatePipelineEvent(CreatePipelineEvent):
    """A CreatePipeline read by :func:`parse_create_pipeline`: the commands, no object model."""

    def __init__(
        self,
        runspace_pool_id: uuid.UUID,
        pipeline_id: uuid.UUID,
        commands: list[PipelineCommand],
        psrpcore_view: Callable[[], PowerShell],
    ) -> None:
        # The base class would hold psrpcore's deserialized object, which is what is skipped.
        self.message_type = PSRPMessageType.CreatePipeline
        self.runspace_pool_id = runspace_pool_id
        self.pipeline_id = pipeline_id
        self.commands = commands
        self._psrpcore_view = psrpcore_view

    @property
    def pipeline(self) -> PowerShell:
        """psrpcore's view of the pipeline, built only when asked for (the server never does)."""
        return self._psrpcore_view()


class SimRunspacePool(HookedServerRunspacePool):
    """psrpcore's server pool; CreatePipeline messages are read by :func:`parse_create_pipeline`."""

    def handle_message(self, message: ReceivedMessage) -> PSRPEvent[Any, Any]:
        if message.message_type != PSRPMessageType.CreatePipeline or message.pipeline_id is None:
            return super().handle_message(message)
        data = bytes(message.data)
        cipher = session_cipher(self)
        commands = parse_create_pipeline(data, cipher.decrypt)
        if commands is None:
            return super().handle_message(message)
        if message.pipeline_id not in self.pipeline_table:
            raise PSRPCoreError(f"Failed to find pipeline for incoming event {message.pipeline_id!s}")
        # psrpcore would set pipe.metadata to its PowerShell object here; the server takes the
        # commands from the event instead, and pipe.metadata stays None.

        def psrpcore_view() -> PowerShell:
            value = deserialize(ElementTree.fromstring(data), cipher)  # noqa: S314
            if not isinstance(value, PSObject):
                raise PSRPCoreError("a CreatePipeline message that is not an object")
            return PowerShell.FromPSObjectForRemoting(value)

        return ParsedCreatePipelineEvent(self.runspace_pool_id, message.pipeline_id, commands, psrpcore_view)
