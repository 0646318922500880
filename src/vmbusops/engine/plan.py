"""How a run's steps become host operations and guest invocations (sans-IO).

Opening a PowerShell Direct session costs seconds on a real host, and a PSSession belongs to the
runspace that created it while a runspace pool may hand the next pipeline another runspace. So a
run does not keep a session across pipelines; it *batches*: consecutive guest-side script steps
become one ``Invoke-Command`` whose script block is generated here, one session for all of them
(see ``docs/adr/0002-engine-sessions-and-journal.md``). Host-side steps (Copy-VMFile, Restart-VM,
waiting for the guest) sit between batches.

The generated script block brackets each step with markers::

    $ErrorActionPreference = 'Stop'
    Write-Information -MessageData 'vmbusops-step begin 0' -Tags 'vmbusops.step'
    <step 0's script>
    Write-Information -MessageData 'vmbusops-step end 0' -Tags 'vmbusops.step'
    ...

The engine reads the markers from the record stream (and journals none of them) to know which step
each record belongs to, to start each step's own timeout when its ``begin`` arrives and to mark a
step finished at its ``end``. ``$ErrorActionPreference = 'Stop'`` makes the first error end the
script block, so a failed step never lets the next one start in the same session; whatever had not
begun is planned again from there (a retry, or the next batch).

A step that takes ``arguments`` (``$args``) or declares ``param(...)`` runs in an invocation of
its own, since its script must be the script block itself for PowerShell to bind them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmbusops.bundle.manifest import ScriptStep, Step
from vmbusops.records import InformationRecord, Record

MARKER_TAG = "vmbusops.step"
_MARKER = re.compile(r"vmbusops-step (begin|end) ([0-9]+)")
_PARAM = re.compile(r"^\s*(#[^\n]*\n\s*|<#.*?#>\s*)*param\s*\(", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class GuestBatch:
    """Consecutive script steps (indices into the bundle's steps) run in one Invoke-Command."""

    steps: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class HostStep:
    """A step the host carries out itself (copy, reboot, wait-ready, DSC)."""

    index: int


Unit = GuestBatch | HostStep


def runs_alone(step: ScriptStep, script: str) -> bool:
    return bool(step.arguments) or _PARAM.match(script) is not None


def plan_units(steps: Sequence[Step], start: int, script_of: Callable[[ScriptStep], str]) -> list[Unit]:
    """The units that carry out ``steps[start:]``, batching what can share one invocation."""
    units: list[Unit] = []
    batch: list[int] = []

    def close() -> None:
        if batch:
            units.append(GuestBatch(tuple(batch)))
            batch.clear()

    for index in range(start, len(steps)):
        step = steps[index]
        if isinstance(step, ScriptStep):
            if runs_alone(step, script_of(step)):
                close()
                units.append(GuestBatch((index,)))
            else:
                batch.append(index)
        else:
            close()
            units.append(HostStep(index))
    close()
    return units


def marker(kind: str, index: int) -> str:
    return f"Write-Information -MessageData 'vmbusops-step {kind} {index}' -Tags '{MARKER_TAG}'"


def batch_script(parts: Sequence[tuple[int, str]]) -> str:
    """The script block for one batch: each (step index, script) between its markers."""
    if len(parts) == 1 and _PARAM.match(parts[0][1]):
        # PowerShell binds param() only at the top of the script block: no markers around it.
        return parts[0][1]
    lines = ["$ErrorActionPreference = 'Stop'"]
    for index, script in parts:
        lines.append(marker("begin", index))
        lines.append(script.rstrip("\n"))
        lines.append(marker("end", index))
    return "\n".join(lines) + "\n"


def parse_marker(record: Record) -> tuple[str, int] | None:
    """("begin" | "end", step index) if the record is one of our step markers."""
    if not isinstance(record, InformationRecord) or MARKER_TAG not in record.tags:
        return None
    data = record.message_data
    if not isinstance(data, str):
        return None
    m = _MARKER.fullmatch(data.strip())
    return (m[1], int(m[2])) if m else None
