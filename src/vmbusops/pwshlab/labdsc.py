"""labctl's ``dsc`` operation: one DSC cmdlet of a lab guest, run by the simulator's LCM, streamed.

Theory of operation
-------------------
Linux has no Local Configuration Manager, so a ``pwsh-lab`` guest's DSC cmdlets
(``Start-DscConfiguration``, ``Test-DscConfiguration``, ``Get-DscConfigurationStatus``, and the
LCM's own ``Set-``/``Get-DscLocalConfigurationManager`` where the simulator has them) are
functions of the guest session (``VmbusOpsLabGuest.psm1``) that hand the call, as PowerShell bound
it, to this operation. It runs the simulator's own cmdlet (:mod:`vmbusops.sim.dsc`, found in the
simulator's registry :mod:`vmbusops.sim.cmdlets`) on a
:class:`~vmbusops.sim.guest.GuestSession` over the lab's state directory, so both lanes share one
LCM, one guest system (``system.json``) and the guest's ``C:`` files.

Unlike labctl's other operations, the answer is a stream: one JSON object per line on stdout,
flushed as the LCM writes it, so the guest function can write each line with ``Write-Verbose``
while the LCM is still at work::

    {"verbose": "[WEB01]: LCM:  [ Start  Set      ]"}
    {"warning": "..."}          {"debug": "..."}          {"information": "..."}
    {"error": {"message", "fqid", "category", "exception_type", "target_name", ...}}
    {"output": VALUE}
    {"end": true}

A VALUE is JSON's null, boolean, number, string or array, or a tagged object:
``{"object": {"type_names": [...], "properties": [[name, VALUE], ...], "to_string": ...}}`` for a
PowerShell object, ``{"hashtable": [[key, VALUE], ...]}`` for a hashtable. ``end`` comes last
unless the process failed; the guest function treats a stream without it as broken.

A parameter the simulator's cmdlet does not model (``-CimSession``, ``-AsJob``, ``-Credential``,
...) is refused with the simulator's "does not support" error; nothing is ignored.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import IO, Any

import trio

from vmbusops.pwshlab.labjson import error_json
from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, bind
from vmbusops.sim.cmdlets import GUEST_CMDLETS
from vmbusops.sim.guest import GuestSession
from vmbusops.sim.guest_values import NO_INPUT, StatementError, to_text
from vmbusops.sim.lab import Lab
from vmbusops.sim.state import HostStore, split_guest_path
from vmbusops.sim.streams import InformationMessage, ProgressUpdate, SimError, SimObject, TerminatingError

Line = dict[str, Any]


def encode_value(value: Any) -> Any:
    """A simulated cmdlet's value as JSON (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, SimObject):
        return {
            "object": {
                "type_names": list(value.type_names),
                "properties": [[name, encode_value(v)] for name, v in value.properties],
                "to_string": value.to_string,
            }
        }
    if isinstance(value, list | tuple):
        return [encode_value(v) for v in value]
    if isinstance(value, dict):
        return {"hashtable": [[str(k), encode_value(v)] for k, v in value.items()]}
    return to_text(value)


class LineStreams:
    """The simulator's :class:`~vmbusops.sim.streams.Streams`, written as JSON lines as they come."""

    def __init__(self, write: Callable[[Line], None]) -> None:
        self._write = write
        self._count = 0

    def _line(self, line: Line) -> None:
        self._count += 1
        self._write(line)

    def output(self, value: Any) -> None:
        self._line({"output": encode_value(value)})

    def error(self, error: SimError) -> None:
        self._line({"error": error_json(error)})

    def warning(self, message: str) -> None:
        self._line({"warning": message})

    def verbose(self, message: str) -> None:
        self._line({"verbose": message})

    def debug(self, message: str) -> None:
        self._line({"debug": message})

    def information(self, info: InformationMessage) -> None:
        self._line({"information": to_text(info.message_data)})

    def progress(self, update: ProgressUpdate) -> None:
        self._line({"progress": {"activity": update.activity, "status": update.status,
                                 "percent_complete": update.percent_complete}})  # fmt: skip

    @property
    def records_written(self) -> int:
        return self._count

    async def checkpoint(self) -> None:
        await trio.lowlevel.checkpoint()


#: The guest functions of ``VmbusOpsLabGuest.psm1`` that hand their call to this operation.
LAB_DSC_CMDLETS = frozenset(
    name.casefold()
    for name in (
        "Start-DscConfiguration",
        "Test-DscConfiguration",
        "Get-DscConfigurationStatus",
        "Set-DscLocalConfigurationManager",
        "Get-DscLocalConfigurationManager",
    )
)


async def run_dsc_cmdlet(
    lab: Lab, store: HostStore, request: dict[str, Any], streams: LineStreams, *, clock: Callable[[], float]
) -> None:
    """Run ``request["cmdlet"]`` with ``request["parameters"]`` in the guest ``request["vm"]``.

    The guest's checks are the simulator's: the VM must be running and booted (a guest that is
    restarting has broken the session that called), the cmdlet one the simulator's LCM has, each
    parameter one it models. ``location`` is the caller's current location in the guest (``C:\\...``),
    against which a relative ``-Path`` resolves. A request that is not one raises KeyError or
    ValueError.
    """
    name = str(request["vm"])
    spec = lab.find(name)
    if spec is None:
        raise ValueError(f"dsc: no VM {name!r} in the lab")
    if not store.runtime(spec).booted(clock()):
        streams.error(pserrors.remote_session_ended(spec.name))
        return
    cmdlet = str(request["cmdlet"])
    cls = GUEST_CMDLETS.get(cmdlet.casefold()) if cmdlet.casefold() in LAB_DSC_CMDLETS else None
    if cls is None:
        streams.error(pserrors.not_supported_in_guest(f"the DSC cmdlet {cmdlet}"))
        return
    parameters = request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ValueError("dsc: parameters must be a JSON object")  # noqa: TRY004 - labctl reports ValueError as a bad request
    modelled = {p.name.casefold() for p in cls.params}
    unmodelled = [k for k in parameters if k.casefold() not in modelled]
    if unmodelled:
        shown = ", ".join(f"-{k}" for k in unmodelled)
        streams.error(pserrors.not_supported_in_guest(f"{cls.name} {shown}"))
        return
    try:
        bound = bind(cls.params, cls.fq_name, list(parameters.items()), to_text)
    except BindingError as exc:
        streams.error(pserrors.with_activity(exc.error, cls.name))
        return
    session = GuestSession(spec=spec, store=store, streams=streams, username=spec.username)
    # Every line is streamed: the guest function writes each one with its own $PSCmdlet, whose
    # -Verbose / -Debug and preference variables are what decides, as PowerShell's rule.
    session.variables["verbosepreference"] = "Continue"
    session.variables["debugpreference"] = "Continue"
    location = str(request.get("location") or "")
    split = split_guest_path(location.replace("/", "\\"))
    if split is not None and split[0] == "C":
        session.cwd = session.absolute(location)

    async def emit(value: Any) -> None:
        streams.output(value)
        await streams.checkpoint()

    stage = cls(session, bound, emit)
    try:
        await stage.begin()
        await stage.process(NO_INPUT)
        await stage.end()
    except (StatementError, TerminatingError) as exc:
        streams.error(exc.error)


def stream_dsc(lab: Lab, store: HostStore, request: dict[str, Any], out: IO[str], *,
               clock: Callable[[], float]) -> None:  # fmt: skip
    """Answer a ``dsc`` request on ``out``, one flushed JSON line per record, ``end`` last."""

    def write(line: Line) -> None:
        out.write(json.dumps(line) + "\n")
        out.flush()

    trio.run(functools.partial(run_dsc_cmdlet, lab, store, request, LineStreams(write), clock=clock))
    write({"end": True})
