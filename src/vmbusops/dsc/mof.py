"""Reading MOF documents as PowerShell's ``Configuration`` keyword writes them (and schema MOFs).

A compiled configuration is a MOF file of instance declarations::

    /*
    @TargetNode='localhost'
    @GeneratedBy=Administrator
    */
    instance of MSFT_RoleResource as $MSFT_RoleResource1ref
    {
    ResourceID = "[WindowsFeature]IIS";
     Ensure = "Present";
     Name = "Web-Server";
     DependsOn = {
        "[File]Index"};
     PsDscRunAsCredential = $MSFT_Credential1ref;
     ModuleName = "PsDesiredStateConfiguration";
    ModuleVersion = "1.0";
    };
    instance of OMI_ConfigurationDocument
    { Version="2.0.0"; Name="WebConfig"; };

A resource module's ``*.schema.mof`` declares the class instead
(``[ClassVersion("1.0.0"), FriendlyName("File")] class MSFT_X : OMI_BaseResource { [Key] String Path; };``).

The grammar handled is DMTF MOF's as used by DSC: ``//`` and ``/* */`` comments, ``#pragma``
lines, qualifier lists, ``instance of C [as $alias] { name = value; ... };`` and ``class C [: B]
{ [qualifiers] Type name[]; ... };``. Values are strings (C escapes; adjacent literals
concatenate), numbers, ``True``/``False``, ``NULL``, arrays ``{a, b}`` and alias references
``$alias`` (resolved against the document's instances). Anything else is a :class:`MofSyntaxError`
with its line number. Sans-IO: text in, frozen values out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TypeAlias

from vmbusops.errors import VmbusOpsError


class MofSyntaxError(VmbusOpsError):
    """The text is not a MOF document this reader understands."""

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(f"MOF line {line}: {message}")
        self.line = line


@dataclass(frozen=True, slots=True)
class MofRef:
    """``$alias``: a reference to another instance of the same document."""

    alias: str


MofValue: TypeAlias = str | int | float | bool | None | MofRef | tuple["MofValue", ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class MofInstance:
    class_name: str
    alias: str | None
    properties: tuple[tuple[str, MofValue], ...]
    line: int

    def get(self, name: str, default: MofValue = None) -> MofValue:
        folded = name.casefold()
        for key, value in self.properties:
            if key.casefold() == folded:
                return value
        return default

    def text(self, name: str, default: str = "") -> str:
        value = self.get(name)
        return value if isinstance(value, str) else default

    def texts(self, name: str) -> tuple[str, ...]:
        value = self.get(name)
        if isinstance(value, tuple):
            return tuple(v for v in value if isinstance(v, str))
        return (value,) if isinstance(value, str) else ()

    @property
    def resource_id(self) -> str | None:
        value = self.get("ResourceID")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class MofProperty:
    name: str
    type: str
    is_array: bool
    qualifiers: tuple[tuple[str, MofValue], ...]

    def has(self, qualifier: str) -> bool:
        return any(q.casefold() == qualifier.casefold() for q, _ in self.qualifiers)


@dataclass(frozen=True, slots=True, kw_only=True)
class MofClass:
    name: str
    superclass: str | None
    qualifiers: tuple[tuple[str, MofValue], ...]
    properties: tuple[MofProperty, ...]
    line: int

    @property
    def friendly_name(self) -> str | None:
        for key, value in self.qualifiers:
            if key.casefold() == "friendlyname" and isinstance(value, str):
                return value
        return None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.properties if p.has("Key"))


@dataclass(frozen=True, slots=True, kw_only=True)
class MofDocument:
    instances: tuple[MofInstance, ...]
    classes: tuple[MofClass, ...]
    pragmas: tuple[str, ...]
    #: ``@TargetNode='...'`` from the header comment the compiler writes.
    target_node: str | None

    @property
    def resources(self) -> tuple[MofInstance, ...]:
        """The configuration's resource instances, in document order (the LCM's order)."""
        return tuple(i for i in self.instances if i.resource_id is not None)

    @property
    def configuration(self) -> MofInstance | None:
        return next((i for i in self.instances if i.class_name == "OMI_ConfigurationDocument"), None)

    def resolve(self, value: MofValue) -> MofInstance | None:
        if isinstance(value, MofRef):
            return next((i for i in self.instances if i.alias == value.alias), None)
        return None


# --- tokens ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n\f\ufeff]+)
  | (?P<comment>//[^\n]*|/\*.*?\*/)
  | (?P<pragma>\#pragma[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<char>'(?:[^'\\\n]|\\.)')
  | (?P<number>[+-]?(?:0[xX][0-9A-Fa-f]+|[0-9]+\.[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+(?:[eE][+-]?[0-9]+)?))
  | (?P<alias>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}\[\]();,=:])
    """,
    re.VERBOSE | re.DOTALL,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\"}
_TARGET = re.compile(r"@TargetNode\s*=\s*'([^']*)'")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str
    line: int


def _unescape(body: str, line: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "xX":
            m = re.match(r"[0-9A-Fa-f]{1,4}", body[i + 2 :])
            if m is None:
                raise MofSyntaxError("\\x needs hex digits", line=line)
            out.append(chr(int(m[0], 16)))
            i += 2 + len(m[0])
        else:
            raise MofSyntaxError(f"unknown escape \\{nxt}", line=line)
    return "".join(out)


def _tokens(text: str) -> tuple[list[_Tok], list[str], str | None]:
    toks: list[_Tok] = []
    pragmas: list[str] = []
    target: str | None = None
    pos = 0
    line = 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise MofSyntaxError(f"unexpected character {text[pos]!r}", line=line)
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "comment":
            if target is None and (t := _TARGET.search(value)) is not None:
                target = t[1]
        elif kind == "pragma":
            pragmas.append(value)
        elif kind != "ws":
            toks.append(_Tok(kind, value, line))
        line += value.count("\n")
        pos = m.end()
    toks.append(_Tok("eof", "", line))
    return toks, pragmas, target


# --- parser ---------------------------------------------------------------------------------


class _Parser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        if tok.kind != "eof":
            self.i += 1
        return tok

    def expect(self, text: str) -> _Tok:
        tok = self.take()
        if tok.text != text:
            raise MofSyntaxError(f"expected {text!r}, found {tok.text or 'end of file'!r}", line=tok.line)
        return tok

    def ident(self) -> _Tok:
        tok = self.take()
        if tok.kind != "ident":
            raise MofSyntaxError(f"expected a name, found {tok.text or 'end of file'!r}", line=tok.line)
        return tok

    def accept(self, text: str) -> bool:
        if self.peek().text == text:
            self.take()
            return True
        return False

    def document(self) -> tuple[list[MofInstance], list[MofClass]]:
        instances: list[MofInstance] = []
        classes: list[MofClass] = []
        while self.peek().kind != "eof":
            qualifiers = self.qualifiers()
            tok = self.peek()
            if tok.kind == "ident" and tok.text.casefold() == "instance":
                instances.append(self.instance())
            elif tok.kind == "ident" and tok.text.casefold() == "class":
                classes.append(self.klass(qualifiers))
            elif tok.text == ";":
                self.take()
            else:
                raise MofSyntaxError(
                    f"expected 'instance of' or 'class', found {tok.text or 'end of file'!r}", line=tok.line
                )
        return instances, classes

    def qualifiers(self) -> tuple[tuple[str, MofValue], ...]:
        if not self.accept("["):
            return ()
        out: list[tuple[str, MofValue]] = []
        while True:
            name = self.ident().text
            value: MofValue = True
            if self.accept("("):
                value = self.value()
                self.expect(")")
            elif self.peek().text == "{":
                value = self.value()
            elif self.accept(":"):
                # Flavors such as ": ToSubclass" carry no value we need.
                self.ident()
            out.append((name, value))
            if self.accept("]"):
                return tuple(out)
            self.expect(",")

    def instance(self) -> MofInstance:
        start = self.take()
        of = self.ident()
        if of.text.casefold() != "of":
            raise MofSyntaxError(f"expected 'of' after 'instance', found {of.text!r}", line=of.line)
        class_name = self.ident().text
        alias: str | None = None
        if self.peek().kind == "ident" and self.peek().text.casefold() == "as":
            self.take()
            tok = self.take()
            if tok.kind != "alias":
                raise MofSyntaxError(f"expected an alias like $name1ref, found {tok.text!r}", line=tok.line)
            alias = tok.text[1:]
        self.expect("{")
        props: list[tuple[str, MofValue]] = []
        seen: set[str] = set()
        while not self.accept("}"):
            self.qualifiers()
            name = self.ident()
            if name.text.casefold() in seen:
                raise MofSyntaxError(f"property {name.text} is set twice", line=name.line)
            seen.add(name.text.casefold())
            self.expect("=")
            props.append((name.text, self.value()))
            self.expect(";")
        self.expect(";")
        return MofInstance(class_name=class_name, alias=alias, properties=tuple(props), line=start.line)

    def klass(self, qualifiers: tuple[tuple[str, MofValue], ...]) -> MofClass:
        start = self.take()
        name = self.ident().text
        superclass = self.ident().text if self.accept(":") else None
        self.expect("{")
        props: list[MofProperty] = []
        while not self.accept("}"):
            quals = self.qualifiers()
            type_name = self.ident().text
            prop = self.ident().text
            is_array = False
            if self.accept("["):
                is_array = True
                self.expect("]")
            if self.accept("="):
                self.value()  # a default value; the LCM never needs it here
            self.expect(";")
            props.append(MofProperty(name=prop, type=type_name, is_array=is_array, qualifiers=quals))
        self.expect(";")
        return MofClass(
            name=name, superclass=superclass, qualifiers=qualifiers, properties=tuple(props), line=start.line
        )

    def value(self) -> MofValue:
        tok = self.take()
        if tok.kind == "string":
            parts = [_unescape(tok.text[1:-1], tok.line)]
            while self.peek().kind == "string":
                nxt = self.take()
                parts.append(_unescape(nxt.text[1:-1], nxt.line))
            return "".join(parts)
        if tok.kind == "char":
            return _unescape(tok.text[1:-1], tok.line)
        if tok.kind == "number":
            text = tok.text
            if text.lstrip("+-").lower().startswith("0x"):
                return int(text, 16)
            if any(c in text for c in ".eE"):
                return float(text)
            return int(text)
        if tok.kind == "alias":
            return MofRef(tok.text[1:])
        if tok.kind == "ident":
            word = tok.text.casefold()
            if word == "true":
                return True
            if word == "false":
                return False
            if word == "null":
                return None
            raise MofSyntaxError(f"unexpected word {tok.text!r} where a value belongs", line=tok.line)
        if tok.text == "{":
            items: list[MofValue] = []
            if self.accept("}"):
                return ()
            while True:
                items.append(self.value())
                if self.accept("}"):
                    return tuple(items)
                self.expect(",")
        raise MofSyntaxError(f"expected a value, found {tok.text or 'end of file'!r}", line=tok.line)


def parse_mof(text: str) -> MofDocument:
    """Parse a MOF document; raises :class:`MofSyntaxError` (with a line number) if it is not one."""
    toks, pragmas, target = _tokens(text)
    instances, classes = _Parser(toks).document()
    aliases = [i.alias for i in instances if i.alias is not None]
    if len(set(aliases)) != len(aliases):
        raise MofSyntaxError("an alias is declared twice", line=1)
    ids = [i.resource_id for i in instances if i.resource_id is not None]
    duplicate = next((r for r in ids if ids.count(r) > 1), None)
    if duplicate is not None:
        raise MofSyntaxError(f"resource {duplicate} is declared twice", line=1)
    return MofDocument(
        instances=tuple(instances), classes=tuple(classes), pragmas=tuple(pragmas), target_node=target
    )


def resource_ids(text: str) -> tuple[str, ...]:
    """The resource ids of a compiled configuration, in the order the LCM applies them."""
    return tuple(r.resource_id or "" for r in parse_mof(text).resources)


__all__ = [
    "MofClass",
    "MofDocument",
    "MofInstance",
    "MofProperty",
    "MofRef",
    "MofSyntaxError",
    "MofValue",
    "parse_mof",
    "resource_ids",
]
