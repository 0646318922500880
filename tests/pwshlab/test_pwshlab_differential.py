"""The same commands on the simulator and on pwsh-lab give the same records.

PowerShell appends ",<function name>" to the FullyQualifiedErrorId of an error a function writes
(the lab's cmdlets are functions), so ids are compared without that last part.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pwshlab_support import PwshLab

from vmbusops.guestops.invoker import invoker_command
from vmbusops.psrp.client import Command
from vmbusops.records import (
    DebugRecord,
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineStateRecord,
    VerboseRecord,
    WarningRecord,
)

pytestmark = pytest.mark.pwsh


def _cases(lab: PwshLab, source: Path) -> list[tuple[str, Command]]:
    wrong = lab.credential(password="not-the-password")
    return [
        ("get-vm missing", Command("Get-VM", {"Name": ["ghost"]})),
        ("get-vm by id missing", Command("Get-VM", {"Id": "00000000-0000-0000-0000-0000000000aa"})),
        ("integration missing vm", Command("Get-VMIntegrationService", {"VMName": ["ghost"], "Name": ["Heartbeat"]})),
        ("copy, service off", Command("Copy-VMFile", {"Name": "app01", "SourcePath": str(source),
                                                      "DestinationPath": "C:\\x.txt", "FileSource": "Host"})),
        ("copy, vm off", Command("Copy-VMFile", {"Name": "legacy01", "SourcePath": str(source),
                                                 "DestinationPath": "C:\\x.txt", "FileSource": "Host"})),
        ("restart, vm off", Command("Restart-VM", {"Name": "legacy01", "Force": True})),
        # Guest runs as the agent makes them: through the guest invoker.
        ("invoke, vm off", invoker_command(vm="legacy01", steps=[(0, "'ran'")], credential=lab.credential("legacy01"))),
        ("invoke, no such vm", invoker_command(vm="ghost", steps=[(0, "'ran'")], credential=wrong)),
        ("invoke, wrong password", invoker_command(vm="web01", steps=[(0, "'ran'")], credential=wrong)),
    ]


def _errors(records: list[object]) -> list[tuple[str, str, str, str]]:
    out = []
    for record in records:
        error = record.error if isinstance(record, PipelineStateRecord) else record
        if isinstance(error, ErrorRecord):
            fqid = error.fqid.removesuffix(f",{error.activity}") if error.activity else error.fqid
            out.append((error.message, fqid, error.category, error.exception_type))
    return out


async def test_host_error_records_agree(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    source = tmp_path / "file.txt"
    source.write_text("x", encoding="utf-8")
    results: dict[str, dict[str, list[tuple[str, str, str, str]]]] = {}
    for kind in ("sim", "pwsh-lab"):
        async with pwsh_lab.open(kind) as host:
            results[kind] = {}
            for name, command in _cases(pwsh_lab, source):
                results[kind][name] = _errors(await host.pool.run([[command]]))
    for name in results["sim"]:
        assert results["sim"][name], f"{name}: the simulator reported no error"
        assert results["pwsh-lab"][name] == results["sim"][name], name


GUEST_CASES: list[tuple[str, list[str], list[object]]] = [
    ("exit ends the step and the batch", ["Write-Output a; exit 3; Write-Output b", "Write-Output never"], []),
    ("a throw is exit 1", ["Write-Output a; throw 'boom'; Write-Output b"], []),
    ("errors written count", ["Write-Error 'bad'; Write-Output after"], []),
    ("arguments", ["$args.Count; $args"], ["a", 2]),
    ("streams", ["Write-Warning 'w'; Write-Verbose 'v' -Verbose; Write-Information 'i'; 'o'"], []),
    ("break and continue end only their step", ["'x'; break; 'y'", "1..3 | ForEach-Object { $_; continue }; 'z'", "'next'"], []),
    ("a break inside a loop leaves the loop", ["foreach ($i in 1..3) { $i; break }; 'after-loop'"], []),
    ("a bad parameter ends the step", ["Get-Content -Frob x; 'after'", "'never'"], []),
    ("-ErrorAction Stop ends the step", ["Write-Error 'hard' -ErrorAction Stop; 'after'"], []),
    ("$ErrorActionPreference Stop ends the step", ["$ErrorActionPreference = 'Stop'; Write-Error 'hard'; 'after'"], []),
    ("SilentlyContinue hides but counts", ["Write-Error 'quiet' -ErrorAction SilentlyContinue; 'after'", "'never'"], []),
    ("Ignore neither shows nor counts", ["Write-Error 'gone' -ErrorAction Ignore; 'after'", "'next'"], []),
    ("a bare throw", ["throw"], []),
    ("exit without a code", ["'a'; exit", "'next'"], []),
    ("verbose and debug are silent unless asked for", ["Write-Verbose 'v'; Write-Debug 'd'; 'o'"], []),
    ("-Verbose and -Debug ask for them", ["Write-Verbose 'v' -Verbose; Write-Debug 'd' -Debug; 'o'"], []),
    ("the preference variables ask for them",
     ["$VerbosePreference = 'Continue'; $DebugPreference = 'Continue'; Write-Verbose 'v'; Write-Debug 'd'"], []),
    ("-Verbose:$false overrides the preference",
     ["$VerbosePreference = 'Continue'; Write-Verbose 'off' -Verbose:$false; Write-Verbose 'on'"], []),
]


# Native commands are left out: a simulated Windows guest has none of Linux's.


def _guest_view(records: list[object]) -> list[tuple[str, object]]:
    view: list[tuple[str, object]] = []
    for record in records:
        if isinstance(record, OutputRecord):
            view.append(("output", record.value))
        elif isinstance(record, ErrorRecord):
            view.append(("error", record.message))
        elif isinstance(record, WarningRecord | VerboseRecord | DebugRecord):
            view.append((type(record).__name__, record.message))
        elif isinstance(record, InformationRecord):
            view.append(("information", record.message_data))
        elif isinstance(record, PipelineStateRecord):
            view.append(("state", record.state.value))
    return view


async def test_the_guest_invoker_agrees_on_both_hosts(pwsh_lab: PwshLab) -> None:
    results: dict[str, dict[str, list[tuple[str, object]]]] = {}
    for kind in ("sim", "pwsh-lab"):
        async with pwsh_lab.open(kind) as host:
            results[kind] = {}
            for name, scripts, arguments in GUEST_CASES:
                command = invoker_command(
                    vm="web01", steps=list(enumerate(scripts)), credential=pwsh_lab.credential(),
                    arguments=arguments, run_id="differential",
                )
                results[kind][name] = _guest_view(await host.pool.run([[command]]))
    for name, _, _ in GUEST_CASES:
        assert results["pwsh-lab"][name] == results["sim"][name], name
