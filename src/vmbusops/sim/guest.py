"""Runs a script block inside a simulated guest: the PowerShell subset's evaluator and cmdlets.

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

import abc
import datetime
import fnmatch
import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import trio

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param, bind, require
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
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.state import HostStore, guest_path_to_host, split_guest_path
from vmbusops.sim.streams import (
    ForwardingStreams,
    InformationMessage,
    ProgressUpdate,
    SimError,
    SimObject,
    Streams,
)

Emit = Callable[[Any], Awaitable[None]]
T = TypeVar("T")
NO_INPUT = object()

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


class ScriptExit(Exception):
    """``exit`` ran, or the guest is restarting: the script ends here."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class GuestRestarting(ScriptExit):
    """The guest is going down under the session: no script file boundary stops this one."""


class StatementError(Exception):
    """The statement cannot run; its error is written and the script goes on.

    Unless a ``try`` encloses the running script (the guest invoker's, around each step): then,
    as in PowerShell, the error ends the script and goes to the ``catch``.
    """

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


class ScriptTerminated(Exception):
    """A terminating error (``throw``, an error under ``-ErrorAction Stop``): the script ends."""

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


class LoopBreak(Exception):
    """``break``: unwinds to the innermost loop (or out of the script, as in PowerShell)."""


class LoopContinue(Exception):
    """``continue``: unwinds to the innermost loop's next turn (or out of the script)."""


def thrown_error(value: Any) -> SimError:
    """The ErrorRecord PowerShell makes for ``throw <value>`` (pwsh 7.6.9, measured)."""
    if value is None:
        return SimError(
            message="ScriptHalted",
            fqid="ScriptHalted",
            category="OperationStopped",
            exception_type="System.Management.Automation.RuntimeException",
        )
    message = to_text(value)
    return SimError(
        message=message,
        fqid=message,
        category="OperationStopped",
        exception_type="System.Management.Automation.RuntimeException",
        target_name=message,
        target_object=message,
    )


@dataclass(frozen=True, slots=True)
class ScriptBlockValue:
    """A ``{ ... }`` literal: a script block value, run by ForEach-Object."""

    body: Script
    text: str = ""


#: Exact scripts the simulator runs as a simulated equivalent instead of interpreting them, keyed
#: by the SHA-256 of their UTF-8 text (the patch step's Windows Update script: ``vmbusops.sim.wua``).
RECOGNISED_SCRIPTS: dict[str, Callable[[GuestSession, Emit], Awaitable[int]]] = {}


class GuestSession:
    """One PowerShell Direct session: the guest, its streams, variables and arguments."""

    def __init__(
        self,
        *,
        spec: VMSpec,
        store: HostStore,
        streams: Streams,
        username: str,
        arguments: list[Any] | None = None,
    ) -> None:
        self.spec = spec
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
        equivalent = RECOGNISED_SCRIPTS.get(hashlib.sha256(text.encode("utf-8")).hexdigest())
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
        text = (await _read_guest_file(host)).decode("utf-8-sig")
        # A recognised script (the patch step's) written as a step file: Set-Content added a newline.
        equivalent = RECOGNISED_SCRIPTS.get(hashlib.sha256(text.encode("utf-8")).hexdigest()) or (
            RECOGNISED_SCRIPTS.get(hashlib.sha256(text.removesuffix("\r\n").encode("utf-8")).hexdigest())
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
        cls = CMDLETS.get(call.name.casefold())
        if cls is None:
            if call.name.casefold() in _WINDOWS_CMDLETS_NOT_SIMULATED:
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


# ---- value helpers -------------------------------------------------------------------------


def to_text(value: Any) -> str:
    """PowerShell's string conversion of a value ($OFS is a space)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value) if value != int(value) else str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return " ".join(to_text(v) for v in value)
    if isinstance(value, dict):
        return "System.Collections.Hashtable"
    if isinstance(value, SimObject):
        return value.to_string if value.to_string is not None else value.type_names[0]
    if isinstance(value, ScriptBlockValue):
        return value.text
    return str(value)


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise StatementError(
        SimError(
            message=f'Cannot convert value "{to_text(value)}" to type "System.Int32". '
            'Error: "Input string was not in a correct format."',
            fqid="InvalidCastFromStringToInteger",
            category="InvalidArgument",
            exception_type="System.Management.Automation.RuntimeException",
        )
    )


def to_float(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    try:
        return float(to_text(value))
    except ValueError:
        return float(to_int(value))


def enumerate_value(value: Any) -> list[Any]:
    """What a pipeline sends on for a value: arrays are unrolled, everything else is one item."""
    if isinstance(value, list | tuple):
        return list(value)
    if value is None:
        return []
    return [value]


def member(value: Any, name: str) -> Any:
    folded = name.casefold()
    if isinstance(value, SimObject):
        return value.get(name)
    if isinstance(value, dict):
        for key, item in value.items():
            if str(key).casefold() == folded:
                return item
        return None
    if isinstance(value, str) and folded == "length":
        return len(value)
    if isinstance(value, list | tuple):
        if folded in ("count", "length"):
            return len(value)
        # Member enumeration: $list.Name is every item's Name.
        return [member(v, name) for v in value]
    return None


def index(value: Any, i: int) -> Any:
    if isinstance(value, list | tuple | str):
        try:
            return value[i]
        except IndexError:
            return None
    return value if i in (0, -1) and value is not None else None


# ---- pipeline stages ---------------------------------------------------------------------


class Stage:
    """One element of a pipeline. ``process(NO_INPUT)`` runs a stage that starts the pipeline."""

    name: ClassVar[str] = ""
    fq_name: ClassVar[str] = ""
    params: ClassVar[tuple[Param, ...]] = ()

    def __init__(self, session: GuestSession, bound: dict[str, Any], emit: Emit) -> None:
        self.session = session
        self.bound = bound
        self.emit = emit
        self._streams: Streams | None = None

    @property
    def streams(self) -> Streams:
        """Where this cmdlet writes: its errors carry its name as their activity, as in PowerShell.

        -ErrorAction SilentlyContinue / Ignore keep its non-terminating errors off the error
        stream (callers use it to probe, e.g. which files exist).
        """
        if self._streams is None:
            action = self.bound.get("ErrorAction")
            if action is None:
                action = self.session.variables.get("erroractionpreference")
            self._streams = _CmdletStreams(
                self.session,
                activity=self.name if "-" in self.name else "",
                action=str(action or "Continue").casefold(),
            )
        return self._streams

    async def begin(self) -> None:
        return None

    async def process(self, item: Any) -> None:
        return None

    async def end(self) -> None:
        return None

    def arg(self, name: str, default: Any = None) -> Any:
        return self.bound.get(name, default)

    def switch(self, name: str) -> bool:
        return bool(self.bound.get(name, False))

    def require(self, *names: str) -> None:
        try:
            require(self.bound, self.fq_name, *names)
        except BindingError as exc:
            raise StatementError(pserrors.with_activity(exc.error, self.name)) from None

    async def out_all(self, value: Any) -> None:
        for item in enumerate_value(value):
            await self.emit(item)


class ExpressionStage(Stage):
    def __init__(self, session: GuestSession, expr: Any, emit: Emit) -> None:
        super().__init__(session, {}, emit)
        self.expr = expr

    async def process(self, item: Any) -> None:
        await self.out_all(await self.session.evaluate(self.expr))


def _fq(cmdlet: str, namespace: str = "Microsoft.PowerShell.Commands") -> str:
    verb, _, noun = cmdlet.partition("-")
    return f"{namespace}.{verb}{noun}Command"


class WriteOutput(Stage):
    name = "Write-Output"
    fq_name = _fq(name)
    params = (Param("InputObject", 0, aliases=("Object",)), Param("NoEnumerate", switch=True))

    async def process(self, item: Any) -> None:
        if item is NO_INPUT:
            value = self.arg("InputObject")
            if self.switch("NoEnumerate"):
                await self.emit(value)
            else:
                await self.out_all(value)
        else:
            await self.emit(item)


class _CmdletStreams(ForwardingStreams):
    """A cmdlet's view of the streams: its errors named after it and handled by its error action.

    The action is the cmdlet's -ErrorAction, else the script's ``$ErrorActionPreference``:
    ``Stop`` makes a non-terminating error terminating (the script ends, a ``try`` catches it);
    ``SilentlyContinue`` keeps it off the error stream but, as in PowerShell, ``$Error`` still
    gains it; ``Ignore`` drops it altogether (pwsh 7.6.9, measured).
    """

    def __init__(self, session: GuestSession, *, activity: str, action: str) -> None:
        super().__init__(session.streams)
        self._session = session
        self._activity = activity
        self._action = action

    def error(self, error: SimError) -> None:
        error = pserrors.with_activity(error, self._activity)
        if self._action == "stop":
            raise ScriptTerminated(error)
        if self._action == "silentlycontinue":
            self._session.silenced_errors += 1
        elif self._action != "ignore":
            self._inner.error(error)


class _MessageWriter(Stage, abc.ABC):
    params = (Param("Message", 0, aliases=("Msg",)),)

    @abc.abstractmethod
    def write(self, message: str) -> None:
        """Send one message to this cmdlet's stream."""

    async def process(self, item: Any) -> None:
        message = self.arg("Message") if item is NO_INPUT else item
        self.write(to_text(message))
        await self.streams.checkpoint()


class WriteVerbose(_MessageWriter):
    name = "Write-Verbose"
    fq_name = _fq(name)

    def write(self, message: str) -> None:
        self.streams.verbose(message)


class WriteWarning(_MessageWriter):
    name = "Write-Warning"
    fq_name = _fq(name)

    def write(self, message: str) -> None:
        self.streams.warning(message)


class WriteDebug(_MessageWriter):
    name = "Write-Debug"
    fq_name = _fq(name)

    def write(self, message: str) -> None:
        self.streams.debug(message)


class WriteError(Stage):
    name = "Write-Error"
    fq_name = _fq(name)
    params = (
        Param("Message", 0, aliases=("Msg",)),
        Param("Category"),
        Param("ErrorId"),
        Param("TargetObject"),
    )

    async def process(self, item: Any) -> None:
        message = to_text(self.arg("Message") if item is NO_INPUT else item)
        error_id = self.arg("ErrorId")
        fqid = to_text(error_id) if error_id else "Microsoft.PowerShell.Commands.WriteErrorException"
        if self.session.script_file is not None:
            # Inside a script file PowerShell qualifies the id with the file's name (measured).
            fqid = f"{fqid},{self.session.script_file}"
        target = self.arg("TargetObject")
        self.streams.error(
            SimError(
                message=message,
                fqid=fqid,
                category=to_text(self.arg("Category", "NotSpecified")),
                exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
                target_name="" if target is None else to_text(target),
                target_object=target,
                activity="Write-Error",
            )
        )
        await self.streams.checkpoint()


class WriteInformation(Stage):
    name = "Write-Information"
    fq_name = _fq(name)
    params = (Param("MessageData", 0, aliases=("Msg", "Message")), Param("Tags", 1))

    async def process(self, item: Any) -> None:
        data = self.arg("MessageData") if item is NO_INPUT else item
        tags = tuple(to_text(t) for t in enumerate_value(self.arg("Tags")))
        self.streams.information(InformationMessage(message_data=data, source="Write-Information", tags=tags))
        await self.streams.checkpoint()


class WriteHost(Stage):
    """Write-Host: an information record tagged PSHOST, as PowerShell 5+ writes it (text only:
    the simulated guest keeps no colours)."""

    name = "Write-Host"
    fq_name = _fq(name)
    params = (Param("Object", 0), Param("NoNewline", switch=True), Param("Separator"),
              Param("ForegroundColor"), Param("BackgroundColor"))

    async def process(self, item: Any) -> None:
        value = self.arg("Object") if item is NO_INPUT else item
        separator = to_text(self.arg("Separator", " "))
        text = separator.join(to_text(v) for v in enumerate_value(value)) if value is not None else ""
        self.streams.information(InformationMessage(message_data=text, source="Write-Host", tags=("PSHOST",)))
        await self.streams.checkpoint()


class WriteProgress(Stage):
    name = "Write-Progress"
    fq_name = _fq(name)
    params = (
        Param("Activity", 0),
        Param("Status", 1),
        Param("Id", 2),
        Param("PercentComplete"),
        Param("SecondsRemaining"),
        Param("CurrentOperation"),
        Param("ParentId"),
        Param("Completed", switch=True),
    )

    async def process(self, item: Any) -> None:
        self.require("Activity")
        current = self.arg("CurrentOperation")
        self.streams.progress(
            ProgressUpdate(
                activity=to_text(self.arg("Activity")),
                status=to_text(self.arg("Status", "Processing")),
                activity_id=to_int(self.arg("Id", 0)),
                parent_activity_id=to_int(self.arg("ParentId", -1)),
                percent_complete=to_int(self.arg("PercentComplete", -1)),
                seconds_remaining=to_int(self.arg("SecondsRemaining", -1)),
                current_operation=None if current is None else to_text(current),
                completed=self.switch("Completed"),
            )
        )
        await self.streams.checkpoint()


class StartSleep(Stage):
    name = "Start-Sleep"
    fq_name = _fq(name)
    params = (Param("Seconds", 0, aliases=("s",)), Param("Milliseconds", aliases=("ms",)))

    async def process(self, item: Any) -> None:
        seconds = to_float(self.arg("Seconds", 0)) + to_float(self.arg("Milliseconds", 0)) / 1000
        # Real sleeping, so latency is real and a Signal (stop) cancels it.
        await trio.sleep(max(0.0, seconds))


class ForEachObject(Stage):
    name = "ForEach-Object"
    fq_name = _fq(name)
    params = (Param("Process", 0), Param("Begin"), Param("End"), Param("MemberName"))

    async def _run_block(self, block: Any, item: Any) -> None:
        if not isinstance(block, ScriptBlockValue):
            raise StatementError(pserrors.not_supported_in_guest("ForEach-Object without a script block"))
        saved = self.session.variables.get("_")
        self.session.variables["_"] = item
        try:
            await self.session.run_script(block.body, self.emit)
        finally:
            self.session.variables["_"] = saved

    async def begin(self) -> None:
        if "Begin" in self.bound:
            await self._run_block(self.bound["Begin"], None)

    async def process(self, item: Any) -> None:
        if item is NO_INPUT:
            return
        block = self.arg("Process", self.arg("MemberName"))
        if isinstance(block, str):
            await self.out_all(member(item, block))
            return
        await self._run_block(block, item)

    async def end(self) -> None:
        if "End" in self.bound:
            await self._run_block(self.bound["End"], None)


class GetService(Stage):
    name = "Get-Service"
    fq_name = _fq(name)
    params = (Param("Name", 0, aliases=("ServiceName",)), Param("DisplayName"))

    async def process(self, item: Any) -> None:
        wanted = [to_text(n) for n in enumerate_value(self.arg("Name") if item is NO_INPUT else item)]
        services = self.session.spec.services
        if not wanted:
            for svc in services:
                await self.emit(service_object(svc.name, svc.display_name, svc.status.value))
            return
        for pattern in wanted:
            hits = [s for s in services if fnmatch.fnmatchcase(s.name.casefold(), pattern.casefold())]
            if not hits and not _has_wildcard(pattern):
                self.streams.error(
                    SimError(
                        message=f"Cannot find any service with service name '{pattern}'.",
                        fqid="NoServiceFoundForGivenName,Microsoft.PowerShell.Commands.GetServiceCommand",
                        category="ObjectNotFound",
                        exception_type="Microsoft.PowerShell.Commands.ServiceCommandException",
                        target_name=pattern,
                        target_object=pattern,
                    )
                )
            for svc in hits:
                await self.emit(service_object(svc.name, svc.display_name, svc.status.value))


def service_object(name: str, display_name: str, status: str) -> SimObject:
    return SimObject(
        (
            "System.ServiceProcess.ServiceController",
            "System.ComponentModel.Component",
            "System.MarshalByRefObject",
            "System.Object",
        ),
        (("Name", name), ("ServiceName", name), ("DisplayName", display_name), ("Status", status)),
        "System.ServiceProcess.ServiceController",
    )


def _has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


class GetProcess(Stage):
    name = "Get-Process"
    fq_name = _fq(name)
    params = (Param("Name", 0, aliases=("ProcessName",)), Param("Id"))

    def _all(self) -> list[tuple[str, int]]:
        return [("System", 4), ("Idle", 0)] + [(p.name, p.id) for p in self.session.spec.processes]

    async def process(self, item: Any) -> None:
        procs = self._all()
        wanted = [to_text(n) for n in enumerate_value(self.arg("Name"))]
        if "Id" in self.bound:
            ids = [to_int(i) for i in enumerate_value(self.arg("Id"))]
            for pid in ids:
                hit = [p for p in procs if p[1] == pid]
                if not hit:
                    self.streams.error(
                        SimError(
                            message=f"Cannot find a process with the process identifier {pid}.",
                            fqid="NoProcessFoundForGivenId,Microsoft.PowerShell.Commands.GetProcessCommand",
                            category="ObjectNotFound",
                            exception_type="Microsoft.PowerShell.Commands.ProcessCommandException",
                            target_object=pid,
                        )
                    )
                for name, p in hit:
                    await self.emit(process_object(name, p))
            return
        if not wanted:
            for name, pid in procs:
                await self.emit(process_object(name, pid))
            return
        for pattern in wanted:
            hits = [p for p in procs if fnmatch.fnmatchcase(p[0].casefold(), pattern.casefold())]
            if not hits and not _has_wildcard(pattern):
                self.streams.error(
                    SimError(
                        message=f'Cannot find a process with the name "{pattern}". '
                        "Verify the process name and call the cmdlet again.",
                        fqid="NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.GetProcessCommand",
                        category="ObjectNotFound",
                        exception_type="Microsoft.PowerShell.Commands.ProcessCommandException",
                        target_name=pattern,
                        target_object=pattern,
                    )
                )
            for name, pid in hits:
                await self.emit(process_object(name, pid))


def process_object(name: str, pid: int) -> SimObject:
    return SimObject(
        (
            "System.Diagnostics.Process",
            "System.ComponentModel.Component",
            "System.MarshalByRefObject",
            "System.Object",
        ),
        (("Name", name), ("ProcessName", name), ("Id", pid)),
        f"System.Diagnostics.Process ({name})",
    )


def _path_not_found(fq: str, path: str, error_id: str = "PathNotFound") -> SimError:
    return SimError(
        message=f"Cannot find path '{path}' because it does not exist.",
        fqid=f"{error_id},{fq}",
        category="ObjectNotFound",
        exception_type="System.Management.Automation.ItemNotFoundException",
        target_name=path,
        target_object=path,
    )


class _PathCmdlet(Stage, abc.ABC):
    """Cmdlets whose -Path comes from an argument or, one by one, from the pipeline."""

    async def process(self, item: Any) -> None:
        paths = self.arg("Path") if item is NO_INPUT else item
        if paths is None and item is NO_INPUT:
            self.require("Path")
        for path in enumerate_value(paths):
            await self.one(to_text(path.get("FullName") if isinstance(path, SimObject) else path))

    @abc.abstractmethod
    async def one(self, path: str) -> None:
        """Handle one path."""


class TestPath(_PathCmdlet):
    name = "Test-Path"
    fq_name = _fq(name)
    params = (Param("Path", 0), Param("PathType"))

    async def one(self, path: str) -> None:
        host = self.session.host_path(path)
        kind = to_text(self.arg("PathType", "Any")).casefold()
        if host is None or not host.exists():
            await self.emit(False)
        elif kind == "leaf":
            await self.emit(host.is_file())
        elif kind == "container":
            await self.emit(host.is_dir())
        else:
            await self.emit(True)


class GetContent(_PathCmdlet):
    name = "Get-Content"
    fq_name = _fq(name)
    params = (Param("Path", 0), Param("Raw", switch=True), Param("TotalCount", aliases=("First", "Head")))

    async def one(self, path: str) -> None:
        host = self.session.host_path(path)
        if host is None or not host.is_file():
            self.streams.error(_path_not_found(self.fq_name, self.session.absolute(path)))
            return
        text = (await _read_guest_file(host)).decode("utf-8-sig", errors="replace")
        if self.switch("Raw"):
            await self.emit(text)
            return
        lines = text.splitlines()
        if "TotalCount" in self.bound:
            lines = lines[: to_int(self.arg("TotalCount"))]
        for line in lines:
            await self.emit(line)


class SetContent(Stage):
    name = "Set-Content"
    fq_name = _fq(name)
    # -Encoding is accepted and the file is always UTF-8 (what the agent asks for with UTF8).
    params = (Param("Path", 0), Param("Value", 1), Param("NoNewline", switch=True), Param("Encoding"))

    async def begin(self) -> None:
        self.values: list[Any] = []

    async def process(self, item: Any) -> None:
        if item is not NO_INPUT:
            self.values.append(item)

    async def end(self) -> None:
        self.require("Path")
        values = self.values or enumerate_value(self.arg("Value"))
        sep = "" if self.switch("NoNewline") else "\r\n"
        body = "".join(to_text(v) + sep for v in values)
        for path in enumerate_value(self.arg("Path")):
            full = self.session.absolute(to_text(path))
            host = self.session.host_path(full)
            if host is None or not host.parent.is_dir():
                self.streams.error(
                    SimError(
                        message=f"Could not find a part of the path '{full}'.",
                        fqid=f"GetContentWriterDirectoryNotFoundError,{self.fq_name}",
                        category="ObjectNotFound",
                        exception_type="System.IO.DirectoryNotFoundException",
                        target_name=full,
                        target_object=full,
                    )
                )
                continue
            await _write_guest_file(host, body.encode("utf-8"))


class GetFileHash(_PathCmdlet):
    name = "Get-FileHash"
    fq_name = "Microsoft.PowerShell.Commands.GetFileHashCommand"
    params = (Param("Path", 0, aliases=("LiteralPath",)), Param("Algorithm", 1))
    _ALGORITHMS: ClassVar[dict[str, str]] = {
        "sha1": "SHA1",
        "sha256": "SHA256",
        "sha384": "SHA384",
        "sha512": "SHA512",
        "md5": "MD5",
    }

    async def one(self, path: str) -> None:
        algorithm = self._ALGORITHMS.get(to_text(self.arg("Algorithm", "SHA256")).casefold())
        if algorithm is None:
            raise StatementError(
                SimError(
                    message=f"Cannot validate argument on parameter 'Algorithm'. The argument "
                    f'"{to_text(self.arg("Algorithm"))}" does not belong to the set '
                    '"SHA1,SHA256,SHA384,SHA512,MACTripleDES,MD5,RIPEMD160" specified by the ValidateSet '
                    "attribute. Supply an argument that is in the set and then try the command again.",
                    fqid=f"ParameterArgumentValidationError,{self.fq_name}",
                    category="InvalidData",
                    exception_type="System.Management.Automation.ParameterBindingValidationException",
                )
            )
        full = self.session.absolute(path)
        host = self.session.host_path(full)
        if host is None or not host.is_file():
            self.streams.error(
                SimError(
                    message=f"Cannot find path '{full}' because it does not exist.",
                    fqid=f"FileNotFound,{self.fq_name}",
                    category="ObjectNotFound",
                    exception_type="System.Management.Automation.ItemNotFoundException",
                    target_name=full,
                    target_object=full,
                )
            )
            return
        digest = await _in_guest_io(host.stat().st_size, _hash_file, host, algorithm)
        await self.emit(
            SimObject(
                (
                    "Microsoft.Powershell.Utility.FileHash",
                    "System.Management.Automation.PSCustomObject",
                    "System.Object",
                ),
                (("Algorithm", algorithm), ("Hash", digest.upper()), ("Path", full)),
            )
        )


# Guest files are real files on local disk. A few KiB costs microseconds to read or write here;
# handing it to a worker thread costs a GIL hand-off that a busy event loop delays by
# milliseconds, paid on every Get-Content / Set-Content / Get-FileHash / script call. So small
# files are done in place and only large ones go to a worker thread.
_INLINE_IO_BYTES = 64 * 1024


async def _in_guest_io(size: int, fn: Callable[..., T], *args: Any) -> T:
    if size <= _INLINE_IO_BYTES:
        result = fn(*args)
        await trio.lowlevel.checkpoint()
        return result
    return await trio.to_thread.run_sync(fn, *args)


async def _read_guest_file(path: Path) -> bytes:
    return await _in_guest_io(path.stat().st_size, path.read_bytes)  # noqa: ASYNC240 (see above)


async def _write_guest_file(path: Path, data: bytes) -> None:
    await _in_guest_io(len(data), path.write_bytes, data)


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm.lower())
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class GetChildItem(Stage):
    name = "Get-ChildItem"
    fq_name = _fq(name)
    params = (
        Param("Path", 0),
        Param("Filter", 1),
        Param("Recurse", switch=True),
        Param("File", switch=True),
        Param("Directory", switch=True),
    )

    async def process(self, item: Any) -> None:
        paths = enumerate_value(self.arg("Path", self.session.cwd) if item is NO_INPUT else item)
        for path in paths:
            full = self.session.absolute(to_text(path))
            host = self.session.host_path(full)
            if host is None or not host.exists():
                self.streams.error(_path_not_found(self.fq_name, full))
                continue
            entries = (
                [host]
                if host.is_file()
                else sorted(
                    host.rglob("*") if self.switch("Recurse") else host.iterdir(),
                    key=lambda p: (not p.is_dir(), str(p).casefold()),
                )
            )
            flt = self.arg("Filter")
            for entry in entries:
                if entry.name.startswith(".seeded-"):
                    continue
                if self.switch("File") and not entry.is_file():
                    continue
                if self.switch("Directory") and not entry.is_dir():
                    continue
                if flt is not None and not fnmatch.fnmatchcase(
                    entry.name.casefold(), to_text(flt).casefold()
                ):
                    continue
                await self.emit(self.item_object(entry))

    def item_object(self, entry: Path) -> SimObject:
        rel = entry.relative_to(self.session.root)
        full = f"{rel.parts[0]}:\\" + "\\".join(rel.parts[1:])
        stat = entry.stat()
        written = datetime.datetime.fromtimestamp(stat.st_mtime).strftime("%Y-%m-%dT%H:%M:%S")
        if entry.is_dir():
            return SimObject(
                (
                    "System.IO.DirectoryInfo",
                    "System.IO.FileSystemInfo",
                    "System.MarshalByRefObject",
                    "System.Object",
                ),
                (
                    ("Name", entry.name),
                    ("FullName", full),
                    ("Mode", "d-----"),
                    ("LastWriteTime", written),
                    ("PSIsContainer", True),
                ),
                entry.name,
            )
        return SimObject(
            ("System.IO.FileInfo", "System.IO.FileSystemInfo", "System.MarshalByRefObject", "System.Object"),
            (
                ("Name", entry.name),
                ("FullName", full),
                ("Length", stat.st_size),
                ("Mode", "-a----"),
                ("LastWriteTime", written),
                ("PSIsContainer", False),
            ),
            entry.name,
        )


class GetHotFix(Stage):
    name = "Get-HotFix"
    fq_name = "Microsoft.PowerShell.Commands.GetHotFixCommand"
    params = (Param("Id", 0, aliases=("HFID",)),)

    async def process(self, item: Any) -> None:
        wanted = {to_text(i).casefold() for i in enumerate_value(self.arg("Id"))}
        for fix in self.session.spec.hotfixes:
            if wanted and fix.id.casefold() not in wanted:
                continue
            await self.emit(
                SimObject(
                    (
                        "System.Management.ManagementObject#root\\cimv2\\Win32_QuickFixEngineering",
                        "System.Management.ManagementObject",
                        "System.Object",
                    ),
                    (
                        ("Source", self.session.spec.guest_computer_name),
                        ("HotFixID", fix.id),
                        ("Description", fix.description),
                        ("InstalledOn", fix.installed_on),
                        ("InstalledBy", "NT AUTHORITY\\SYSTEM"),
                    ),
                    f"\\\\{self.session.spec.guest_computer_name}\\root\\cimv2:Win32_QuickFixEngineering"
                    f'.HotFixID="{fix.id}",ServicePackInEffect=""',
                )
            )
        missing = wanted - {f.id.casefold() for f in self.session.spec.hotfixes}
        for fix_id in sorted(missing):
            self.streams.error(
                SimError(
                    message="Cannot find the requested hotfix on the "
                    f"'{self.session.spec.guest_computer_name}' computer. "
                    "Verify the input and Run the command again.",
                    fqid=f"GetHotFixNoEntriesFound,{self.fq_name}",
                    category="ObjectNotFound",
                    exception_type="System.ArgumentException",
                    target_object=fix_id,
                )
            )


class RestartComputer(Stage):
    name = "Restart-Computer"
    fq_name = _fq(name)
    params = (Param("Force", switch=True), Param("ComputerName", 0))

    async def process(self, item: Any) -> None:
        spec = self.session.spec
        boot = self.session.store.lab.host.boot_seconds
        clock = self.session.store.clock
        self.session.store.update(spec, lambda rt: rt.started(clock(), boot))
        # The guest goes down under the session: nothing after this statement runs.
        raise GuestRestarting(0)


class SetExecutionPolicy(Stage):
    """The simulated guest has no execution policy: accepted, changes nothing."""

    name = "Set-ExecutionPolicy"
    fq_name = _fq(name, "Microsoft.PowerShell.Security")
    params = (Param("ExecutionPolicy", 0), Param("Scope", 1), Param("Force", switch=True))


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


class Hostname(Stage):
    name = "hostname"
    fq_name = "hostname.exe"

    async def process(self, item: Any) -> None:
        await self.emit(self.session.spec.guest_computer_name)


class CmdExe(Stage):
    """``cmd.exe /c "..."``: a native command, as Windows PowerShell 5.1 remoting delivers one.

    What it models is what native tools do to a PowerShell Direct session: stdout lines are output
    strings; each stderr line becomes an error record (the first ``NativeCommandError``, the rest
    ``NativeCommandErrorMessage``, exception RemoteException, target the line), which the script's
    ``$ErrorActionPreference = 'Stop'`` makes terminating, as in Windows PowerShell 5.1 (PowerShell
    7.2 and later leave native stderr alone); the exit code sets ``$LASTEXITCODE``. Of cmd's
    language it runs ``echo TEXT``, ``echo TEXT 1>&2`` (or ``>&2``) and ``exit /b N``, joined with
    ``&`` or ``&&``; anything else is refused as unsupported, never faked.
    """

    name = "cmd.exe"
    fq_name = "cmd.exe"
    params = (Param("Switch", 0), Param("Command", 1))

    async def process(self, item: Any) -> None:
        switch = to_text(self.bound.get("Switch") or "").casefold()
        if switch not in ("/c", "/s"):
            raise StatementError(pserrors.not_supported_in_guest(f"cmd.exe {switch or 'without /c'}"))
        code, stderr_lines = 0, 0
        # `&` joins commands, except where it is part of a redirection such as `1>&2`.
        for part in re.split(r"(?<!>)&&?", to_text(self.bound.get("Command") or "")):
            command = part.strip()
            exited = re.fullmatch(r"exit\s+/b\s+(-?[0-9]+)", command, re.IGNORECASE)
            if exited:
                code = int(exited[1])
                break
            echo = re.fullmatch(r"echo\s+(.*?)\s*(1?>&2)?", command, re.IGNORECASE | re.DOTALL)
            if echo is None:
                raise StatementError(pserrors.not_supported_in_guest(f"the cmd.exe command {command!r}"))
            if echo[2]:
                stderr_lines += 1
                self.streams.error(
                    SimError(
                        message=echo[1],
                        fqid="NativeCommandError" if stderr_lines == 1 else "NativeCommandErrorMessage",
                        category="NotSpecified",
                        exception_type="System.Management.Automation.RemoteException",
                        target_name=echo[1],
                        target_object=echo[1],
                    )
                )
            else:
                await self.emit(echo[1])
            await self.streams.checkpoint()
        self.session.variables["lastexitcode"] = code


# Cmdlets every Windows guest has that the simulated guest does not run: refused as unsupported,
# never reported as unknown. (Read-Host and Get-Credential would prompt; the agent answers any
# prompt with an error, which only a real host or pwsh-lab can show. New-Object stays unknown:
# the Windows Update scripts' COM objects are what the simulator recognises instead.)
_WINDOWS_CMDLETS_NOT_SIMULATED = frozenset(
    name.casefold()
    for name in (
        "Read-Host", "Get-Credential", "Get-Item", "Get-ItemProperty", "Set-ItemProperty", "New-Item",
        "Remove-Item", "Copy-Item", "Move-Item", "Rename-Item", "Get-Date", "Select-Object", "Where-Object",
        "Sort-Object", "Measure-Object", "Out-File", "Out-Null", "Out-String", "Add-Content", "Get-Command",
        "Get-Module", "Import-Module", "Invoke-WebRequest", "Invoke-RestMethod", "Start-Process",
        "Stop-Process", "Start-Service", "Stop-Service", "Restart-Service", "Set-Service", "Get-WmiObject",
        "Get-CimInstance", "Get-NetIPAddress", "Get-WindowsFeature", "Install-WindowsFeature",
        "Get-ScheduledTask", "ConvertTo-Json", "ConvertFrom-Json", "Test-Connection", "Get-EventLog",
        "Get-WinEvent", "Get-Acl", "Set-Acl", "Get-Member", "Format-Table", "Format-List",
    )
)

CMDLETS: dict[str, type[Stage]] = {
    cls.name.casefold(): cls
    for cls in (
        WriteOutput,
        WriteVerbose,
        WriteWarning,
        WriteDebug,
        WriteError,
        WriteInformation,
        WriteHost,
        WriteProgress,
        StartSleep,
        ForEachObject,
        GetService,
        GetProcess,
        TestPath,
        GetContent,
        SetContent,
        GetFileHash,
        GetChildItem,
        GetHotFix,
        RestartComputer,
        SetExecutionPolicy,
        Hostname,
        CmdExe,
    )
}
for _alias, _target in {
    "%": "foreach-object",
    "foreach": "foreach-object",
    "echo": "write-output",
    "write": "write-output",
    "sleep": "start-sleep",
    "gsv": "get-service",
    "gps": "get-process",
    "ps": "get-process",
    "gc": "get-content",
    "cat": "get-content",
    "type": "get-content",
    "gci": "get-childitem",
    "dir": "get-childitem",
    "ls": "get-childitem",
    "hostname.exe": "hostname",
    "cmd": "cmd.exe",
}.items():
    CMDLETS[_alias] = CMDLETS[_target]

__all__ = ["CMDLETS", "GuestRestarting", "GuestSession", "ScriptExit", "StatementError"]
