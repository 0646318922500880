"""Parser for the simulated guest's PowerShell subset (see ``vmbusops.sim`` for the subset).

PowerShell tokenizes differently in expression mode (``1..3``, ``$x = 5``) and argument mode
(``Get-Content C:\\x.txt -Raw``); this parser keeps that split small: a pipeline element that starts
with a bare word is a command and everything after the word is parsed as arguments, anything else
is an expression. Constructs outside the subset raise :class:`UnsupportedSyntax` naming them, so
the simulator reports what it cannot do instead of guessing.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any, TypeAlias


class UnsupportedSyntax(Exception):
    """The script uses PowerShell outside the simulated subset (or is not valid PowerShell)."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class Tok(enum.Enum):
    NEWLINE = "newline"
    SEMI = ";"
    PIPE = "|"
    LBRACE = "{"
    RBRACE = "}"
    LPAREN = "("
    RPAREN = ")"
    AT_LPAREN = "@("
    COMMA = ","
    DOTDOT = ".."
    ASSIGN = "="
    STRING = "string"
    XSTRING = "expandable string"
    NUMBER = "number"
    VARIABLE = "variable"
    PARAM = "parameter"
    WORD = "word"
    EOF = "end of script"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    text: str
    value: Any = None
    # Whether whitespace came before the token; ``-Name:value`` and ``$x.Prop`` care.
    spaced: bool = True


_WORD_END = set(" \t\r\n|;(){},") | {"\u00a0"}
_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"


def tokenize(src: str) -> list[Token]:
    toks: list[Token] = []
    i = 0
    n = len(src)
    spaced = True
    while i < n:
        c = src[i]
        if c in " \t\r\u00a0":
            i += 1
            spaced = True
            continue
        if c == "`" and i + 1 < n and src[i + 1] in "\r\n":
            # Line continuation.
            i += 2 if src[i + 1] == "\n" else 1
            if i < n and src[i] == "\n":
                i += 1
            spaced = True
            continue
        if c == "#":
            while i < n and src[i] != "\n":
                i += 1
            continue
        if c == "<" and src.startswith("<#", i):
            end = src.find("#>", i + 2)
            if end < 0:
                raise UnsupportedSyntax("an unterminated block comment '<#'")
            i = end + 2
            spaced = True
            continue
        start = i
        if c == "\n":
            toks.append(Token(Tok.NEWLINE, "\n", spaced=spaced))
            i += 1
        elif c in ";|{}(),":
            kind = {
                ";": Tok.SEMI,
                "|": Tok.PIPE,
                "{": Tok.LBRACE,
                "}": Tok.RBRACE,
                "(": Tok.LPAREN,
                ")": Tok.RPAREN,
                ",": Tok.COMMA,
            }[c]
            if c == "|" and src.startswith("||", i):
                raise UnsupportedSyntax("the pipeline chain operator '||'")
            toks.append(Token(kind, c, spaced=spaced))
            i += 1
        elif c == "@" and src.startswith("@(", i):
            toks.append(Token(Tok.AT_LPAREN, "@(", spaced=spaced))
            i += 2
        elif c == "@":
            raise UnsupportedSyntax(f"'{src[i : i + 2]}' (hashtables, splatting and here-strings)")
        elif c == "." and src.startswith("..", i):
            toks.append(Token(Tok.DOTDOT, "..", spaced=spaced))
            i += 2
        elif c == "=" and (i + 1 >= n or src[i + 1] != "="):
            toks.append(Token(Tok.ASSIGN, "=", spaced=spaced))
            i += 1
        elif c in _SINGLE_QUOTES:
            i, text = _single_quoted(src, i)
            toks.append(Token(Tok.STRING, src[start:i], text, spaced=spaced))
        elif c == '"':
            i, parts = _double_quoted(src, i)
            toks.append(Token(Tok.XSTRING, src[start:i], parts, spaced=spaced))
        elif c == "$":
            i, var = _variable(src, i)
            toks.append(Token(Tok.VARIABLE, src[start:i], var, spaced=spaced))
        elif c.isdigit():
            i, num = _number(src, i)
            toks.append(Token(Tok.NUMBER, src[start:i], num, spaced=spaced))
        elif c == "-" and i + 1 < n and (src[i + 1].isalpha() or src[i + 1] == "_"):
            j = i + 1
            while j < n and (src[j].isalnum() or src[j] in "_-"):
                j += 1
            name = src[i + 1 : j]
            colon = j < n and src[j] == ":"
            if colon:
                j += 1
            toks.append(Token(Tok.PARAM, src[start:j], (name, colon), spaced=spaced))
            i = j
        elif c == "-" and i + 1 < n and src[i + 1].isdigit():
            i, num = _number(src, i + 1)
            toks.append(Token(Tok.NUMBER, src[start:i], -num, spaced=spaced))
        else:
            j = i
            while j < n and src[j] not in _WORD_END:
                if src[j] in "'\"$" and j > i:
                    raise UnsupportedSyntax(f"the compound argument '{src[i : j + 1]}...'")
                j += 1
            word = src[i:j]
            # A lone ``&`` is the call operator (``& "C:\\x.ps1"``, ``& { ... }``): the command name "&".
            if word != "&" and word.startswith(("[", "&", "!", ">", "<", "+")):
                raise UnsupportedSyntax(f"'{word}' (type literals, operators, redirection, call operator)")
            toks.append(Token(Tok.WORD, word, word, spaced=spaced))
            i = j
        spaced = False
    toks.append(Token(Tok.EOF, "", spaced=True))
    return toks


def _single_quoted(src: str, i: int) -> tuple[int, str]:
    out: list[str] = []
    i += 1
    while True:
        if i >= len(src):
            raise UnsupportedSyntax("an unterminated string")
        c = src[i]
        # PowerShell takes the typographic single quotes as quotes too; doubled, any is literal.
        if c in _SINGLE_QUOTES:
            if i + 1 < len(src) and src[i + 1] in _SINGLE_QUOTES:
                out.append(c)
                i += 2
                continue
            return i + 1, "".join(out)
        out.append(c)
        i += 1


_ESCAPES = {
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "v": "\v",
    "e": "\x1b",
}

# An expandable string is a list of literal text and variable references.
StringPart: TypeAlias = "str | VarRef"


@dataclass(frozen=True, slots=True)
class VarRef:
    """``$name`` (``env:NAME`` for environment variables), optionally with ``.Member`` / ``[i]``."""

    name: str
    accessors: tuple[tuple[str, Any], ...] = ()


def _double_quoted(src: str, i: int) -> tuple[int, list[StringPart]]:
    parts: list[StringPart] = []
    buf: list[str] = []
    i += 1
    while True:
        if i >= len(src):
            raise UnsupportedSyntax("an unterminated string")
        c = src[i]
        if c == '"':
            if src.startswith('""', i):
                buf.append('"')
                i += 2
                continue
            if buf:
                parts.append("".join(buf))
            return i + 1, parts
        if c == "`" and i + 1 < len(src):
            nxt = src[i + 1]
            buf.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if c == "$" and i + 1 < len(src):
            nxt = src[i + 1]
            if nxt == "(":
                raise UnsupportedSyntax("subexpressions '$(...)' inside strings")
            if nxt.isalpha() or nxt in "_{":
                if buf:
                    parts.append("".join(buf))
                    buf = []
                # Inside strings PowerShell expands only the variable: "$x.Name" is $x then ".Name".
                i, var = _variable(src, i, in_string=True)
                parts.append(var)
                continue
        buf.append(c)
        i += 1


def _variable(src: str, i: int, *, in_string: bool = False) -> tuple[int, VarRef]:
    n = len(src)
    j = i + 1
    if j < n and src[j] == "{":
        end = src.find("}", j)
        if end < 0:
            raise UnsupportedSyntax("an unterminated '${' variable")
        return end + 1, VarRef(src[j + 1 : end])
    if j < n and src[j] in "_?^$" and not (j + 1 < n and (src[j + 1].isalnum() or src[j + 1] == "_")):
        name = src[j]
        j += 1
    else:
        while j < n and (src[j].isalnum() or src[j] in "_:"):
            if src[j] == ":" and src[i + 1 : j].casefold() not in ("env", "global", "script", "local"):
                break
            j += 1
        name = src[i + 1 : j]
    if not name:
        raise UnsupportedSyntax("a '$' that is not followed by a variable name")
    if name.casefold() in ("global:", "script:", "local:") or name.endswith(":"):
        raise UnsupportedSyntax(f"the variable '${name}'")
    scope, _, rest = name.partition(":")
    if rest and scope.casefold() in ("global", "script", "local"):
        name = rest
    accessors: list[tuple[str, Any]] = []
    while not in_string and j < n:
        if src[j] == "." and j + 1 < n and (src[j + 1].isalpha() or src[j + 1] == "_"):
            k = j + 1
            while k < n and (src[k].isalnum() or src[k] == "_"):
                k += 1
            if k < n and src[k] == "(":
                raise UnsupportedSyntax(f"method calls ('.{src[j + 1 : k]}(...)')")
            accessors.append(("member", src[j + 1 : k]))
            j = k
        elif src[j] == "[":
            end = src.find("]", j)
            inner = src[j + 1 : end].strip() if end > 0 else ""
            try:
                index = int(inner)
            except ValueError:
                raise UnsupportedSyntax(f"the index expression '[{inner}]' (only integer literals)") from None
            accessors.append(("index", index))
            j = end + 1
        else:
            break
    return j, VarRef(name, tuple(accessors))


def _number(src: str, i: int) -> tuple[int, int | float]:
    n = len(src)
    j = i
    if src.startswith(("0x", "0X"), i):
        j = i + 2
        while j < n and src[j] in "0123456789abcdefABCDEF":
            j += 1
        return j, int(src[i + 2 : j], 16)
    while j < n and src[j].isdigit():
        j += 1
    is_float = False
    if j + 1 < n and src[j] == "." and src[j + 1].isdigit():
        is_float = True
        j += 1
        while j < n and src[j].isdigit():
            j += 1
    text = src[i:j]
    mult = 1
    suffix = src[j : j + 2].casefold()
    if suffix in ("kb", "mb", "gb", "tb"):
        mult = 1024 ** ("kmgt".index(suffix[0]) + 1)
        j += 2
    if j < n and (src[j].isalpha() or src[j] == "_"):
        raise UnsupportedSyntax(f"the number-like word '{src[i : j + 1]}...'")
    value: int | float = float(text) if is_float else int(text)
    return j, value * mult


# ---- AST -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class ExpandString:
    parts: tuple[StringPart, ...]


@dataclass(frozen=True, slots=True)
class RangeExpr:
    start: Expr
    end: Expr


@dataclass(frozen=True, slots=True)
class ArrayExpr:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class SubExpr:
    """``( pipeline )`` or ``@( statements )``: its output as a value."""

    body: Script
    force_array: bool = False


@dataclass(frozen=True, slots=True)
class ScriptBlockExpr:
    body: Script


@dataclass(frozen=True, slots=True)
class MemberExpr:
    """``(expression).Name.Other``."""

    base: Expr
    names: tuple[str, ...]


Expr: TypeAlias = (
    "Literal | ExpandString | VarRef | RangeExpr | ArrayExpr | SubExpr | ScriptBlockExpr | MemberExpr"
)


@dataclass(frozen=True, slots=True)
class CommandCall:
    name: str
    # (parameter name or None for a positional argument, value or None for a bare switch)
    args: tuple[tuple[str | None, Expr | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Pipeline:
    elements: tuple[CommandCall | Expr, ...]


@dataclass(frozen=True, slots=True)
class Assign:
    var: VarRef
    value: Pipeline


@dataclass(frozen=True, slots=True)
class Foreach:
    var: VarRef
    source: Pipeline
    body: Script


@dataclass(frozen=True, slots=True)
class Exit:
    code: Expr | None


@dataclass(frozen=True, slots=True)
class Throw:
    """``throw`` or ``throw <expression>``: a terminating error."""

    value: Expr | None


@dataclass(frozen=True, slots=True)
class Break:
    """``break`` (no label): leaves the innermost loop, or the script when there is none."""


@dataclass(frozen=True, slots=True)
class Continue:
    """``continue`` (no label): the innermost loop's next turn, or leaves the script."""


Statement: TypeAlias = "Pipeline | Assign | Foreach | Exit | Throw | Break | Continue"


@dataclass(frozen=True, slots=True)
class Script:
    statements: tuple[Statement, ...] = field(default=())


# Parameters that never take a value, so ``-Force C:\x`` leaves C:\x positional.
SWITCH_PARAMETERS = frozenset(
    s.casefold()
    for s in (
        "Force",
        "Recurse",
        "Completed",
        "Raw",
        "NoEnumerate",
        "File",
        "Directory",
        "PassThru",
        "Wait",
        "AsJob",
        "NoNewline",
        "Verbose",
        "Debug",
        "WhatIf",
        "Confirm",
        "Leaf",
    )
)

_UNSUPPORTED_KEYWORDS = {
    "if",
    "else",
    "elseif",
    "while",
    "do",
    "for",
    "switch",
    "function",
    "filter",
    "param",
    "try",
    "catch",
    "finally",
    "return",
    "trap",
    "begin",
    "process",
    "end",
    "class",
    "enum",
    "using",
    "data",
    "workflow",
    "until",
    "dynamicparam",
}


class _Parser:
    def __init__(self, toks: list[Token]) -> None:
        self.toks = toks
        self.pos = 0

    def peek(self, offset: int = 0) -> Token:
        return self.toks[min(self.pos + offset, len(self.toks) - 1)]

    def take(self) -> Token:
        tok = self.toks[self.pos]
        self.pos = min(self.pos + 1, len(self.toks) - 1)
        return tok

    def expect(self, kind: Tok) -> Token:
        tok = self.take()
        if tok.kind is not kind:
            raise UnsupportedSyntax(
                f"unexpected {tok.kind.value} {tok.text!r} where {kind.value!r} was expected"
            )
        return tok

    def skip_separators(self) -> None:
        while self.peek().kind in (Tok.NEWLINE, Tok.SEMI):
            self.take()

    def script(self, closers: tuple[Tok, ...]) -> Script:
        statements: list[Statement] = []
        self.skip_separators()
        while self.peek().kind not in closers:
            statements.append(self.statement())
            nxt = self.peek().kind
            if nxt not in closers and nxt not in (Tok.NEWLINE, Tok.SEMI):
                tok = self.peek()
                raise UnsupportedSyntax(f"unexpected {tok.kind.value} {tok.text!r}")
            self.skip_separators()
        return Script(tuple(statements))

    def statement(self) -> Statement:
        tok = self.peek()
        if tok.kind is Tok.WORD:
            word = tok.text.casefold()
            if word == "foreach" and self.peek(1).kind is Tok.LPAREN:
                return self.foreach()
            if word in ("exit", "throw"):
                self.take()
                value = None if self.at_statement_end() else self.expression()
                return Exit(value) if word == "exit" else Throw(value)
            if word in ("break", "continue"):
                self.take()
                if not self.at_statement_end():
                    raise UnsupportedSyntax(f"'{tok.text}' with a label")
                return Break() if word == "break" else Continue()
            if word in _UNSUPPORTED_KEYWORDS:
                raise UnsupportedSyntax(f"the '{tok.text}' keyword")
        if tok.kind is Tok.VARIABLE and self.peek(1).kind is Tok.ASSIGN:
            self.take()
            self.take()
            return Assign(tok.value, self.pipeline())
        return self.pipeline()

    def at_statement_end(self) -> bool:
        return self.peek().kind in (Tok.NEWLINE, Tok.SEMI, Tok.EOF, Tok.RBRACE, Tok.RPAREN)

    def foreach(self) -> Foreach:
        self.take()
        self.expect(Tok.LPAREN)
        var = self.expect(Tok.VARIABLE).value
        in_tok = self.expect(Tok.WORD)
        if in_tok.text.casefold() != "in":
            raise UnsupportedSyntax(f"'foreach' without 'in' (got {in_tok.text!r})")
        source = self.pipeline()
        self.expect(Tok.RPAREN)
        self.expect(Tok.LBRACE)
        body = self.script((Tok.RBRACE,))
        self.expect(Tok.RBRACE)
        return Foreach(var, source, body)

    def pipeline(self) -> Pipeline:
        elements: list[CommandCall | Expr] = [self.element(first=True)]
        while self.peek().kind is Tok.PIPE:
            self.take()
            while self.peek().kind is Tok.NEWLINE:
                self.take()
            elements.append(self.element(first=False))
        return Pipeline(tuple(elements))

    def element(self, *, first: bool) -> CommandCall | Expr:
        tok = self.peek()
        if tok.kind is Tok.WORD:
            return self.command()
        if not first:
            raise UnsupportedSyntax(
                "an expression after '|' (expressions are only allowed as the first element)"
            )
        return self.expression()

    def command(self) -> CommandCall:
        name = self.take().text
        args: list[tuple[str | None, Expr | None]] = []
        while True:
            tok = self.peek()
            if tok.kind in (Tok.PIPE, Tok.NEWLINE, Tok.SEMI, Tok.EOF, Tok.RBRACE, Tok.RPAREN):
                break
            if tok.kind is Tok.PARAM:
                self.take()
                pname, colon = tok.value
                if colon:
                    args.append((pname, self.argument()))
                    continue
                nxt = self.peek().kind
                takes_value = pname.casefold() not in SWITCH_PARAMETERS and nxt not in (
                    Tok.PARAM,
                    Tok.PIPE,
                    Tok.NEWLINE,
                    Tok.SEMI,
                    Tok.EOF,
                    Tok.RBRACE,
                    Tok.RPAREN,
                )
                args.append((pname, self.argument() if takes_value else None))
                continue
            args.append((None, self.argument()))
        return CommandCall(name, tuple(args))

    def argument(self) -> Expr:
        items = [self.arg_primary()]
        while self.peek().kind is Tok.COMMA:
            self.take()
            items.append(self.arg_primary())
        return items[0] if len(items) == 1 else ArrayExpr(tuple(items))

    def arg_primary(self) -> Expr:
        tok = self.peek()
        if tok.kind is Tok.WORD:
            self.take()
            return Literal(tok.text)
        if tok.kind is Tok.NUMBER and self.peek(1).kind is Tok.DOTDOT and not self.peek(1).spaced:
            # In argument mode ``1..3`` is the text "1..3", as in PowerShell.
            text = [self.take().text, self.take().text]
            if self.peek().kind is Tok.NUMBER and not self.peek().spaced:
                text.append(self.take().text)
            return Literal("".join(text))
        return self.primary()

    def expression(self) -> Expr:
        items = [self.range_expr()]
        while self.peek().kind is Tok.COMMA:
            self.take()
            items.append(self.range_expr())
        if self.peek().kind is Tok.PARAM:
            raise UnsupportedSyntax(f"the operator '{self.peek().text}'")
        if self.peek().kind is Tok.WORD and self.peek().text in ("+", "-", "*", "/", "%"):
            raise UnsupportedSyntax(f"arithmetic ('{self.peek().text}')")
        return items[0] if len(items) == 1 else ArrayExpr(tuple(items))

    def range_expr(self) -> Expr:
        start = self.primary()
        if self.peek().kind is Tok.DOTDOT:
            self.take()
            return RangeExpr(start, self.primary())
        return start

    def primary(self) -> Expr:
        tok = self.take()
        if tok.kind is Tok.STRING:
            return Literal(tok.value)
        if tok.kind is Tok.XSTRING:
            parts = tuple(tok.value)
            if all(isinstance(p, str) for p in parts):
                return Literal("".join(p for p in parts if isinstance(p, str)))
            return ExpandString(parts)
        if tok.kind is Tok.NUMBER:
            return Literal(tok.value)
        if tok.kind is Tok.VARIABLE:
            return tok.value  # type: ignore[no-any-return]
        if tok.kind is Tok.LPAREN:
            body = Script((self.statement_in_parens(),))
            self.expect(Tok.RPAREN)
            return self.members(SubExpr(body))
        if tok.kind is Tok.AT_LPAREN:
            body = self.script((Tok.RPAREN,))
            self.expect(Tok.RPAREN)
            return SubExpr(body, force_array=True)
        if tok.kind is Tok.LBRACE:
            body = self.script((Tok.RBRACE,))
            self.expect(Tok.RBRACE)
            return ScriptBlockExpr(body)
        raise UnsupportedSyntax(f"unexpected {tok.kind.value} {tok.text!r}")

    def members(self, base: Expr) -> Expr:
        """Member access right after ``)``: the tokenizer saw ``.Name`` as a word."""
        nxt = self.peek()
        if nxt.kind is not Tok.WORD or nxt.spaced or not nxt.text.startswith("."):
            return base
        self.take()
        names = tuple(nxt.text[1:].split("."))
        if not all(n.replace("_", "a").isalnum() for n in names):
            raise UnsupportedSyntax(f"the member access '{nxt.text}'")
        if self.peek().kind is Tok.LPAREN and not self.peek().spaced:
            raise UnsupportedSyntax(f"method calls ('{nxt.text}(...)')")
        return MemberExpr(base, names)

    def statement_in_parens(self) -> Statement:
        while self.peek().kind is Tok.NEWLINE:
            self.take()
        stmt = self.statement()
        while self.peek().kind is Tok.NEWLINE:
            self.take()
        return stmt


# A fan-out runs the same script text in every guest; the tree is frozen, so one parse serves all.
@functools.lru_cache(maxsize=512)
def parse_script(src: str) -> Script:
    """Parse a script block's text, or raise UnsupportedSyntax naming what is outside the subset."""
    parser = _Parser(tokenize(src))
    script = parser.script((Tok.EOF,))
    parser.expect(Tok.EOF)
    return script
