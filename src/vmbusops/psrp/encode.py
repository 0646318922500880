"""Fast encoding of CreatePipeline messages, by template.

Theory of operation
-------------------
psrpcore serializes a CreatePipeline message through its generic object model: ~75 objects
and ~5 ms for one ``Invoke-Command`` - the agent's largest cost per guest invocation, and it
is paid again for every guest in a fan-out. Yet the message for ``Invoke-Command -VMName X
-Credential C -ScriptBlock S`` differs from the next one only in the text of X, C and S.

So the first time a *shape* of pipeline is sent (the command names, parameter names, the
kinds of their values, and the exact value of every bool, int and None), psrpcore serializes
it once with unique marker strings in place of every string value and of every SecureString.
That output, split at the markers, is the template. Every later pipeline of the same shape
fills the markers with its own values, escaped exactly as psrpcore escapes them (CLIXML
``_xHHHH_`` escapes, then XML text escaping), and SecureStrings encrypted with the pool's
session key exactly as psrpcore encrypts them.

A script command (PSRP IsScript, such as the guest invoker's ~4 KB script) templates like a
cmdlet: its text is part of the shape, so it is serialized once per pool and its parameters
fill the slots. Anything the template cannot carry exactly - a value of another type, a nested
object - makes :meth:`CreatePipelineEncoder.encode` return ``None`` and the caller uses
psrpcore's path. Tests prove the two give byte-identical messages.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Any
from xml.etree import ElementTree

import psrpcore
from psrpcore.types import PSCredential, PSSecureString

from vmbusops.credentials import GuestCredential
from vmbusops.psrp.command import Command, Statement
from vmbusops.psrp.psrpcore_private import serialize_string, session_cipher

__all__ = ["CreatePipelineEncoder", "add_statements"]

_MAX_TEMPLATES = 256


def to_psrpcore(value: Any) -> Any:
    """A parameter value as psrpcore serializes it: a GuestCredential becomes a PSCredential."""
    if isinstance(value, GuestCredential):
        return PSCredential(UserName=value.username, Password=PSSecureString(value.password.reveal()))
    if type(value) in (list, tuple):
        return [to_psrpcore(v) for v in value]
    return value


def add_statements(ps: psrpcore.ClientPowerShell, statements: Iterable[Statement]) -> int:
    """Add statements to a psrpcore pipeline; returns the number of commands.

    A statement boundary goes *between* statements only: a trailing one would send an empty
    statement, which PowerShell refuses. Each command is sent as PowerShell's own client sends it
    (``Command.ToPSObjectForRemoting``): its properties and no ``<ToString>``.
    """
    count = 0
    first = True
    for statement in statements:
        if not statement:
            continue
        if not first:
            ps.add_statement()
        first = False
        for command in statement:
            sent = psrpcore.Command(command.name, command.is_script)
            # PowerShell's own client writes no <ToString> for a command; psrpcore would write the
            # command's whole text again there (for the guest invoker, ~4 KB more per run).
            sent.PSObject.to_string = ""
            ps.add_command(sent)
            for name, value in command.parameters.items():
                ps.add_parameter(name, to_psrpcore(value))
            for value in command.arguments:
                ps.add_argument(to_psrpcore(value))
            count += 1
    return count


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Slots:
    """Collects a pipeline's variable values while building its shape key."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.secrets: list[str] = []


def _value_key(value: Any, slots: _Slots) -> Any:
    """The shape of one parameter value, or raise LookupError when the template cannot carry it."""
    # bool before int: bool is an int subclass. psrpcore's own subclasses (PSString, PSInt...)
    # may carry type names or notes, so only the plain Python types qualify.
    if value is None or type(value) is bool:
        return ("lit", value)
    if type(value) is int:
        if not -(2**31) <= value < 2**31:
            raise LookupError("int outside Int32")
        return ("lit", value)
    if type(value) is str:
        if not value:
            return ("lit", "")  # serialized as a self-closing element: part of the shape
        slots.strings.append(value)
        return "s"
    if type(value) in (list, tuple):
        return ("list", tuple(_value_key(v, slots) for v in value))
    if type(value) is GuestCredential:
        if not value.username:
            raise LookupError("credential user name is empty")
        slots.strings.append(value.username)
        slots.secrets.append(value.password.reveal())
        return "cred"
    if type(value) is PSCredential:
        username = value.UserName
        password = value.Password
        if not isinstance(username, str) or not username:
            raise LookupError("credential user name is not plain, non-empty text")
        if not isinstance(password, PSSecureString):
            raise LookupError("credential password is not a SecureString")
        slots.strings.append(str(username))
        slots.secrets.append(str(password.decrypt()))
        return "cred"
    raise LookupError(f"no template for {type(value).__name__}")


class CreatePipelineEncoder:
    """Template cache for one runspace pool (templates embed that pool's capabilities and key)."""

    def __init__(self, pool: psrpcore.ClientRunspacePool) -> None:
        self._pool = pool
        self._nonce = secrets.token_hex(8)
        self._templates: dict[Any, tuple[str, dict[str, int]]] = {}
        self._slot_re = re.compile(rf"vmbusopsslot(\d+)x{self._nonce}")

    def _marker(self, index: int) -> str:
        return f"vmbusopsslot{index}x{self._nonce}"

    def encode(self, statements: Sequence[Statement]) -> bytes | None:
        """The CreatePipeline message body for these statements, or None to use psrpcore."""
        slots = _Slots()
        try:
            key = tuple(
                tuple(
                    (
                        command.name,
                        command.is_script,
                        tuple((name, _value_key(value, slots)) for name, value in command.parameters.items()),
                        tuple(_value_key(value, slots) for value in command.arguments),
                    )
                    for command in statement
                )
                for statement in statements
                if statement
            )
        except LookupError:
            return None
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= _MAX_TEMPLATES:
                self._templates.clear()
            template = self._build(statements, len(slots.strings), len(slots.secrets))
            self._templates[key] = template
        text, secret_slots = template
        values = [_xml_text(serialize_string(s)) for s in slots.strings]
        text = self._slot_re.sub(lambda m: values[int(m.group(1))], text)
        cipher = session_cipher(self._pool)
        for encrypted_marker, index in secret_slots.items():
            text = text.replace(encrypted_marker, cipher.encrypt(slots.secrets[index]))
        return text.encode("utf-8")

    def _build(self, statements: Sequence[Statement], n_strings: int, n_secrets: int) -> tuple[str, dict[str, int]]:
        cipher = session_cipher(self._pool)
        counters = [0, 0]
        secret_markers: dict[str, int] = {}

        def placeholder(value: Any) -> Any:
            if value is None or type(value) in (bool, int):
                return value
            if type(value) is str:
                if not value:
                    return value
                counters[0] += 1
                return self._marker(counters[0] - 1)
            if type(value) in (list, tuple):
                return [placeholder(v) for v in value]
            assert type(value) in (PSCredential, GuestCredential)
            user = self._marker(counters[0])
            counters[0] += 1
            secret = f"vmbusopssecret{counters[1]}x{self._nonce}"
            secret_markers[cipher.encrypt(secret)] = counters[1]
            counters[1] += 1
            return PSCredential(UserName=user, Password=PSSecureString(secret))

        shaped = [
            [
                Command(
                    command.name,
                    {name: placeholder(value) for name, value in command.parameters.items()},
                    [placeholder(value) for value in command.arguments],
                    is_script=command.is_script,
                )
                for command in statement
            ]
            for statement in statements
            if statement
        ]
        assert counters == [n_strings, n_secrets]
        ps = psrpcore.ClientPowerShell(self._pool)
        try:
            add_statements(ps, shaped)
            element = psrpcore.types.serialize(
                ps.metadata,
                cipher,
                our_capability=self._pool.our_capability,
                their_capability=self._pool.their_capability,
            )
        finally:
            self._pool.pipeline_table.pop(ps.pipeline_id, None)
        text = ElementTree.tostring(element, encoding="utf-8", method="xml").decode("utf-8")
        return text, secret_markers
