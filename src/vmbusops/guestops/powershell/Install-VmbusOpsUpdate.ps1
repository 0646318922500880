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
