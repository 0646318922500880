"""How a run's steps become host operations and guest invocations (sans-IO).

Opening a PowerShell Direct session costs seconds on a real host, and a PSSession belongs to the
runspace that created it while a runspace pool may hand the next pipeline another runspace. So a
run does not keep a session across pipelines; it *batches*: consecutive guest-side script steps
become one invocation of the guest invoker (:mod:`vmbusops.guestops.invoker`), one session for all
of them (see ``docs/adr/0002-engine-sessions-and-journal.md``). Host-side steps (Copy-VMFile,
Restart-VM, waiting for the guest) sit between batches.

The invoker runs each step of a batch as its own script file in the guest, between two marker
records, and reports each step's exit code in its ``end`` marker. The engine reads the markers from
the record stream (and journals none of them) to know which step each record belongs to, to start
each step's own timeout when its ``begin`` arrives and to mark a step finished at its ``end``. A
step whose exit code is not 0 ends the batch in the guest, so a failed step never lets the next one
start in the same session; whatever had not begun is planned again from there (a retry, or the
next batch). Exit code 0 is success; 3010 and 1641 mean a reboot is required (see
:data:`REBOOT_EXIT_CODES`); anything else fails the step. A script step that may reboot is the
last of its batch, so nothing runs in the guest between its exit and the host's Restart-VM.

A step that takes ``arguments`` (``$args``) or declares ``param(...)`` runs in an invocation of
its own: the invocation's ``-ArgumentList`` is its alone, handed on to its file by position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmbusops.bundle.manifest import ScriptStep, Step
from vmbusops.guestops.invoker import MARKER_TAG, StepMarker, parse_marker

__all__ = [
    "MARKER_TAG",
    "REBOOT_EXIT_CODES",
    "GuestBatch",
    "HostStep",
    "StepMarker",
    "Unit",
    "parse_marker",
    "plan_units",
    "runs_alone",
]

#: Exit codes that say "reboot required" (ERROR_SUCCESS_REBOOT_REQUIRED) and "reboot initiated"
#: (ERROR_SUCCESS_REBOOT_INITIATED), as Windows Installer and most installers return them.
REBOOT_EXIT_CODES = frozenset({3010, 1641})
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
                if step.allow_reboot:
                    close()
        else:
            close()
            units.append(HostStep(index))
    close()
    return units
