"""Every private name of psrpcore vmbusops relies on, in one list, used from one module.

:mod:`vmbusops.psrp.psrpcore_private` is the only place that touches psrpcore's private API. The
first tests check each name it uses in the installed psrpcore, with the shape the module relies
on, so an upgrade that renames or reshapes one fails here, by name. The others scan
``src/vmbusops`` and fail if any other file reaches into psrpcore: imports a private module or
name, or touches a private attribute of a psrpcore object (one psrpcore's own classes define).

Without types a scan cannot tell a psrpcore object from one of ours, so it goes by name: a
private name psrpcore defines is a reach into psrpcore unless the same file defines it for a
class of its own (``Secret._value`` is ours) and reads it on something other than a
subclass of psrpcore's. A subclass of a psrpcore class may not touch, override or assign any
of psrpcore's private names on ``self`` at all.
"""

from __future__ import annotations

import ast
import inspect
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psrpcore
from psrpcore.types import PSRPMessageType

from vmbusops.psrp import psrpcore_private

SRC = Path(__file__).resolve().parents[2] / "src" / "vmbusops"
PRIVATE_MODULE = "vmbusops.psrp.psrpcore_private"
PRIVATE_FILE = SRC / "psrp" / "psrpcore_private.py"

#: What ``psrpcore_private`` touches: private modules and names by their full name, private
#: attributes of psrpcore's pools (``RunspacePool``, the base of client and server) by ``.name``.
PRIVATE_NAMES = frozenset(
    {
        "psrpcore._client._ClientPipeline",
        "psrpcore._payload.PSRPMessage",
        "psrpcore._payload.create_message",
        "psrpcore.types._base.TypeRegistry",
        "psrpcore.types._complex.RemoteCommandInfo",
        "psrpcore.types._serializer._serialize_string",
        "._send_buffer",
        "._fragment_counter",
        "._cipher",
        "._process_message",
    }
)


# -- the names, in the installed psrpcore ----------------------------------------------------------


def test_the_private_modules_and_names_are_there() -> None:
    from psrpcore._client import _ClientPipeline
    from psrpcore._payload import PSRPMessage, create_message
    from psrpcore.types._base import TypeRegistry
    from psrpcore.types._complex import RemoteCommandInfo
    from psrpcore.types._serializer import _serialize_string

    assert issubclass(psrpcore.ClientPowerShell, _ClientPipeline)
    assert list(inspect.signature(_ClientPipeline).parameters) == ["runspace_pool", "pipeline_id"]
    assert list(inspect.signature(create_message).parameters)[:5] == [
        "client", "message_type", "data", "runspace_pool_id", "pipeline_id",
    ]  # fmt: skip
    assert list(inspect.signature(PSRPMessage).parameters)[:6] == [
        "message_type", "data", "runspace_pool_id", "pipeline_id", "object_id", "stream_type",
    ]  # fmt: skip
    registry = TypeRegistry().type_registry
    assert isinstance(registry, dict)
    assert "System.Management.Automation.ErrorRecord" in registry
    assert RemoteCommandInfo._fields == ("CommandType", "Name", "Definition", "Visibility")
    assert _serialize_string("a_x0041_\n") == "a_x005F_x0041__x000A_"


def test_the_private_pool_attributes_are_there() -> None:
    for pool in (psrpcore.ClientRunspacePool(), psrpcore.ServerRunspacePool()):
        assert isinstance(pool._send_buffer, list)
        assert isinstance(pool._cipher, psrpcore.PSRemotingCrypto)
        assert callable(pool._process_message)
        assert list(inspect.signature(pool._process_message).parameters) == ["message"]
        first = pool._fragment_counter
        assert pool._fragment_counter == first + 1  # reading it takes an id


def test_the_module_touches_exactly_the_listed_names() -> None:
    touched = {
        reach.name for reach in _reaches(PRIVATE_FILE.read_text(encoding="utf-8"), private_module=True)
    }
    assert touched == PRIVATE_NAMES


def test_a_client_message_queued_outside_psrpcore_goes_out_as_psrpcore_sends_it() -> None:
    pool = psrpcore.ClientRunspacePool()
    pipeline_id = uuid.uuid4()
    psrpcore_private.queue_client_message(pool, PSRPMessageType.CreatePipeline, b"<Obj/>", pipeline_id)
    assert psrpcore_private.has_queued_messages(pool)
    payload = pool.data_to_send()
    assert payload is not None
    assert payload.pipeline_id == pipeline_id
    assert payload.data.endswith(b"<Obj/>")
    assert not psrpcore_private.has_queued_messages(pool)


def test_the_server_hook_sees_every_message_and_psrpcore_still_handles_it() -> None:
    seen: list[PSRPMessageType] = []

    class Recording(psrpcore_private.HookedServerRunspacePool):
        def handle_message(self, message: psrpcore_private.ReceivedMessage) -> psrpcore.PSRPEvent[Any, Any]:
            seen.append(message.message_type)
            return super().handle_message(message)

    client, server = psrpcore.ClientRunspacePool(), Recording()
    client.open()
    server.receive_data(client.data_to_send())  # type: ignore[arg-type]
    while server.next_event() is not None:
        pass
    assert seen == [PSRPMessageType.SessionCapability, PSRPMessageType.InitRunspacePool]
    taken = psrpcore_private.take_queued_messages(server)
    assert [m.message_type for m in taken][:1] == [PSRPMessageType.SessionCapability]
    assert psrpcore_private.take_queued_messages(server) == []
    assert server.state == psrpcore.types.RunspacePoolState.Opened


# -- nothing else reaches in -------------------------------------------------------------------------


def test_no_other_source_file_touches_psrpcore_privates() -> None:
    found = {
        f"{path.relative_to(SRC)}:{reach.line}: {reach.name}"
        for path in SRC.rglob("*.py")
        if path != PRIVATE_FILE
        for reach in _reaches(path.read_text(encoding="utf-8"))
    }
    assert sorted(found) == []


def test_the_scan_finds_each_kind_of_reach() -> None:
    source = """
import psrpcore
import psrpcore._payload
from psrpcore._client import _ClientPipeline
from psrpcore.types._serializer import deserialize
from psrpcore import ServerRunspacePool
from vmbusops.psrp.psrpcore_private import HookedServerRunspacePool

x = psrpcore.types._base.TypeRegistry
pool = psrpcore.ClientRunspacePool()
pool._send_buffer.append(1)
getattr(pool, "_cipher")

class Ours:
    def __init__(self): self._value = 1
    def same(self, other): return other._value

class Theirs(ServerRunspacePool):
    def _process_message(self, m): return super()._process_message(m)

class Hooked(HookedServerRunspacePool):
    def handle(self): self._fragment_counter = 0
"""
    lines = sorted((reach.line, reach.name) for reach in _reaches(source))
    assert lines == [
        (3, "psrpcore._payload"),
        (4, "psrpcore._client._ClientPipeline"),
        (5, "psrpcore.types._serializer.deserialize"),
        (9, "psrpcore.types._base.TypeRegistry"),
        (11, "._send_buffer"),
        (12, "._cipher"),
        (19, "._process_message"),
        (19, "._process_message"),
        (22, "._fragment_counter"),
    ]
    assert _reaches("import psrpcore\npsrpcore.ClientRunspacePool().pipeline_table.clear()\n") == []


# -- the scan -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reach:
    line: int
    name: str  # a private module or name in full, or a private attribute as ``.name``


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _psrpcore_private_attributes() -> frozenset[str]:
    """Every private attribute or method name psrpcore's own classes define."""
    names: set[str] = set()
    for path in Path(psrpcore.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        names.add(item.name)
                    elif isinstance(item, ast.Assign | ast.AnnAssign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        names.update(t.id for t in targets if isinstance(t, ast.Name))
    return frozenset(n for n in names if _is_private(n))


_PSRPCORE_PRIVATE = _psrpcore_private_attributes()


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _reaches(source: str, *, private_module: bool = False) -> list[_Reach]:
    """Where ``source`` touches psrpcore's private modules, names or attributes.

    ``private_module``: the source is psrpcore_private itself, whose own imports from
    psrpcore are what it wraps (so a name imported from it is not yet a psrpcore name).
    """
    tree = ast.parse(source)
    found: list[_Reach] = []
    modules: set[str] = set()  # local names bound to psrpcore modules
    classes: set[str] = set()  # local names bound to psrpcore's classes, or our subclasses of them
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "psrpcore":
                    if any(_is_private(p) for p in alias.name.split(".")):
                        found.append(_Reach(node.lineno, alias.name))
                    modules.add(alias.asname or "psrpcore")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] == "psrpcore":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if any(_is_private(p) for p in full.split(".")):
                        found.append(_Reach(node.lineno, full))
                    classes.add(alias.asname or alias.name)
            elif node.module == PRIVATE_MODULE and not private_module:
                classes.update(alias.asname or alias.name for alias in node.names)

    def derives(cls: ast.ClassDef) -> bool:
        for base in cls.bases:
            parts = _dotted(base)
            if parts and (parts[0] in modules or parts[0] in classes):
                return True
        return False

    derived: list[ast.ClassDef] = []
    own: set[str] = set()  # private names this file defines for classes of its own
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            if derives(node):
                derived.append(node)
                classes.add(node.name)
                continue
            for item in ast.walk(node):
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    own.add(item.name)
                elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                    own.add(item.attr)
    inside_derived = {id(n) for cls in derived for n in ast.walk(cls)}

    inner: set[int] = set()  # the shorter chains inside a dotted name already reported
    for node in ast.walk(tree):  # breadth first: a dotted name before the chains inside it
        if isinstance(node, ast.Attribute):
            if id(node) in inner:
                continue
            parts = _dotted(node)
            if parts and parts[0] in modules and any(_is_private(p) for p in parts[1:]):
                found.append(_Reach(node.lineno, ".".join(parts)))
                inner.update(id(n) for n in ast.walk(node.value))
                continue
            if node.attr not in _PSRPCORE_PRIVATE:
                continue
            receiver = node.value
            on_self = (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")) or (
                isinstance(receiver, ast.Call)
                and isinstance(receiver.func, ast.Name)
                and receiver.func.id == "super"
            )
            # On a subclass of psrpcore's, even a name this file also uses is psrpcore's.
            if (id(node) in inside_derived and on_self) or node.attr not in own:
                found.append(_Reach(node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
                name = node.args[1]
                if (
                    isinstance(name, ast.Constant)
                    and name.value in _PSRPCORE_PRIVATE
                    and name.value not in own
                ):
                    found.append(_Reach(node.lineno, f".{name.value}"))
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and id(node) in inside_derived
            and node.name in _PSRPCORE_PRIVATE
        ):
            found.append(_Reach(node.lineno, f".{node.name}"))  # an override of psrpcore's
    return found
