"""The guest script of the ``patch`` step: Windows Update through the Windows Update Agent COM API.

It runs inside the guest through PowerShell Direct with three arguments (mode, categories, KB
ids) and writes, per update, a progress record and one result object, then one summary object::

    KB, Title, Categories, Result (Pending | Succeeded | SucceededWithErrors | Failed | Aborted),
    RebootRequired
    vmbusopsPatchSummary = $true, Found, Installed, Failed, RebootRequired

The simulated guest does not implement COM; it recognises this exact text by its SHA-256
(``vmbusops.sim.wua.PATCH_SCRIPT_SHA256``) and runs a simulated equivalent over the lab's pending
updates. A test pins the two together, so changing the script without the simulator fails loudly.
"""

from __future__ import annotations

import hashlib
from typing import Final

PATCH_SCRIPT: Final = """\
# vmbusops patch step: search, download and install updates with the Windows Update Agent API.
param([string]$Mode = 'install', [string]$Categories = '', [string]$KBs = '')
$ErrorActionPreference = 'Stop'
$wantCategories = @($Categories -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim() })
$wantKbs = @($KBs -split ',' | Where-Object { $_ } | ForEach-Object { $_.Trim().ToUpper() -replace '^KB', '' })
$resultNames = @{ 0 = 'NotStarted'; 1 = 'InProgress'; 2 = 'Succeeded'; 3 = 'SucceededWithErrors'; 4 = 'Failed'; 5 = 'Aborted' }
$session = New-Object -ComObject Microsoft.Update.Session
$session.ClientApplicationID = 'vmbusops'
Write-Progress -Activity 'Windows Update' -Status 'Searching for updates' -PercentComplete 0
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
    if ($Mode -eq 'check') {
        Write-Progress -Activity 'Windows Update' -Status "$n of $($selected.Count): would install" -CurrentOperation $kb -PercentComplete $percent
        [pscustomobject]@{ KB = $kb; Title = $update.Title; Categories = $names; Result = 'Pending'; RebootRequired = $false }
        continue
    }
    if (-not $update.EulaAccepted) { $update.AcceptEula() }
    $one = New-Object -ComObject Microsoft.Update.UpdateColl
    [void]$one.Add($update)
    Write-Progress -Activity 'Windows Update' -Status "$n of $($selected.Count): downloading" -CurrentOperation $kb -PercentComplete $percent
    $downloader = $session.CreateUpdateDownloader()
    $downloader.Updates = $one
    [void]$downloader.Download()
    Write-Progress -Activity 'Windows Update' -Status "$n of $($selected.Count): installing" -CurrentOperation $kb -PercentComplete $percent
    $installer = $session.CreateUpdateInstaller()
    $installer.Updates = $one
    $outcome = $installer.Install()
    $code = $outcome.GetUpdateResult(0).ResultCode
    if ($code -eq 2 -or $code -eq 3) { $installed++ } else { $failed++ }
    $needs = [bool]$outcome.GetUpdateResult(0).RebootRequired
    $reboot = $reboot -or $needs
    [pscustomobject]@{ KB = $kb; Title = $update.Title; Categories = $names; Result = $resultNames[[int]$code]; RebootRequired = $needs }
}
Write-Progress -Activity 'Windows Update' -Completed
[pscustomobject]@{ vmbusopsPatchSummary = $true; Found = $selected.Count; Installed = $installed; Failed = $failed; RebootRequired = $reboot }
"""

PATCH_SCRIPT_SHA256: Final = hashlib.sha256(PATCH_SCRIPT.encode("utf-8")).hexdigest()
