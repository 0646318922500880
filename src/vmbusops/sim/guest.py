"""Runs a script block inside a simulated guest: the PowerShell subset's evaluator.

A :class:`GuestSession` is one PowerShell Direct session. It parses a script block
(``vmbusops.sim.guest_parse``), evaluates its statements and expressions, and builds each pipeline
from the cmdlets its catalog lists (``vmbusops.sim.cmdlets``: by default every cmdlet of the
simulated guest, and the scripts it runs as simulated equivalents). Values and the exceptions that
unwind a script are in ``vmbusops.sim.guest_values``; the stage a cmdlet is written on in
``vmbusops.sim.guest_stage``.

Pipelines are push-based like PowerShell's: each command stage gets ``process(item)`` for every
object from the stage before it and hands its own output to the next stage, so a script's records
(``Write-Verbose`` inside ``ForEach-Object``, a ``Start-Sleep`` between outputs) reach the client
as they happen, not when the script ends.

Errors follow PowerShell's split: a non-terminating error (``Write-Error``, a service that is not
found) is written and the script goes on; a statement that cannot run (an unknown command, a bad
parameter) writes its error and the script goes on with the next statement; a script that cannot
be parsed does not run at all.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, bind
from vmbusops.sim.cmdlets import GUEST, GuestCatalog
from vmbusops.sim.guest_files import read_guest_file
from vmbusops.sim.guest_parse import (
    ArrayExpr,
    Assign,
    Break,
    CommandCall,
    Continue,
    ExpandString,
    Foreach,
    Literal,
    MemberExpr,
    Pipeline,
    RangeExpr,
    Script,
    ScriptBlockExpr,
    Statement,
    SubExpr,
    Throw,
    UnsupportedSyntax,
    VarRef,
    parse_script,
)
from vmbusops.sim.guest_stage import Stage
from vmbusops.sim.guest_values import (
    NO_INPUT,
    Emit,
    GuestRestarting,
    LoopBreak,
    LoopContinue,
    ScriptBlockValue,
    ScriptExit,
    ScriptTerminated,
    StatementError,
    index,
    member,
    thrown_error,
    to_int,
    to_text,
)
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.state import HostStore, guest_path_to_host, split_guest_path
from vmbusops.sim.streams import Streams

PS_VERSION_TABLE = {
    "PSVersion": "5.1.17763.5576",
    "PSEdition": "Desktop",
    "BuildVersion": "10.0.17763.5576",
    "CLRVersion": "4.0.30319.42000",
    "WSManStackVersion": "3.0",
    "PSRemotingProtocolVersion": "2.3",
    "SerializationVersion": "1.1.0.1",
}
MAX_RANGE = 10_000_000


class GuestSession:
    """One PowerShell Direct session: the guest, its streams, variables and arguments, and the
    catalog of what its scripts can call."""

    def __init__(
        self,
        *,
        spec: VMSpec,
        store: HostStore,
        streams: Streams,
        username: str,
        arguments: list[Any] | None = None,
        catalog: GuestCatalog = GUEST,
    ) -> None:
        self.spec = spec
        self.catalog = catalog
        self.store = store
        self.streams = streams
        self.username = username
        self.root = store.guest_root(spec)
        self.cwd = f"C:\\Users\\{spec.username}\\Documents"
        self.variables: dict[str, Any] = {"args": list(arguments or [])}
        # The script file running now (Write-Error names it in its FullyQualifiedErrorId), and
        # whether a ``try`` encloses the running script (statement errors then end it).
        self.script_file: str | None = None
        self.in_try = False
        # Errors kept off the stream by -ErrorAction SilentlyContinue: $Error still gains them.
        self.silenced_errors = 0

    # ---- running -------------------------------------------------------------------------

    async def run_text(self, text: str, emit: Emit) -> int:
        """Run a script block's text; returns its exit code (0 unless ``exit N``)."""
        equivalent = self.catalog.scripts.get(hashlib.sha256(text.encode("utf-8")).hexdigest())
        if equivalent is not None:
            return await equivalent(self, emit)
        try:
            script = parse_script(text)
        except UnsupportedSyntax as exc:
            self.streams.error(pserrors.not_supported_in_guest(exc.what))
            return 1
        try:
            await self.run_script(script, emit)
        except ScriptExit as exc:
            return exc.code
        except ScriptTerminated as exc:
            # A script block sent straight to Invoke-Command: its terminating error is the last
            # thing it writes. (PowerShell's Invoke-Command would also rethrow a `throw` on the
            # host's side; the guest invoker is how the agent runs scripts, and it catches them.)
            self.streams.error(exc.error)
            return 1
        except (LoopBreak, LoopContinue):
            return 0  # `break` / `continue` outside any loop leave the script
        return 0

    async def run_script(self, script: Script, emit: Emit) -> None:
        for statement in script.statements:
            try:
                await self.run_statement(statement, emit)
            except StatementError as exc:
                if self.in_try:
                    raise
                self.streams.error(exc.error)
            await self.streams.checkpoint()

    async def run_statement(self, stmt: Statement, emit: Emit) -> None:
        if isinstance(stmt, Pipeline):
            await self.run_pipeline(stmt, emit)
        elif isinstance(stmt, Assign):
            collected: list[Any] = []

            async def collect(value: Any) -> None:
                collected.append(value)

            await self.run_pipeline(stmt.value, collect)
            value = collected if len(collected) > 1 else collected[0] if collected else None
            self.set_var(stmt.var, value)
        elif isinstance(stmt, Foreach):
            items: list[Any] = []

            async def gather(value: Any) -> None:
                items.append(value)

            await self.run_pipeline(stmt.source, gather)
            for item in items:
                self.set_var(stmt.var, item)
                try:
                    await self.run_script(stmt.body, emit)
                except LoopBreak:
                    break
                except LoopContinue:
                    continue
        elif isinstance(stmt, Throw):
            value = None if stmt.value is None else await self.evaluate(stmt.value)
            raise ScriptTerminated(thrown_error(value))
        elif isinstance(stmt, Break):
            raise LoopBreak
        elif isinstance(stmt, Continue):
            raise LoopContinue
        else:
            code = 0 if stmt.code is None else to_int(await self.evaluate(stmt.code))
            raise ScriptExit(code)

    async def run_script_file(self, target: str, arguments: list[Any], emit: Emit) -> None:
        """``& <path>.ps1 args...``: ``exit N`` ends the file and sets ``$LASTEXITCODE``.

        ``break`` / ``continue`` with no loop in the file leave it and go on unwinding in the
        caller, as in PowerShell; terminating errors end the file and go on too.
        """
        path = self.absolute(target)
        host = self.host_path(path)
        if host is None or not path.casefold().endswith(".ps1") or not host.is_file():
            raise StatementError(pserrors.command_not_found(target))
        text = (await read_guest_file(host)).decode("utf-8-sig")
        await self.run_file_text(path, text, arguments, emit)

    async def run_file_text(self, path: str, text: str, arguments: list[Any], emit: Emit) -> None:
        """The script file at ``path`` (absolute), whose text is ``text``, as ``& <path> args...``.

        For a caller that has just read the file, or has just written it without a checkpoint
        since: nothing else can have changed it.
        """
        # A recognised script (the patch step's) written as a step file: Set-Content added a newline.
        scripts = self.catalog.scripts
        equivalent = scripts.get(hashlib.sha256(text.encode("utf-8")).hexdigest()) or (
            scripts.get(hashlib.sha256(text.removesuffix("\r\n").encode("utf-8")).hexdigest())
        )
        script = None
        if equivalent is None:
            try:
                script = parse_script(text)
            except UnsupportedSyntax as exc:
                raise StatementError(pserrors.not_supported_in_guest(exc.what)) from None
        variables = self.variables
        saved, saved_file = variables.get("args"), self.script_file
        variables["args"] = arguments
        self.script_file = path.rsplit("\\", 1)[-1]
        try:
            if equivalent is not None:
                variables["lastexitcode"] = await equivalent(self, emit)
            else:
                assert script is not None
                await self.run_script(script, emit)
        except GuestRestarting:
            raise
        except ScriptExit as exc:
            variables["lastexitcode"] = exc.code
        finally:
            variables["args"] = saved
            self.script_file = saved_file

    def set_var(self, var: VarRef, value: Any) -> None:
        if var.accessors or var.name.casefold().startswith("env:"):
            raise StatementError(pserrors.not_supported_in_guest(f"assigning to '${var.name}' with members"))
        self.variables[var.name.casefold()] = value

    async def run_pipeline(self, pipeline: Pipeline, emit: Emit) -> None:
        stages: list[Stage] = []
        next_emit = emit
        for element in reversed(pipeline.elements):
            stage: Stage
            if isinstance(element, CommandCall):
                stage = await self.make_command(element, next_emit)
            else:
                stage = ExpressionStage(self, element, next_emit)
            stages.append(stage)
            next_emit = stage.process
        stages.reverse()
        for stage in stages:
            await stage.begin()
        await stages[0].process(NO_INPUT)
        for stage in stages:
            await stage.end()

    async def make_command(self, call: CommandCall, emit: Emit) -> Stage:
        if call.name == "&":
            if not call.args or call.args[0][0] is not None:
                raise StatementError(pserrors.not_supported_in_guest("'&' without a command to call"))
            values = [await self.evaluate(expr, as_argument=True) for _, expr in call.args]
            if any(name is not None for name, _ in call.args[1:]):
                raise StatementError(pserrors.not_supported_in_guest("named arguments after '&'"))
            return CallOperator(self, {"target": values[0], "arguments": values[1:]}, emit)
        cls = self.catalog.cmdlets.get(call.name.casefold())
        if cls is None:
            if call.name.casefold() in self.catalog.not_simulated:
                # A real guest has it: "not recognized" would be a lie about the guest.
                raise StatementError(pserrors.not_supported_in_guest(f"the cmdlet {call.name}"))
            raise StatementError(pserrors.command_not_found(call.name))
        args: list[tuple[str | None, Any]] = []
        for name, expr in call.args:
            args.append((name, True if expr is None else await self.evaluate(expr, as_argument=True)))
        try:
            bound = bind(cls.params, cls.fq_name, args, to_text)
        except BindingError as exc:
            raise StatementError(pserrors.with_activity(exc.error, cls.name)) from None
        return cls(self, bound, emit)

    # ---- expressions ---------------------------------------------------------------------

    async def evaluate(self, expr: Any, *, as_argument: bool = False) -> Any:
        if isinstance(expr, Literal):
            return expr.value
        if isinstance(expr, VarRef):
            return self.read_var(expr)
        if isinstance(expr, ExpandString):
            return "".join(p if isinstance(p, str) else to_text(self.read_var(p)) for p in expr.parts)
        if isinstance(expr, RangeExpr):
            start, end = to_int(await self.evaluate(expr.start)), to_int(await self.evaluate(expr.end))
            if abs(end - start) > MAX_RANGE:
                raise StatementError(pserrors.not_supported_in_guest(f"ranges longer than {MAX_RANGE} items"))
            step = 1 if end >= start else -1
            return list(range(start, end + step, step))
        if isinstance(expr, ArrayExpr):
            return [await self.evaluate(item, as_argument=as_argument) for item in expr.items]
        if isinstance(expr, SubExpr):
            out: list[Any] = []

            async def collect(value: Any) -> None:
                out.append(value)

            await self.run_script(expr.body, collect)
            if expr.force_array:
                return out
            return None if not out else out[0] if len(out) == 1 else out
        if isinstance(expr, ScriptBlockExpr):
            return ScriptBlockValue(expr.body)
        if isinstance(expr, MemberExpr):
            value = await self.evaluate(expr.base)
            for name in expr.names:
                value = member(value, name)
            return value
        raise StatementError(pserrors.not_supported_in_guest(f"the expression {expr!r}"))

    def read_var(self, ref: VarRef) -> Any:
        name = ref.name.casefold()
        value: Any
        if name.startswith("env:"):
            value = self.environment().get(name[4:])
        elif name == "psitem":
            value = self.variables.get("_")
        elif name == "true":
            value = True
        elif name == "false":
            value = False
        elif name == "null":
            value = None
        elif name == "psversiontable":
            value = dict(PS_VERSION_TABLE)
        elif name == "pwd":
            value = self.cwd
        else:
            value = self.variables.get(name)
        for kind, key in ref.accessors:
            value = member(value, key) if kind == "member" else index(value, key)
        return value

    def environment(self) -> dict[str, str]:
        return {
            "computername": self.spec.guest_computer_name,
            "username": self.spec.username,
            "userdomain": self.spec.guest_computer_name,
            "systemroot": "C:\\Windows",
            "windir": "C:\\Windows",
            "systemdrive": "C:",
            "temp": "C:\\Windows\\Temp",
            "tmp": "C:\\Windows\\Temp",
            "userprofile": f"C:\\Users\\{self.spec.username}",
            "programfiles": "C:\\Program Files",
            "os": "Windows_NT",
            "processor_architecture": "AMD64",
        }

    # ---- guest file system ---------------------------------------------------------------

    def absolute(self, path: str) -> str:
        p = path.replace("/", "\\")
        if split_guest_path(p) is not None:
            return p
        if p.startswith("\\"):
            return "C:" + p
        parts = [*self.cwd.split("\\"), *p.split("\\")]
        out: list[str] = []
        for part in parts:
            if part in ("", "."):
                continue
            if part == "..":
                if len(out) > 1:
                    out.pop()
                continue
            out.append(part)
        return out[0] + "\\" + "\\".join(out[1:])

    def host_path(self, path: str) -> Path | None:
        full = self.absolute(path)
        split = split_guest_path(full)
        if split is None or split[0] != "C":
            return None
        return guest_path_to_host(self.root, full)


class ExpressionStage(Stage):
    """A pipeline element that is an expression (``$x``, ``1..3``, ``'text'``): outputs its value."""

    def __init__(self, session: GuestSession, expr: Any, emit: Emit) -> None:
        super().__init__(session, {}, emit)
        self.expr = expr

    async def process(self, item: Any) -> None:
        await self.out_all(await self.session.evaluate(self.expr))


class CallOperator(Stage):
    """``& <script file> args...`` or ``& { ... }``.

    A script file is where ``exit N`` stops: it ends the file and sets ``$LASTEXITCODE``, as in
    PowerShell. ``exit`` in a script block ends the whole script, also as in PowerShell.
    """

    name = "&"

    async def process(self, item: Any) -> None:
        target = self.bound["target"]
        if isinstance(target, ScriptBlockValue):
            await self.session.run_script(target.body, self.emit)
            return
        await self.session.run_script_file(to_text(target), list(self.bound["arguments"]), self.emit)


__all__ = ["GuestSession"]
