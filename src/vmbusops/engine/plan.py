"""How a run's steps become host operations and guest invocations (sans-IO).

Opening a PowerShell Direct session costs seconds on a real host, and a PSSession belongs to the
runspace that created it while a runspace pool may hand the next pipeline another runspace. So a
run does not keep a session across pipelines; it *batches*: consecutive guest-side script steps
become one ``Invoke-Command`` whose script block is generated here, one session for all of them
(see ``docs/adr/0002-engine-sessions-and-journal.md``). Host-side steps (Copy-VMFile, Restart-VM,
waiting for the guest) sit between batches.

The generated script block brackets each step with markers and runs the step as a script file::

    $ErrorActionPreference = 'Stop'
    Set-ExecutionPolicy -Scope Process -ExecutionPolicy Bypass -Force -ErrorAction SilentlyContinue
    Write-Information -MessageData 'vmbusops-step begin 0' -Tags 'vmbusops.step'
    Set-Content -Path "$env:TEMP\\vmbusops-step.ps1" -Value '<step 0's script>' -Encoding UTF8
    $global:LASTEXITCODE = 0
    & "$env:TEMP\\vmbusops-step.ps1"
    Write-Information -MessageData "vmbusops-step end 0 exit=$global:LASTEXITCODE" -Tags 'vmbusops.step'
    ...

The engine reads the markers from the record stream (and journals none of them) to know which step
each record belongs to, to start each step's own timeout when its ``begin`` arrives and to mark a
step finished at its ``end``. ``$ErrorActionPreference = 'Stop'`` makes the first error end the
script block, so a failed step never lets the next one start in the same session; whatever had not
begun is planned again from there (a retry, or the next batch).

Why a script file: PowerShell Direct does not carry a script's exit code back, so the wrapper has
to read it, and ``exit N`` has to end the step, not the batch. In PowerShell 5.1 ``exit`` inside a
script block (``& { ... }``, ``& ([scriptblock]::Create(...))``, a function) ends the whole
pipeline; only a script *file* is the boundary where ``exit N`` stops and sets ``$LASTEXITCODE``.
So each step's text is written to one file under the guest's TEMP (UTF-8, as Set-Content
``-Encoding UTF8`` writes it in 5.1) and called with ``&``; ``$global:LASTEXITCODE`` is reset
before, so a stale code from an earlier native command is not taken for the step's. The process
scope's execution policy is set to Bypass so the file runs where the machine policy is Restricted
(a Group Policy that forbids it fails the step with PowerShell's own error). The end marker carries
the code: 0 is success; 3010 and 1641 mean a reboot is required (see :data:`REBOOT_EXIT_CODES`);
anything else fails the step. A script step that may reboot is the last of its batch, so nothing
runs in the guest between its exit and the host's Restart-VM.

A step that takes ``arguments`` (``$args``) or declares ``param(...)`` runs in an invocation of
its own: the invocation's ``-ArgumentList`` is its alone, handed on to its file by position.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmbusops.bundle.manifest import ScriptStep, Step
from vmbusops.records import InformationRecord, Record

MARKER_TAG = "vmbusops.step"
_MARKER = re.compile(r"vmbusops-step (begin|end) ([0-9]+)(?: exit=(-?[0-9]*))?")
STEP_FILE = r"$env:TEMP\vmbusops-step.ps1"
#: Exit codes that say "reboot required" (ERROR_SUCCESS_REBOOT_REQUIRED) and "reboot initiated"
#: (ERROR_SUCCESS_REBOOT_INITIATED), as Windows Installer and most installers return them.
REBOOT_EXIT_CODES = frozenset({3010, 1641})
_PARAM = re.compile(r"^\s*(#[^\n]*\n\s*|<#.*?#>\s*)*param\s*\(", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True, slots=True)
class StepMarker:
    """A step's ``begin`` or ``end``; an ``end`` from the wrapper carries the script's exit code."""

    kind: str
    index: int
    exit_code: int | None = None


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


def marker(kind: str, index: int) -> str:
    return f"Write-Information -MessageData 'vmbusops-step {kind} {index}' -Tags '{MARKER_TAG}'"


def single_quoted(text: str) -> str:
    """``text`` as a PowerShell single-quoted string (PowerShell also closes one on curly quotes)."""
    for quote in "'\u2018\u2019\u201a\u201b":
        text = text.replace(quote, quote + quote)
    return f"'{text}'"


def batch_script(parts: Sequence[tuple[int, str]], *, argument_count: int = 0) -> str:
    """The script block for one batch: each (step index, script) between its markers.

    ``argument_count`` values of ``-ArgumentList`` are handed on to a step that runs alone, one by
    one and by position, so the step file's ``param()`` binds them or its ``$args`` holds them.
    """
    if argument_count and len(parts) != 1:
        raise ValueError("only a step that runs alone takes arguments")
    call = f'& "{STEP_FILE}"' + "".join(f" $args[{i}]" for i in range(argument_count))
    lines = [
        "$ErrorActionPreference = 'Stop'",
        "Set-ExecutionPolicy -Scope Process -ExecutionPolicy Bypass -Force -ErrorAction SilentlyContinue",
    ]
    for index, script in parts:
        lines.append(marker("begin", index))
        lines.append(f'Set-Content -Path "{STEP_FILE}" -Value {single_quoted(script)} -Encoding UTF8')
        lines.append("$global:LASTEXITCODE = 0")
        lines.append(call)
        lines.append(
            f'Write-Information -MessageData "vmbusops-step end {index} exit=$global:LASTEXITCODE"'
            f" -Tags '{MARKER_TAG}'"
        )
    return "\n".join(lines) + "\n"


def parse_marker(record: Record) -> StepMarker | None:
    """The step marker this record is, if it is one of ours."""
    if not isinstance(record, InformationRecord) or MARKER_TAG not in record.tags:
        return None
    data = record.message_data
    if not isinstance(data, str):
        return None
    m = _MARKER.fullmatch(data.strip())
    if m is None:
        return None
    code = m[3]
    return StepMarker(m[1], int(m[2]), None if code is None else int(code) if code not in ("", "-") else 0)
