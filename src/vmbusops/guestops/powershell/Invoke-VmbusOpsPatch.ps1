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
$folder = Join-Path $env:ProgramData "vmbusops\wua\$id"
$taskName = "vmbusops-wua-$id"
$taskPath = '\vmbusops\'
$results = Join-Path $folder 'results.jsonl'
$summary = $null
$running = $false
try {
    $null = New-Item -ItemType Directory -Path $folder -Force -ErrorAction Stop
    Set-Content -LiteralPath (Join-Path $folder 'install.ps1') -Value $InstallScript -Encoding UTF8 -ErrorAction Stop
    [pscustomobject]@{ Categories = $Categories; KBs = $KBs } | ConvertTo-Json |
        Set-Content -LiteralPath (Join-Path $folder 'request.json') -Encoding UTF8 -ErrorAction Stop
    $action = New-ScheduledTaskAction -Execute 'powershell.exe' `
        -Argument "-NoProfile -NonInteractive -ExecutionPolicy Bypass -File `"$folder\install.ps1`" -Folder `"$folder`""
    $principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
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
