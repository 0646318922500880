"""vmbusops' guest invoker, run natively: the one script command the simulated host accepts.

Theory of operation
-------------------
The agent runs every guest step through ``Invoke-VmbusOpsGuest.ps1`` (package data of
``vmbusops.guestops``, read here as a file, never imported): sent as a PSRP script command whose
text is exactly that file, or called by name as the function ``Invoke-VmbusOpsGuest`` that a JEA
role capability defines with the same body. The simulator recognises the script by the SHA-256 of
its text; any other script command is refused with an error that says so.

:func:`bind_invoker` binds the parameters as PowerShell's binder binds the script's ``param``
block: the VMName / VMId parameter sets, ``[pscredential]``, ``[string[]]`` (AllowEmptyString),
``[int[]]``, ``[ValidatePattern]`` on RunId, ``[object[]]`` with its default, with the error texts,
ids and exception types pwsh 7.6.9 gives (measured over PSRP). A script command's binding errors
carry a bare FullyQualifiedErrorId and no activity; the function's carry ``,Invoke-VmbusOpsGuest``
and the function's name as activity. Two differences, said here rather than pretended: a missing
mandatory parameter or a credential given as text is always refused, where PowerShell would prompt
through the client's host UI if the pool declared one; and positional arguments (PowerShell's
automatic positions) are refused as unsupported.

:func:`run_guest_wrapper` is the script block the invoker hands to ``Invoke-Command``, done
natively in the guest session (its text is in the ``.ps1``): for each step an information record
``vmbusops-step begin N`` tagged ``vmbusops.step``; the step's text written to
``$env:TEMP\\vmbusops\\<RunId>-<N>.ps1`` (UTF-8 with a BOM, as Windows PowerShell 5.1's
``Set-Content -Encoding UTF8`` writes it) and run as a script file with the arguments, inside the
wrapper's ``try`` and its loop of one; the file removed; ``vmbusops-step end N exit=CODE
errors=COUNT``, COUNT being the error records the step wrote other than native stderr lines (what
the wrapper counts in ``$Error``); a code or a count other than 0 ends the batch. Inside that ``try`` PowerShell sends statement-terminating errors
(an unknown command, a parameter that does not bind) to the ``catch`` too, so they end the step
with code 1, like ``throw``. The ``catch`` rewrites the record with ``Write-Error -ErrorRecord``,
which makes its activity ``Write-Error`` and drops the ``,Command`` qualifier from its id (measured).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

import trio

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param, bind
from vmbusops.sim.guest import GuestSession
from vmbusops.sim.guest_values import (
    Emit,
    LoopBreak,
    LoopContinue,
    ScriptTerminated,
    StatementError,
    thrown_error,
    to_text,
)
from vmbusops.sim.streams import ForwardingStreams, InformationMessage, SimError, Streams

INVOKER_FUNCTION: Final = "Invoke-VmbusOpsGuest"
INVOKER_TEXT: Final = (
    resources.files("vmbusops")
    .joinpath("guestops", "powershell", "Invoke-VmbusOpsGuest.ps1")
    .read_text(encoding="utf-8")
)
INVOKER_SHA256: Final = hashlib.sha256(INVOKER_TEXT.encode("utf-8")).hexdigest()
MARKER_TAG: Final = "vmbusops.step"
RUN_ID_PATTERN: Final = "^[A-Za-z0-9-]{1,64}$"

_BINDING = "System.Management.Automation.ParameterBindingException"
_VALIDATION = "System.Management.Automation.ParameterBindingValidationException"
_TRANSFORMATION = "System.Management.Automation.ParameterBindingArgumentTransformationException"
_PARAMS = (
    Param("VMName"),
    Param("VMId"),
    Param("Credential"),
    Param("Script"),
    Param("StepIndex"),
    Param("RunId"),
    Param("ArgumentList"),
)
_MANDATORY = ("Credential", "Script", "StepIndex", "RunId")
_INT32 = (-(2**31), 2**31 - 1)


def is_invoker_script(text: str) -> bool:
    # Equal text is equal SHA-256; comparing the text spares hashing it on every call.
    return text == INVOKER_TEXT


@dataclass(frozen=True, slots=True)
class InvokerCall:
    """The invoker's bound parameters."""

    vm_name: str | None
    vm_id: str | None
    credential: Any = dataclasses.field(repr=False)
    scripts: tuple[str, ...]
    step_indices: tuple[int, ...]
    run_id: str
    arguments: tuple[Any, ...]


class _Binder:
    """Errors shaped as PowerShell shapes them for a script command or for the function."""

    def __init__(self, *, as_function: bool) -> None:
        self.as_function = as_function

    def error(self, error_id: str, message: str, category: str, exception_type: str) -> BindingError:
        if self.as_function:
            fqid, activity = f"{error_id},{INVOKER_FUNCTION}", INVOKER_FUNCTION
        else:
            fqid, activity = error_id, ""
        return BindingError(
            SimError(
                message=message,
                fqid=fqid,
                category=category,
                exception_type=exception_type,
                activity=activity,
            )
        )

    def transformation(self, name: str, detail: str) -> BindingError:
        return self.error(
            "ParameterArgumentTransformationError",
            f"Cannot process argument transformation on parameter '{name}'. {detail}",
            "InvalidData",
            _TRANSFORMATION,
        )

    def not_allowed(self, name: str, what: str) -> BindingError:
        ids = {"null": "NullNotAllowed", "an empty string": "EmptyStringNotAllowed", "an empty array": "EmptyArrayNotAllowed"}
        return self.error(
            f"ParameterArgumentValidationError{ids[what]}",
            f"Cannot bind argument to parameter '{name}' because it is {what}.",
            "InvalidData",
            _VALIDATION,
        )

    def rebadge(self, exc: BindingError) -> BindingError:
        """The shared binder's error (named for a cmdlet) as this command's."""
        error_id = exc.error.fqid.split(",", 1)[0]
        return self.error(error_id, exc.error.message, exc.error.category, exc.error.exception_type)

    # ---- one parameter each ---------------------------------------------------------------

    def string(self, name: str, value: Any, *, mandatory: bool) -> str:
        if isinstance(value, list):
            raise self.transformation(name, "Cannot convert value to type System.String.")
        text = to_text(value)
        if mandatory and text == "":
            raise self.not_allowed(name, "an empty string")
        return text

    def guid(self, name: str, value: Any) -> str:
        if value is None:
            raise self.transformation(name, 'Cannot convert null to type "System.Guid".')
        if isinstance(value, list):
            raise self.transformation(name, "Cannot convert value to type System.Guid.")
        text = to_text(value)
        try:
            return str(uuid.UUID(text.strip()))
        except ValueError:
            raise self.transformation(
                name, f'Cannot convert value "{text}" to type "System.Guid". Error: "Unrecognized Guid format."'
            ) from None

    def credential(self, name: str, value: Any) -> Any:
        if hasattr(value, "UserName") and hasattr(value, "Password"):
            return value
        if value is None or isinstance(value, str):
            # PowerShell would ask the host for a credential; without a UI to ask it fails so.
            raise self.transformation(
                name,
                "A command that prompts the user failed because the host program or the command type "
                "does not support user interaction. The host was attempting to request confirmation "
                "with the following message: Enter your credentials.",
            )
        raise self.transformation(name, "userName")

    def strings(self, name: str, value: Any) -> tuple[str, ...]:
        if value is None:
            raise self.not_allowed(name, "null")
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.not_allowed(name, "an empty array")
        return tuple(to_text(v) for v in items)  # [AllowEmptyString()]: '' and $null pass

    def ints(self, name: str, value: Any) -> tuple[int, ...]:
        if value is None:
            raise self.not_allowed(name, "null")
        items = value if isinstance(value, list) else [value]
        if not items:
            raise self.not_allowed(name, "an empty array")
        out: list[int] = []
        for item in items:
            number, reason = _to_int32(item)
            if number is None:
                inner = f'Cannot convert value "{to_text(item)}" to type "System.Int32". Error: "{reason}"'
                detail = (
                    'Cannot convert value "System.Collections.ArrayList" to type "System.Int32[]". '
                    f'Error: "{inner}"'
                    if isinstance(value, list)
                    else inner
                )
                raise self.transformation(name, detail)
            out.append(number)
        return tuple(out)

    def run_id(self, name: str, value: Any) -> str:
        text = self.string(name, value, mandatory=False)
        if re.search(RUN_ID_PATTERN, text, re.IGNORECASE) is None:  # ValidatePattern ignores case
            raise self.error(
                "ParameterArgumentValidationError",
                f"Cannot validate argument on parameter '{name}'. The argument \"{text}\" does not match "
                f'the "{RUN_ID_PATTERN}" pattern. Supply an argument that matches "{RUN_ID_PATTERN}" '
                "and try the command again.",
                "InvalidData",
                _VALIDATION,
            )
        return text


def _to_int32(value: Any) -> tuple[int | None, str]:
    if isinstance(value, bool):
        return int(value), ""
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None, "Value was either too large or too small for an Int32."
        number = round(value)  # .NET rounds a double to the nearest even integer, as round() does
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            return None, f"The input string '{value}' was not in a correct format."
    else:
        return None, f"The input string '{to_text(value)}' was not in a correct format."
    if not _INT32[0] <= number <= _INT32[1]:
        return None, "Value was either too large or too small for an Int32."
    return number, ""


def bind_invoker(parameters: list[tuple[str | None, Any]], *, as_function: bool) -> InvokerCall:
    """The invoker's parameters bound as PowerShell binds its param block; BindingError otherwise."""
    binder = _Binder(as_function=as_function)
    if any(name is None for name, _ in parameters):
        raise BindingError(pserrors.not_supported_in_guest("positional arguments to the guest invoker"))
    try:
        bound = bind(_PARAMS, INVOKER_FUNCTION, parameters, to_text)
    except BindingError as exc:
        raise binder.rebadge(exc) from None
    values: dict[str, Any] = {}
    # Named arguments are converted and validated in the order they came, as PowerShell does.
    for name, value in bound.items():
        if name == "VMName":
            values[name] = binder.string(name, value, mandatory=True)
        elif name == "VMId":
            values[name] = binder.guid(name, value)
        elif name == "Credential":
            values[name] = binder.credential(name, value)
        elif name == "Script":
            values[name] = binder.strings(name, value)
        elif name == "StepIndex":
            values[name] = binder.ints(name, value)
        elif name == "RunId":
            values[name] = binder.run_id(name, value)
        elif name == "ArgumentList":
            values[name] = tuple(value) if isinstance(value, list) else () if value is None else (value,)
    if "VMName" in values and "VMId" in values:
        raise binder.error(
            "AmbiguousParameterSet",
            "Parameter set cannot be resolved using the specified named parameters. One or more "
            "parameters issued cannot be used together or an insufficient number of parameters were provided.",
            "InvalidArgument",
            _BINDING,
        )
    target = () if "VMId" in values else ("VMName",)  # VMName is the default parameter set
    missing = [n for n in (*target, *_MANDATORY) if n not in values]
    if missing:
        raise binder.error(
            "MissingMandatoryParameter",
            f"Cannot process command because of one or more missing mandatory parameters: {' '.join(missing)}.",
            "InvalidArgument",
            _BINDING,
        )
    return InvokerCall(
        vm_name=values.get("VMName"),
        vm_id=values.get("VMId"),
        credential=values["Credential"],
        scripts=values["Script"],
        step_indices=values["StepIndex"],
        run_id=values["RunId"],
        arguments=values.get("ArgumentList", ()),
    )


def step_count_mismatch(call: InvokerCall) -> SimError | None:
    """The invoker's own check before it reaches the guest (a ``throw``: the pipeline fails)."""
    if len(call.scripts) == len(call.step_indices):
        return None
    return thrown_error(
        f"vmbusops: -Script has {len(call.scripts)} steps but -StepIndex {len(call.step_indices)}"
    )


def _caught(error: SimError) -> SimError:
    """The record as the wrapper's ``catch`` writes it again with ``Write-Error -ErrorRecord``."""
    return dataclasses.replace(error, fqid=_without_command_suffix(error.fqid), activity="Write-Error")


_COMMAND_SUFFIX = re.compile(r",[A-Za-z0-9][A-Za-z0-9_.\-]*[.\-][A-Za-z0-9_.\-]*\Z")


def _without_command_suffix(fqid: str) -> str:
    """``PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand`` -> ``PathNotFound``.

    A record's id is its error id plus, when a command wrote it, ``,<command or script>``. A thrown
    string's id is the string itself, commas and all, so only a qualifier shaped like a command
    type or file name (no spaces, a dot or dash) is taken off.
    """
    return _COMMAND_SUFFIX.sub("", fqid)


class _ErrorCount(ForwardingStreams):
    """The step's streams, counting what ``$Error`` gains: every error record but a native
    command's stderr lines (``NativeCommandError*``), as the wrapper counts them."""

    def __init__(self, inner: Streams) -> None:
        super().__init__(inner)
        self.count = 0

    def error(self, error: SimError) -> None:
        if not error.fqid.startswith("NativeCommandError"):
            self.count += 1
        self._inner.error(error)


async def run_guest_wrapper(session: GuestSession, call: InvokerCall, emit: Emit) -> None:
    """The invoker's guest script block, natively (see the module docstring)."""
    streams = session.streams
    folder = session.environment()["temp"] + "\\vmbusops"
    host_folder = session.host_path(folder)
    if host_folder is not None and not host_folder.is_dir():
        host_folder.mkdir(parents=True, exist_ok=True)
    for index, text in zip(call.step_indices, call.scripts, strict=True):
        streams.information(
            InformationMessage(
                message_data=f"vmbusops-step begin {index}", source="Write-Information", tags=(MARKER_TAG,)
            )
        )
        await streams.checkpoint()
        path = f"{folder}\\{call.run_id}-{index}.ps1"
        host = session.host_path(path)
        if host is None:  # $env:TEMP is always on C: in the simulated guest
            raise AssertionError(f"no guest file system under {path!r}")
        code: Any = 0
        counted = _ErrorCount(streams)
        session.streams = counted
        silenced_before = session.silenced_errors
        try:
            # Windows PowerShell 5.1's Set-Content -Encoding UTF8: a BOM, the text, a newline.
            content = text + "\r\n"
            session.store.spare_files.write(host, b"\xef\xbb\xbf" + content.encode("utf-8"))
            session.variables["lastexitcode"] = 0
            outer_try, session.in_try = session.in_try, True
            try:
                # `& $path`: the file just written, read back as it was written (nothing ran
                # since), with the one checkpoint reading it would have taken.
                await trio.lowlevel.checkpoint()
                await session.run_file_text(path, content, list(call.arguments), emit)
            except (LoopBreak, LoopContinue):
                pass  # the wrapper's loop of one: a stray break or continue ends the step
            finally:
                session.in_try = outer_try
            code = session.variables.get("lastexitcode")
        except (StatementError, ScriptTerminated) as exc:
            code = 1
            counted.error(_caught(exc.error))
        finally:
            session.streams = streams
            session.store.spare_files.remove(host)
        code_text = "0" if code is None else to_text(code)
        written = counted.count + session.silenced_errors - silenced_before
        streams.information(
            InformationMessage(
                message_data=f"vmbusops-step end {index} exit={code_text} errors={written}",
                source="Write-Information",
                tags=(MARKER_TAG,),
            )
        )
        await streams.checkpoint()
        if code_text != "0" or written:
            break


__all__ = [
    "INVOKER_FUNCTION",
    "INVOKER_SHA256",
    "InvokerCall",
    "bind_invoker",
    "is_invoker_script",
    "run_guest_wrapper",
    "step_count_mismatch",
]
