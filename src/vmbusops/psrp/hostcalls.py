"""What the client does with each PSRP host call (sans-IO).

Theory of operation
-------------------
The runspace pool declares a host with a UI (:func:`host_info`, the data PowerShell's own
console client sends): without one PowerShell drops the verbose, warning and debug lines of a
guest reached through ``Invoke-Command``. With one, PowerShell also *calls* that host: ``WriteVerboseLine`` and the
rest of the ``Write*`` family, ``SetShouldExit`` on ``exit N``, ``ReadLine`` and the prompts.

Measured against pwsh 7.6.9: whenever PowerShell writes a verbose, warning, debug or progress
record, or a Write-Host line, it sends the record first and the matching host call right after
it, in the same pipeline (``InternalHostUserInterface.Write*Record`` writes the record's buffer,
then calls the host) - in our own pipeline and for a guest's records relayed by Invoke-Command
alike, and so does Write-Information when its action is Continue. Write-Error and
Write-Information (by default) send the record only. ``$Host.UI.WriteVerboseLine`` (and its
warning and debug kin) sends both, like Write-Verbose; ``$Host.UI.WriteLine``, ``Write``,
``WriteErrorLine`` and ``Out-Host`` send the host call only. So a ``Write*`` host call is an *echo* when the
message just before it in its pipeline is the same record; :class:`EchoFilter` drops echoes and
every other ``Write*`` call becomes the matching record: each line reaches the caller once.

Every host call, and what the client does (:func:`action_of` implements the table):

================================  ===============================================================
host call                         what the client does
================================  ===============================================================
WriteVerboseLine                  VerboseRecord, unless it echoes the record just before it
WriteWarningLine                  WarningRecord, likewise
WriteDebugLine                    DebugRecord, likewise
WriteProgress                     ProgressRecord, likewise
Write1, Write2, WriteLine1-3      InformationRecord tagged ``PSHOST`` whose data is a
                                  HostInformationMessage (as Write-Host's), unless it echoes one
WriteErrorLine                    ErrorRecord with the line as its message (never an echo)
SetShouldExit(N)                  N becomes the pipeline's exit code
                                  (``Pipeline.exit_code``, ``PipelineStateRecord.exit_code``)
other void calls (Set* of the     nothing: no answer is expected. The RawUI setters only update
raw UI, Enter/ExitNestedPrompt,   what PowerShell caches of our HostDefaultData.
Notify*Application, Push/Pop-
Runspace, FlushInputBuffer,
SetBufferContents*, Scroll*)
ReadLine, ReadLineAsSecureString  answered at once with an error: no person is there to answer,
Prompt, PromptForCredential1/2,   so the command fails instead of hanging
PromptForChoice(MultipleSel.),
ReadKey, GetKeyAvailable
every other call expecting an     answered at once with an error (PowerShell answers the RawUI
answer (Get* of the host or its   getters from the HostDefaultData we declared and does not ask;
raw UI, GetBufferContents,        the others have no meaningful answer from an agent)
GetRunspace, GetIsRunspacePushed)
================================  ===============================================================

Measured on pwsh 7.6.9: ``$Host.UI.WriteInformation`` is no PSRP host method and reaches no
client; ``EnterNestedPrompt`` and ``GetBufferContents`` are refused by PowerShell's server itself
("Remote host method ... is not implemented") and never reach us either.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from psrpcore.types import (
    ConsoleColor,
    Coordinates,
    ErrorCategory,
    ErrorCategoryInfo,
    HostDefaultData,
    HostInfo,
    NETException,
    PSObject,
    Size,
)
from psrpcore.types import ErrorRecord as PSErrorRecord
from psrpcore.types import HostMethodIdentifier as Method

from vmbusops.psrp.convert import enum_text, progress_from_ps
from vmbusops.records import (
    DebugRecord,
    ErrorRecord,
    InformationRecord,
    ProgressRecord,
    PSObjectValue,
    Record,
    VerboseRecord,
    WarningRecord,
    value_display,
)

__all__ = [
    "HOST_INFORMATION_TYPES",
    "EchoFilter",
    "HostCallAction",
    "action_of",
    "host_info",
    "record_from_host_call",
    "refusal",
    "refusal_error_record",
]


def host_info() -> HostInfo:
    """The host the runspace pool declares: a console with a UI, as PowerShell's own client sends.

    Declaring a UI is what makes PowerShell pass on a guest's verbose, warning and debug lines
    (Invoke-Command of a remote session writes them through the host); without one they are
    dropped even with ``-Verbose``. The raw UI data is what a 120x50 console would report;
    PowerShell's server answers RawUI getters from it without a round trip.
    """
    return HostInfo(
        IsHostNull=False,
        IsHostUINull=False,
        IsHostRawUINull=False,
        UseRunspaceHost=True,
        HostDefaultData=HostDefaultData(
            ForegroundColor=ConsoleColor.Gray,
            BackgroundColor=ConsoleColor.Black,
            CursorPosition=Coordinates(X=0, Y=0),
            WindowPosition=Coordinates(X=0, Y=0),
            CursorSize=25,
            BufferSize=Size(Width=120, Height=3000),
            WindowSize=Size(Width=120, Height=50),
            MaxWindowSize=Size(Width=120, Height=50),
            MaxPhysicalWindowSize=Size(Width=240, Height=84),
            WindowTitle="vmbusops",
        ),
    )


class HostCallAction(enum.Enum):
    RECORD = "record"  # becomes a record (unless it echoes one)
    EXIT_CODE = "exit code"  # SetShouldExit: the pipeline's exit code
    IGNORE = "ignore"  # void: nothing to answer, nothing to show
    REFUSE = "refuse"  # expects an answer: answered at once with an error


_RECORD_CALLS = frozenset(
    {
        Method.WriteVerboseLine,
        Method.WriteWarningLine,
        Method.WriteDebugLine,
        Method.WriteProgress,
        Method.Write1,
        Method.Write2,
        Method.WriteLine1,
        Method.WriteLine2,
        Method.WriteLine3,
        Method.WriteErrorLine,
    }
)

#: Calls that need a person; the refusal names what was asked.
_ASKS = {
    Method.ReadLine: "read a line typed by a user",
    Method.ReadLineAsSecureString: "read a secret typed by a user",
    Method.Prompt: "prompt a user for input",
    Method.PromptForCredential1: "prompt a user for a credential",
    Method.PromptForCredential2: "prompt a user for a credential",
    Method.PromptForChoice: "ask a user to choose",
    Method.PromptForChoiceMultipleSelection: "ask a user to choose",
    Method.ReadKey: "read a key pressed by a user",
    Method.GetKeyAvailable: "check for a key pressed by a user",
}

HOST_INFORMATION_TYPES = ("System.Management.Automation.HostInformationMessage", "System.Object")
_HOST_TAG = "PSHOST"


def action_of(method: Method) -> HostCallAction:
    """What the client does with a host call (the table in the module docstring)."""
    if method in _RECORD_CALLS:
        return HostCallAction.RECORD
    if method is Method.SetShouldExit:
        return HostCallAction.EXIT_CODE
    if method.is_void():
        return HostCallAction.IGNORE
    return HostCallAction.REFUSE


def refusal(method: Method) -> str:
    """The message of the error a call that expects an answer gets."""
    asked = _ASKS.get(method)
    if asked is not None:
        return (
            f"vmbusops runs commands unattended: the command tried to {asked} ({method.name}), "
            "and no one is there to answer"
        )
    return f"vmbusops runs commands unattended and does not answer the host call {method.name}"


def refusal_error_record(method: Method) -> PSErrorRecord:
    """The error a call that expects an answer is answered with (its message is :func:`refusal`)."""
    return PSErrorRecord(
        Exception=NETException(Message=refusal(method)),
        CategoryInfo=ErrorCategoryInfo(
            Category=ErrorCategory.NotImplemented, Activity=method.name, Reason="NonInteractiveHost"
        ),
        FullyQualifiedErrorId="VmbusOpsNonInteractiveHost",
    )


def record_from_host_call(method: Method, parameters: Sequence[object]) -> Record | None:
    """The record a ``Write*`` host call stands for, or ``None`` for any other call."""
    if method is Method.WriteVerboseLine:
        return VerboseRecord(message=_text(parameters, 0))
    if method is Method.WriteWarningLine:
        return WarningRecord(message=_text(parameters, 0))
    if method is Method.WriteDebugLine:
        return DebugRecord(message=_text(parameters, 0))
    if method is Method.WriteErrorLine:
        return ErrorRecord(message=_text(parameters, 0))
    if method is Method.WriteProgress:
        progress = parameters[1] if len(parameters) > 1 else None
        if not isinstance(progress, PSObject):
            return None
        return progress_from_ps(progress)
    if method in (Method.Write1, Method.WriteLine2):
        return _host_line(_text(parameters, 0), None, None, no_newline=method is Method.Write1)
    if method in (Method.Write2, Method.WriteLine3):
        return _host_line(
            _text(parameters, 2),
            _color(parameters, 0),
            _color(parameters, 1),
            no_newline=method is Method.Write2,
        )
    if method is Method.WriteLine1:
        return _host_line("", None, None, no_newline=False)
    return None


def _host_line(text: str, foreground: str | None, background: str | None, *, no_newline: bool) -> InformationRecord:
    """What Write-Host's record carries, for a line written straight to the host."""
    return InformationRecord(
        message_data=PSObjectValue(
            type_names=HOST_INFORMATION_TYPES,
            properties=(
                ("Message", text),
                ("NoNewLine", no_newline),
                ("ForegroundColor", foreground),
                ("BackgroundColor", background),
            ),
            to_string=text,
        ),
        tags=(_HOST_TAG,),
    )


def _text(parameters: Sequence[object], index: int) -> str:
    value = parameters[index] if len(parameters) > index else None
    return "" if value is None else str.__str__(value) if isinstance(value, str) else str(value)


def _color(parameters: Sequence[object], index: int) -> str | None:
    value = parameters[index] if len(parameters) > index else None
    return enum_text(value) if isinstance(value, enum.Enum) else None


@dataclass(slots=True)
class EchoFilter:
    """Per pipeline: whether a ``Write*`` host call repeats the record just before it.

    :meth:`saw_record` is told of every record the pipeline delivers, :meth:`is_echo` of every
    record a host call stands for; a host call echoes only the message right before it.
    """

    _last: Record | None = None

    def saw_record(self, record: Record) -> None:
        self._last = record

    def is_echo(self, record: Record) -> bool:
        last, self._last = self._last, None
        if last is None or type(last) is not type(record):
            return False
        if isinstance(record, VerboseRecord | WarningRecord | DebugRecord):
            return record.message == last.message  # type: ignore[union-attr]
        if isinstance(record, ProgressRecord):
            return record == last
        if isinstance(record, InformationRecord) and isinstance(last, InformationRecord):
            # Write-Host's record (a HostInformationMessage), or Write-Information's when its
            # action is Continue: the host call writes the record's text.
            return _host_text(last) == _host_text(record)
        return False


def _host_text(record: InformationRecord) -> str:
    data = record.message_data
    # A guest's arrives as Deserialized.System.Management.Automation.HostInformationMessage.
    if isinstance(data, PSObjectValue) and data.type_names and data.type_names[0].endswith(HOST_INFORMATION_TYPES[0]):
        message = data.get("Message")
        return message if isinstance(message, str) else value_display(message)
    return value_display(data)
