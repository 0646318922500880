"""How a guest invocation reaches a guest: vmbusops' guest invoker and its step markers (sans-IO).

Every guest run - ``exec``, a bundle's script steps, DSC and patch steps, the wait-ready probe -
goes through one fixed PowerShell script, ``powershell/Invoke-VmbusOpsGuest.ps1`` (its header says
what it does in the guest). The agent sends it as a PSRP *script command* whose parameters carry
the steps' text, their indices, the credential and the arguments; on a JEA endpoint, where script
commands are refused, it calls the role capability's function of the same body by name. Either
way the server builds the ``[scriptblock]`` for ``Invoke-Command`` itself: PowerShell never binds
a string to a ScriptBlock parameter, and no PSRP client can send one.

In the guest each step runs as a script file between two information records tagged
:data:`MARKER_TAG`; the ``end`` record carries the step's exit code. :func:`parse_marker` reads
them; callers take them out of what they show and journal.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final

from vmbusops.psrp.client import Command
from vmbusops.records import InformationRecord, Record

INVOKER_FUNCTION: Final = "Invoke-VmbusOpsGuest"
INVOKER_SCRIPT: Final = (
    resources.files("vmbusops.guestops").joinpath("powershell", "Invoke-VmbusOpsGuest.ps1").read_text(encoding="utf-8")
)
#: What the simulated host recognizes the invoker by (it runs no other script command).
INVOKER_SHA256: Final = hashlib.sha256(INVOKER_SCRIPT.encode("utf-8")).hexdigest()

MARKER_TAG: Final = "vmbusops.step"
_MARKER = re.compile(r"vmbusops-step (begin|end) ([0-9]+)(?: exit=(-?[0-9]*))?(?: errors=([0-9]+))?")


@dataclass(frozen=True, slots=True)
class StepMarker:
    """A step's ``begin`` or ``end``; an ``end`` carries the step's exit code and how many
    PowerShell error records it wrote (native commands' stderr lines not counted)."""

    kind: str
    index: int
    exit_code: int | None = None
    errors: int = 0

    @property
    def failed(self) -> bool:
        return self.kind == "end" and (bool(self.exit_code) or self.errors > 0)


def parse_marker(record: Record) -> StepMarker | None:
    """The step marker this record is, if it is one of the invoker's."""
    if not isinstance(record, InformationRecord) or MARKER_TAG not in record.tags:
        return None
    data = record.message_data
    if not isinstance(data, str):
        return None
    m = _MARKER.fullmatch(data.strip())
    if m is None:
        return None
    code = m[3]
    return StepMarker(
        m[1],
        int(m[2]),
        None if code is None else int(code) if code not in ("", "-") else 0,
        int(m[4]) if m[4] else 0,
    )


def new_run_id() -> str:
    """A name for one invocation's step files, unique across every batch in a guest."""
    return uuid.uuid4().hex


def invoker_command(
    *,
    vm: str,
    steps: Sequence[tuple[int, str]],
    credential: Any,
    arguments: Sequence[Any] = (),
    vm_id: str | None = None,
    run_id: str | None = None,
    as_function: bool = False,
) -> Command:
    """The one command that runs ``steps`` ((index, script text) pairs) in ``vm``.

    ``as_function`` calls the JEA role's ``Invoke-VmbusOpsGuest`` instead of sending the script.
    """
    if not steps:
        raise ValueError("a guest invocation needs at least one step")
    if arguments and len(steps) != 1:
        raise ValueError("only a step that runs alone takes arguments")
    params: dict[str, Any] = {}
    if vm_id:
        params["VMId"] = vm_id
    else:
        params["VMName"] = vm
    params["Credential"] = credential
    params["Script"] = [text for _, text in steps]
    params["StepIndex"] = [index for index, _ in steps]
    params["RunId"] = run_id or new_run_id()
    if arguments:
        params["ArgumentList"] = list(arguments)
    if as_function:
        return Command(INVOKER_FUNCTION, params)
    return Command(INVOKER_SCRIPT, params, is_script=True)
