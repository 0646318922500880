"""A pipeline stage of the guest PowerShell subset: the base every guest cmdlet is written on.

A stage is one element of a pipeline. It gets its bound parameters, ``begin()``, then
``process(item)`` for every object from the stage before it (``process(NO_INPUT)`` once when it
starts the pipeline), then ``end()``; it hands its output to ``emit``. It writes its other records
through :attr:`Stage.streams`, a view that applies its common parameters and the session's
preference variables as PowerShell does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param, require
from vmbusops.sim.guest_values import Emit, ScriptTerminated, StatementError, enumerate_value
from vmbusops.sim.streams import ForwardingStreams, SimError, Streams

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession


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
        stream (callers use it to probe, e.g. which files exist); its verbose and debug records
        are written only when its -Verbose / -Debug or the preference variables ask for them.
        """
        if self._streams is None:
            self._streams = _CmdletStreams(
                self.session,
                activity=self.name if "-" in self.name else "",
                action=self._preference("ErrorAction", "Continue"),
                verbose=self._preference("Verbose", "SilentlyContinue"),
                debug=self._preference("Debug", "SilentlyContinue"),
            )
        return self._streams

    def _preference(self, parameter: str, default: str) -> str:
        """The action for one stream, folded: the cmdlet's common parameter, else the script's
        preference variable, else PowerShell's default.

        -Verbose and -Debug are switches: present, they mean Continue (-Debug as in PowerShell 7;
        Windows PowerShell 5.1 makes it Inquire, a prompt); ``-Verbose:$false`` means
        SilentlyContinue.
        """
        value = self.bound.get(parameter)
        if value is not None and parameter in ("Verbose", "Debug"):
            value = "Continue" if value else "SilentlyContinue"
        if value is None:
            value = self.session.variables.get(f"{parameter}preference".casefold())
        return str(value or default).casefold()

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


def fq_name_of(cmdlet: str, namespace: str = "Microsoft.PowerShell.Commands") -> str:
    """The .NET class that implements ``cmdlet`` (Get-Content -> ...Commands.GetContentCommand)."""
    verb, _, noun = cmdlet.partition("-")
    return f"{namespace}.{verb}{noun}Command"


class _CmdletStreams(ForwardingStreams):
    """A cmdlet's view of the streams: its errors named after it and handled by its error action,
    its verbose and debug records written only as their preferences say.

    The error action is the cmdlet's -ErrorAction, else the script's ``$ErrorActionPreference``:
    ``Stop`` makes a non-terminating error terminating (the script ends, a ``try`` catches it);
    ``SilentlyContinue`` keeps it off the error stream but, as in PowerShell, ``$Error`` still
    gains it; ``Ignore`` drops it altogether (pwsh 7.6.9, measured).

    Verbose and debug records are written under ``Continue`` and dropped under
    ``SilentlyContinue`` (PowerShell's default) or ``Ignore``; ``Stop`` and ``Inquire`` are refused
    as unsupported rather than pretended.
    """

    def __init__(self, session: GuestSession, *, activity: str, action: str, verbose: str, debug: str) -> None:
        super().__init__(session.streams)
        self._session = session
        self._activity = activity
        self._action = action
        self._verbose = verbose
        self._debug = debug

    def error(self, error: SimError) -> None:
        error = pserrors.with_activity(error, self._activity)
        if self._action == "stop":
            raise ScriptTerminated(error)
        if self._action == "silentlycontinue":
            self._session.silenced_errors += 1
        elif self._action != "ignore":
            self._inner.error(error)

    def verbose(self, message: str) -> None:
        if _writes(self._verbose, "VerbosePreference"):
            self._inner.verbose(message)

    def debug(self, message: str) -> None:
        if _writes(self._debug, "DebugPreference"):
            self._inner.debug(message)


def _writes(action: str, preference: str) -> bool:
    """Whether a verbose or debug record is written under ``action`` (folded)."""
    if action == "continue":
        return True
    if action in ("silentlycontinue", "ignore"):
        return False
    raise StatementError(pserrors.not_supported_in_guest(f"{preference} or -{preference[:-10]} set to '{action}'"))
