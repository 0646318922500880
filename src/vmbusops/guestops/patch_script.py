"""The guest scripts of the ``patch`` step: Windows Update through the Windows Update Agent COM API.

Why two scripts
---------------
Microsoft documents that ``IUpdateSession::CreateUpdateDownloader`` and ``CreateUpdateInstaller``
are not available to a remote session: ``Download()`` and ``Install()`` fail with E_ACCESSDENIED
(0x80070005). PowerShell Direct is a remote session. Searching is allowed. So:

- :data:`PATCH_SCRIPT` runs in the PowerShell Direct session. In ``check`` mode it searches and
  lists what would be installed. In ``install`` mode it writes :data:`INSTALL_SCRIPT` and a small
  request (categories, KB ids) to ``C:\\ProgramData\\vmbusops\\wua\\<id>``, registers a scheduled task
  that runs it as ``NT AUTHORITY\\SYSTEM`` (a local, non-remote logon), starts it, and polls the
  task's result file, relaying each line as it appears; it removes the task and the folder when
  it ends, whatever happened. It gives up waiting after ``TimeoutSeconds`` (exit 1), leaving a task
  that is still running registered, so that nothing kills an install half way.
- :data:`INSTALL_SCRIPT` runs as that task: search, download and install, one update at a time,
  writing one JSON line per event to ``results.jsonl``.

Arguments of :data:`PATCH_SCRIPT`: mode (``check`` | ``install``), categories and KB ids (comma
separated, empty for all), the timeout in seconds, and the text of :data:`INSTALL_SCRIPT` (passed
rather than embedded, so the guest writes exactly the text the agent ships). Its output, per
update, a progress record and one object, then one summary object::

    KB, Title, Categories, Result (Pending | Succeeded | SucceededWithErrors | Failed | Aborted),
    RebootRequired
    vmbusopsPatchSummary = $true, Found, Installed, Failed, RebootRequired

It exits 0 when it has a summary, 1 otherwise. Neither script sets ``$ErrorActionPreference =
'Stop'`` for itself: the calls that must not fail say ``-ErrorAction Stop`` or sit in ``try``. The
guest invoker counts what ``$Error`` gains as the step's errors (caught ones included), so the
script's successful path records none: it reads only whole result lines instead of catching a
half-written one, and cleans up with ``-ErrorAction Ignore`` and a check.

The simulated guest has no COM: it recognises both texts by their SHA-256
(``vmbusops.sim.wua``), runs :data:`PATCH_SCRIPT` as a simulated equivalent, and runs a scheduled
task whose ``-File`` holds exactly :data:`INSTALL_SCRIPT` as SYSTEM; run in the remote session,
that script's Download is refused with E_ACCESSDENIED, as on Windows. A test pins the hashes, so
changing a script without the simulator fails loudly.
"""

from __future__ import annotations

import hashlib
from typing import Final

INSTALL_SCRIPT: Final = """\
# vmbusops patch step, the part that runs as a SYSTEM scheduled task: the Windows Update Agent
# refuses Download and Install to a remote session (E_ACCESSDENIED), and PowerShell Direct is one.
param([Parameter(Mandatory = $true)][string]$Folder)
$results = Join-Path $Folder 'results.jsonl'
function Write-Result([System.Collections.IDictionary]$Entry) {
    Add-Content -LiteralPath $results -Value (ConvertTo-Json -InputObject $Entry -Compress) -Encoding UTF8
}
try {
    $request = Get-Content -LiteralPath (Join-Path $Folder 'request.json') -Raw -ErrorAction Stop | ConvertFrom-Json
    $wantCategories = @("$($request.Categories)" -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim() })
    $wantKbs = @("$($request.KBs)" -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim().ToUpper() -replace '^KB', '' })
    $resultNames = @{ 0 = 'NotStarted'; 1 = 'InProgress'; 2 = 'Succeeded'; 3 = 'SucceededWithErrors'; 4 = 'Failed'; 5 = 'Aborted' }
    $session = New-Object -ComObject Microsoft.Update.Session
    $session.ClientApplicationID = 'vmbusops'
    Write-Result ([ordered]@{ Kind = 'progress'; Status = 'Searching for updates'; KB = $null; Percent = 0 })
    $found = $session.CreateUpdateSearcher().Search("IsInstalled=0 and Type='Software' and IsHidden=0")
    $selected = @()
    foreach ($update in $found.Updates) {
        $names = @($update.Categories | ForEach-Object { $_.Name })
        $ids = @($update.KBArticleIDs)
        if ($wantCategories.Count -and -not ($names | Where-Object { $wantCategories -contains $_ })) { continue }
        if ($wantKbs.Count -and -not ($ids | Where-Object { $wantKbs -contains $_ })) { continue }
        $selected += $update
    }
    $installed = 0; $failed = 0; $reboot = $false; $n = 0
    foreach ($update in $selected) {
        $n++
        $kb = 'KB' + (@($update.KBArticleIDs) -join ',KB')
        $names = @($update.Categories | ForEach-Object { $_.Name }) -join ', '
        $percent = [int](100 * ($n - 1) / $selected.Count)
        if (-not $update.EulaAccepted) { $update.AcceptEula() }
        $one = New-Object -ComObject Microsoft.Update.UpdateColl
        [void]$one.Add($update)
        Write-Result ([ordered]@{ Kind = 'progress'; Status = "$n of $($selected.Count): downloading"; KB = $kb; Percent = $percent })
        $downloader = $session.CreateUpdateDownloader()
        $downloader.Updates = $one
        [void]$downloader.Download()
        Write-Result ([ordered]@{ Kind = 'progress'; Status = "$n of $($selected.Count): installing"; KB = $kb; Percent = $percent })
        $installer = $session.CreateUpdateInstaller()
        $installer.Updates = $one
        $outcome = $installer.Install()
        $result = $outcome.GetUpdateResult(0)
        $code = [int]$result.ResultCode
        if ($code -eq 2 -or $code -eq 3) { $installed++ } else { $failed++ }
        $needs = [bool]$result.RebootRequired
        $reboot = $reboot -or $needs
        Write-Result ([ordered]@{ Kind = 'update'; KB = $kb; Title = $update.Title; Categories = $names; Result = $resultNames[$code]; RebootRequired = $needs; HResult = [int]$result.HResult })
    }
    Write-Result ([ordered]@{ Kind = 'summary'; Found = $selected.Count; Installed = $installed; Failed = $failed; RebootRequired = $reboot })
    exit 0
} catch {
    Write-Result ([ordered]@{ Kind = 'error'; Message = "$($_.Exception.Message)"; HResult = [int]$_.Exception.HResult })
    exit 1
}
"""

PATCH_SCRIPT: Final = """\
# vmbusops patch step: Windows Update through the Windows Update Agent API. Searching works in this
# (remote) session; downloading and installing do not, so they run as a SYSTEM scheduled task.
param([string]$Mode = 'install', [string]$Categories = '', [string]$KBs = '', [int]$TimeoutSeconds = 3600,
      [string]$InstallScript = '')
$activity = 'Windows Update'
function Write-Update($Entry) {
    [pscustomobject]@{ KB = $Entry.KB; Title = $Entry.Title; Categories = $Entry.Categories; Result = $Entry.Result; RebootRequired = [bool]$Entry.RebootRequired }
}
if ($Mode -eq 'check') {
    try {
        $wantCategories = @($Categories -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim() })
        $wantKbs = @($KBs -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim().ToUpper() -replace '^KB', '' })
        $session = New-Object -ComObject Microsoft.Update.Session
        $session.ClientApplicationID = 'vmbusops'
        Write-Progress -Activity $activity -Status 'Searching for updates' -PercentComplete 0
        $found = $session.CreateUpdateSearcher().Search("IsInstalled=0 and Type='Software' and IsHidden=0")
    } catch {
        Write-Error -ErrorRecord $_
        exit 1
    }
    $selected = @()
    foreach ($update in $found.Updates) {
        $names = @($update.Categories | ForEach-Object { $_.Name })
        $ids = @($update.KBArticleIDs)
        if ($wantCategories.Count -and -not ($names | Where-Object { $wantCategories -contains $_ })) { continue }
        if ($wantKbs.Count -and -not ($ids | Where-Object { $wantKbs -contains $_ })) { continue }
        $selected += $update
    }
    $n = 0
    foreach ($update in $selected) {
        $n++
        $kb = 'KB' + (@($update.KBArticleIDs) -join ',KB')
        $percent = [int](100 * ($n - 1) / $selected.Count)
        Write-Progress -Activity $activity -Status "$n of $($selected.Count): would install" -CurrentOperation $kb -PercentComplete $percent
        Write-Update @{ KB = $kb; Title = $update.Title; Categories = (@($update.Categories | ForEach-Object { $_.Name }) -join ', '); Result = 'Pending'; RebootRequired = $false }
    }
    Write-Progress -Activity $activity -Completed
    [pscustomobject]@{ vmbusopsPatchSummary = $true; Found = $selected.Count; Installed = 0; Failed = 0; RebootRequired = $false }
    exit 0
}

$id = [guid]::NewGuid().ToString('N')
$folder = Join-Path $env:ProgramData "vmbusops\\wua\\$id"
$taskName = "vmbusops-wua-$id"
$taskPath = '\\vmbusops\\'
$results = Join-Path $folder 'results.jsonl'
$summary = $null
$running = $false
try {
    $null = New-Item -ItemType Directory -Path $folder -Force -ErrorAction Stop
    Set-Content -LiteralPath (Join-Path $folder 'install.ps1') -Value $InstallScript -Encoding UTF8 -ErrorAction Stop
    [pscustomobject]@{ Categories = $Categories; KBs = $KBs } | ConvertTo-Json |
        Set-Content -LiteralPath (Join-Path $folder 'request.json') -Encoding UTF8 -ErrorAction Stop
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' `
        -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$folder\\install.ps1`" -Folder `"$folder`""
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
    $null = Register-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Action $action -Principal $principal -Force -ErrorAction Stop
    Write-Progress -Activity $activity -Status "Installing as SYSTEM (scheduled task $taskPath$taskName)" -PercentComplete 0
    Start-ScheduledTask -TaskName $taskName -TaskPath $taskPath -ErrorAction Stop
    $running = $true
    $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
    $seen = 0
    while ($null -eq $summary) {
        $state = (Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath -ErrorAction Stop).State
        # Only whole lines: the task may be writing the last one right now.
        $text = ''
        if (Test-Path -LiteralPath $results) { $text = "$(Get-Content -LiteralPath $results -Raw -Encoding UTF8 -ErrorAction Ignore)" }
        $lines = @($text.Substring(0, $text.LastIndexOf("`n") + 1) -split "`r?`n" | Where-Object { $_ })
        while ($seen -lt $lines.Count) {
            $entry = ConvertFrom-Json -InputObject $lines[$seen]
            $seen++
            switch ($entry.Kind) {
                'progress' {
                    if ($entry.KB) { Write-Progress -Activity $activity -Status $entry.Status -CurrentOperation $entry.KB -PercentComplete $entry.Percent }
                    else { Write-Progress -Activity $activity -Status $entry.Status -PercentComplete $entry.Percent }
                }
                'update' { Write-Update $entry }
                'error' { Write-Error -Message "Windows Update (as SYSTEM): $($entry.Message)" -ErrorId 'VmbusOpsWindowsUpdateFailed' }
                'summary' { $summary = $entry }
            }
        }
        if ($null -ne $summary) { break }
        if ($state -ne 'Running' -and $state -ne 'Queued') {
            $running = $false
            $info = Get-ScheduledTaskInfo -TaskName $taskName -TaskPath $taskPath
            Write-Error -Message ("the Windows Update task ended without a result (LastTaskResult 0x{0:X8})" -f [long]$info.LastTaskResult) -ErrorId 'VmbusOpsWindowsUpdateTaskEnded'
            exit 1
        }
        if ((Get-Date) -gt $deadline) {
            Write-Error -Message "the Windows Update task $taskPath$taskName did not finish within $TimeoutSeconds s; it is left running" -ErrorId 'VmbusOpsWindowsUpdateTimeout'
            exit 1
        }
        Start-Sleep -Seconds 2
    }
    $running = $false
} finally {
    if (-not $running) {
        # -ErrorAction Ignore keeps a failed clean-up out of $Error (it would fail the step); it is
        # checked and said instead.
        Unregister-ScheduledTask -TaskName $taskName -TaskPath $taskPath -Confirm:$false -ErrorAction Ignore
        Remove-Item -LiteralPath $folder -Recurse -Force -ErrorAction Ignore
        if (Get-ScheduledTask -TaskName $taskName -TaskPath $taskPath -ErrorAction Ignore) {
            Write-Warning "could not remove the scheduled task $taskPath$taskName; remove it by hand"
        }
    }
}
Write-Progress -Activity $activity -Completed
[pscustomobject]@{ vmbusopsPatchSummary = $true; Found = [int]$summary.Found; Installed = [int]$summary.Installed; Failed = [int]$summary.Failed; RebootRequired = [bool]$summary.RebootRequired }
exit 0
"""

INSTALL_SCRIPT_SHA256: Final = hashlib.sha256(INSTALL_SCRIPT.encode("utf-8")).hexdigest()
PATCH_SCRIPT_SHA256: Final = hashlib.sha256(PATCH_SCRIPT.encode("utf-8")).hexdigest()
