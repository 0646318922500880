"""The patch step's guest script under real PowerShell 7: its polling loop, its exit codes, cleanup.

PowerShell 7 on Linux has no Task Scheduler and no Windows Update Agent. The ScheduledTasks
cmdlets are shadowed by functions (functions come before cmdlets in PowerShell's command lookup)
whose "task" is a thread job writing the result lines the install script writes, a line at a
time. What PowerShell itself judges here: the script parses, binds its arguments, writes the
install script and the request, relays each result line as it appears, exits 0 with a summary or
1 without one, and removes the task and its folder in its ``finally`` - `exit` inside ``try``
included. What it cannot judge: the COM calls, SYSTEM's logon, Windows PowerShell 5.1's
``Set-Content -Encoding UTF8`` (a BOM there, none here).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from vmbusops.guestops.patch_script import INSTALL_SCRIPT, PATCH_SCRIPT

pytestmark = pytest.mark.pwsh

HARNESS = r"""
param([string]$Root, [string]$Lines, [string]$Out, [int]$Timeout = 30)
$env:ProgramData = $Root
$global:registered = @{}
$global:linesFile = $Lines
function New-ScheduledTaskAction {
    [CmdletBinding()] param([string]$Execute, [string]$Argument)
    [pscustomobject]@{ Execute = $Execute; Arguments = $Argument }
}
function New-ScheduledTaskPrincipal {
    [CmdletBinding()] param([string]$UserId, [string]$LogonType, [string]$RunLevel)
    [pscustomobject]@{ UserId = $UserId }
}
function Register-ScheduledTask {
    [CmdletBinding()] param([string]$TaskName, [string]$TaskPath, $Action, $Principal, [switch]$Force)
    $folder = ([regex]::Match($Action.Arguments, '-Folder "([^"]+)"')).Groups[1].Value
    $global:registered["$TaskPath$TaskName"] = [pscustomobject]@{ User = $Principal.UserId; Folder = $folder; Job = $null; Action = $Action.Arguments }
}
function Start-ScheduledTask {
    [CmdletBinding()] param([string]$TaskName, [string]$TaskPath)
    $task = $global:registered["$TaskPath$TaskName"]
    $task.Job = Start-ThreadJob -ArgumentList $task.Folder, $global:linesFile -ScriptBlock {
        param($folder, $source)
        foreach ($line in (Get-Content -LiteralPath $source)) {
            Start-Sleep -Milliseconds 700
            Add-Content -LiteralPath (Join-Path $folder 'results.jsonl') -Value $line
        }
        Set-Content -LiteralPath (Join-Path $folder '.task-ended') -Value 'ended'
    }
}
function Get-ScheduledTask {
    [CmdletBinding()] param([string]$TaskName, [string]$TaskPath)
    $task = $global:registered["$TaskPath$TaskName"]
    if ($null -eq $task) { Write-Error "No MSFT_ScheduledTask objects found with property 'TaskName' equal to '$TaskName'."; return }
    # The fake task has ended once it says so (a thread job's State is no clock for that under load).
    [pscustomobject]@{ State = $(if (Test-Path -LiteralPath (Join-Path $task.Folder '.task-ended')) { 'Ready' } else { 'Running' }) }
}
function Get-ScheduledTaskInfo {
    [CmdletBinding()] param([string]$TaskName, [string]$TaskPath)
    [pscustomobject]@{ LastTaskResult = 1 }
}
function Unregister-ScheduledTask {
    [CmdletBinding()] param([string]$TaskName, [string]$TaskPath, [switch]$Confirm)
    $task = $global:registered["$TaskPath$TaskName"]
    $global:unregistered = [pscustomobject]@{ Name = "$TaskPath$TaskName"; User = $task.User; Action = $task.Action; Folder = $task.Folder }
    $global:registered.Remove("$TaskPath$TaskName")
}
$script = Join-Path $Root 'patch.ps1'
$installText = Get-Content -LiteralPath (Join-Path $Root 'install-text.ps1') -Raw
$global:LASTEXITCODE = 0
$Error.Clear()
$objects = @(& $script 'install' 'Security Updates' '' $Timeout $installText 2>&1)
# What the guest invoker counts as the step's errors: what $Error gained, caught errors included.
$errorCount = @($Error).Count
[pscustomobject]@{
    ExitCode = $LASTEXITCODE
    ErrorCount = $errorCount
    Outputs = @($objects | Where-Object { $_ -isnot [System.Management.Automation.ErrorRecord] })
    Errors = @($objects | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] } | ForEach-Object { "$_" })
    Unregistered = $global:unregistered
    StillRegistered = $global:registered.Count
    FolderLeft = $(if ($global:unregistered) { Test-Path -LiteralPath $global:unregistered.Folder } else { $null })
} | ConvertTo-Json -Depth 4 | Set-Content -LiteralPath $Out
"""


def _run(pwsh_path: str, tmp_path: Path, lines: list[dict[str, object]], *, timeout: int = 30) -> dict[str, object]:
    (tmp_path / "patch.ps1").write_text(PATCH_SCRIPT, encoding="utf-8")
    (tmp_path / "install-text.ps1").write_text(INSTALL_SCRIPT, encoding="utf-8")
    (tmp_path / "harness.ps1").write_text(HARNESS, encoding="utf-8")
    (tmp_path / "lines.txt").write_text("\n".join(json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.json"
    subprocess.run(
        [pwsh_path, "-NoLogo", "-NoProfile", "-NonInteractive", "-File", str(tmp_path / "harness.ps1"),
         "-Root", str(tmp_path), "-Lines", str(tmp_path / "lines.txt"), "-Out", str(out), "-Timeout", str(timeout)],
        check=True, timeout=120, capture_output=True,
    )  # fmt: skip
    result: dict[str, object] = json.loads(out.read_text(encoding="utf-8-sig"))
    return result


UPDATE = {"Kind": "update", "KB": "KB5034441", "Title": "Security update", "Categories": "Security Updates",
          "Result": "Succeeded", "RebootRequired": True, "HResult": 0}  # fmt: skip


def test_install_mode_relays_the_task_results_and_removes_the_task(pwsh_path: str, tmp_path: Path) -> None:
    result = _run(
        pwsh_path,
        tmp_path,
        [
            {"Kind": "progress", "Status": "Searching for updates", "KB": None, "Percent": 0},
            {"Kind": "progress", "Status": "1 of 1: installing", "KB": "KB5034441", "Percent": 0},
            UPDATE,
            {"Kind": "summary", "Found": 1, "Installed": 1, "Failed": 0, "RebootRequired": True},
        ],
    )
    assert result["ExitCode"] == 0, result
    outputs = result["Outputs"]
    assert isinstance(outputs, list) and len(outputs) == 2, result
    assert (outputs[0]["KB"], outputs[0]["Result"], outputs[0]["RebootRequired"]) == ("KB5034441", "Succeeded", True)
    assert outputs[1]["vmbusopsPatchSummary"] is True and outputs[1]["Installed"] == 1 and outputs[1]["RebootRequired"]
    unregistered = result["Unregistered"]
    assert isinstance(unregistered, dict)
    assert unregistered["Name"].startswith("\\vmbusops\\vmbusops-wua-")
    assert unregistered["User"] == "NT AUTHORITY\\SYSTEM"
    assert "-ExecutionPolicy Bypass -File" in unregistered["Action"]
    assert (result["StillRegistered"], result["FolderLeft"], result["Errors"]) == (0, False, [])
    # The invoker judges a step by what $Error gained too: a successful install adds nothing.
    assert result["ErrorCount"] == 0


def test_a_task_that_ends_without_a_summary_fails_the_script_and_is_removed(pwsh_path: str, tmp_path: Path) -> None:
    result = _run(
        pwsh_path,
        tmp_path,
        [{"Kind": "error", "Message": "Exception from HRESULT: 0x80240022", "HResult": -2145124318}],
    )
    assert result["ExitCode"] == 1, result
    errors = result["Errors"]
    assert isinstance(errors, list)
    assert any("Windows Update (as SYSTEM): Exception from HRESULT: 0x80240022" in e for e in errors), errors
    assert any("the Windows Update task ended without a result (LastTaskResult 0x00000001)" in e for e in errors), errors
    assert (result["StillRegistered"], result["FolderLeft"]) == (0, False)


def test_a_task_still_running_at_the_timeout_fails_the_script_and_is_left_alone(pwsh_path: str, tmp_path: Path) -> None:
    progress = {"Kind": "progress", "Status": "1 of 1: installing", "KB": "KB5034441", "Percent": 0}
    result = _run(pwsh_path, tmp_path, [progress] * 6 + [UPDATE], timeout=1)
    assert result["ExitCode"] == 1, result
    errors = result["Errors"]
    assert isinstance(errors, list)
    assert any("did not finish within 1 s; it is left running" in e for e in errors), errors
    # Nothing kills an install half way: the task stays registered, its folder stays.
    assert (result["StillRegistered"], result["Unregistered"]) == (1, None)


# The install script with the WUA's COM objects shadowed by a function New-Object: each update
# offers Download / Install as script methods; -Deny makes Download throw E_ACCESSDENIED, as the
# WUA does for a remote session.
INSTALL_HARNESS = r"""
param([string]$Folder, [switch]$Deny, [switch]$Check)
$global:deny = [bool]$Deny
function New-Object([string]$ComObject) {
    if ($ComObject -eq 'Microsoft.Update.UpdateColl') {
        $coll = [pscustomobject]@{ Items = [System.Collections.ArrayList]::new() }
        $coll | Add-Member ScriptMethod Add { param($u) $this.Items.Add($u) }
        return $coll
    }
    $update = { param($kb, $category, $reboot)
        $u = [pscustomobject]@{ KBArticleIDs = @($kb); Title = "Update $kb"; EulaAccepted = $true; Reboot = $reboot
                                Categories = @([pscustomobject]@{ Name = $category }) }
        $u }
    $session = [pscustomobject]@{ ClientApplicationID = $null }
    $session | Add-Member ScriptMethod CreateUpdateSearcher {
        $s = [pscustomobject]@{}
        $s | Add-Member ScriptMethod Search { param($criteria)
            [pscustomobject]@{ Updates = @((& $update '5034441' 'Security Updates' $true), (& $update '2267602' 'Definition Updates' $false)) } }
        $s }.GetNewClosure()
    $session | Add-Member ScriptMethod CreateUpdateDownloader {
        $d = [pscustomobject]@{ Updates = $null }
        $d | Add-Member ScriptMethod Download {
            if ($global:deny) { throw [System.UnauthorizedAccessException]::new('Exception from HRESULT: 0x80070005 (E_ACCESSDENIED)') }
            [pscustomobject]@{ ResultCode = 2 } }
        $d }
    $session | Add-Member ScriptMethod CreateUpdateInstaller {
        $i = [pscustomobject]@{ Updates = $null }
        $i | Add-Member ScriptMethod Install {
            $u = $this.Updates.Items[0]
            $r = [pscustomobject]@{ ResultCode = 2; RebootRequired = $u.Reboot; HResult = 0 }
            $o = [pscustomobject]@{ R = $r }
            $o | Add-Member ScriptMethod GetUpdateResult { param($n) $this.R }
            $o }
        $i }
    $session
}
$global:LASTEXITCODE = 0
if ($Check) {
    $env:ProgramData = $Folder
    $Error.Clear()
    $objects = @(& (Join-Path $Folder 'patch.ps1') 'check' 'Security Updates' '' 30 '')
    [pscustomobject]@{ ExitCode = $LASTEXITCODE; ErrorCount = @($Error).Count; Outputs = $objects } |
        ConvertTo-Json -Depth 3 | Set-Content -LiteralPath (Join-Path $Folder 'out.json')
    exit 0
}
& (Join-Path $Folder 'install.ps1') -Folder $Folder
exit $LASTEXITCODE
"""


def _run_install(pwsh_path: str, tmp_path: Path, *, deny: bool) -> tuple[int, list[dict[str, object]]]:
    (tmp_path / "install.ps1").write_text(INSTALL_SCRIPT, encoding="utf-8")
    (tmp_path / "request.json").write_text('{"Categories": "", "KBs": ""}', encoding="utf-8")
    (tmp_path / "harness.ps1").write_text(INSTALL_HARNESS, encoding="utf-8")
    args = [pwsh_path, "-NoLogo", "-NoProfile", "-NonInteractive", "-File", str(tmp_path / "harness.ps1"), "-Folder", str(tmp_path)]
    done = subprocess.run([*args, *(["-Deny"] if deny else [])], timeout=120, capture_output=True, check=False)
    lines = (tmp_path / "results.jsonl").read_text(encoding="utf-8-sig").splitlines()
    return done.returncode, [json.loads(line) for line in lines if line.strip()]


def test_the_install_script_writes_a_line_per_event_and_a_summary(pwsh_path: str, tmp_path: Path) -> None:
    code, entries = _run_install(pwsh_path, tmp_path, deny=False)
    assert code == 0, entries
    assert [e["Kind"] for e in entries] == ["progress", "progress", "progress", "update", "progress", "progress", "update", "summary"]
    assert [(e["KB"], e["Result"], e["RebootRequired"]) for e in entries if e["Kind"] == "update"] == [
        ("KB5034441", "Succeeded", True),
        ("KB2267602", "Succeeded", False),
    ]
    assert entries[-1] == {"Kind": "summary", "Found": 2, "Installed": 2, "Failed": 0, "RebootRequired": True}


def test_the_install_script_reports_a_refused_download_and_exits_1(pwsh_path: str, tmp_path: Path) -> None:
    code, entries = _run_install(pwsh_path, tmp_path, deny=True)
    assert code == 1
    assert entries[-1]["Kind"] == "error"
    assert "0x80070005 (E_ACCESSDENIED)" in str(entries[-1]["Message"])
    assert not any(e["Kind"] == "summary" for e in entries)


def test_check_mode_searches_in_the_session_and_lists_without_installing(pwsh_path: str, tmp_path: Path) -> None:
    (tmp_path / "patch.ps1").write_text(PATCH_SCRIPT, encoding="utf-8")
    (tmp_path / "harness.ps1").write_text(INSTALL_HARNESS, encoding="utf-8")
    # -Deny: Download would be refused; check mode never calls it.
    args = [pwsh_path, "-NoLogo", "-NoProfile", "-NonInteractive", "-File", str(tmp_path / "harness.ps1"),
            "-Folder", str(tmp_path), "-Check", "-Deny"]  # fmt: skip
    subprocess.run(args, timeout=120, capture_output=True, check=True)
    result = json.loads((tmp_path / "out.json").read_text(encoding="utf-8-sig"))
    assert (result["ExitCode"], result["ErrorCount"]) == (0, 0), result
    outputs = result["Outputs"]
    assert [(o["KB"], o["Result"]) for o in outputs[:-1]] == [("KB5034441", "Pending")]
    assert outputs[-1]["vmbusopsPatchSummary"] is True and outputs[-1]["Found"] == 1
    assert not (tmp_path / "vmbusops").exists()  # no task, no folder
