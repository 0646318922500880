<#
    VmbusOps: submit signed job bundles to a vmbusops agent and follow them, from runbooks
    (Azure Automation, SMA, CI). Works in Windows PowerShell 5.1 and PowerShell 7.

    The agent URL comes from -Agent or $env:VMBUSOPS_AGENT (default http://127.0.0.1:8421);
    the token from -Token (a SecureString, e.g. from Get-AutomationPSCredential's password) or
    $env:VMBUSOPS_TOKEN. Tokens are never written to the output or the verbose stream.

    Every cmdlet writes typed objects (VmbusOps.Job, VmbusOps.Run, VmbusOps.Record) that take
    the pipeline by property name, so:

        Get-ChildItem .\bundles\*.vmb | Submit-VmbusOpsJob | Wait-VmbusOpsJob | Where-Object State -ne 'success'
        Submit-VmbusOpsJob .\patch.vmb | Receive-VmbusOpsJobOutput -Wait -Stream error,warning
#>

Set-StrictMode -Version 3.0

$script:DefaultAgent = 'http://127.0.0.1:8421'
$script:ActiveStates = @('pending', 'delayed', 'in-progress')

function Resolve-VmbusOpsConnection {
    [CmdletBinding()]
    param([string] $Agent, [securestring] $Token)
    if (-not $Agent) { $Agent = $env:VMBUSOPS_AGENT }
    if (-not $Agent) { $Agent = $script:DefaultAgent }
    if ($Token) {
        $plain = [System.Net.NetworkCredential]::new('', $Token).Password
    } else {
        $plain = $env:VMBUSOPS_TOKEN
    }
    if (-not $plain) {
        throw 'No API token: pass -Token or set $env:VMBUSOPS_TOKEN (create one with: vmbusops agent token create).'
    }
    if ($PSVersionTable.PSVersion.Major -lt 6) {
        [System.Net.ServicePointManager]::SecurityProtocol = [System.Net.SecurityProtocolType]::Tls12
    }
    [pscustomobject]@{ Agent = $Agent.TrimEnd('/'); Headers = @{ Authorization = "Bearer $plain" } }
}

function Invoke-VmbusOpsApi {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory)] $Connection,
        [Parameter(Mandatory)] [string] $Path,
        [string] $Method = 'Get',
        [string] $InFile,
        [string] $ContentType
    )
    $request = @{
        Uri         = $Connection.Agent + $Path
        Method      = $Method
        Headers     = $Connection.Headers
        ErrorAction = 'Stop'
    }
    if ($InFile) { $request.InFile = $InFile; $request.ContentType = $ContentType }
    if ($PSVersionTable.PSVersion.Major -lt 6) { $request.UseBasicParsing = $true }
    Write-Verbose "$Method $($Connection.Agent)$Path"
    try {
        Invoke-RestMethod @request
    } catch {
        # The agent answers errors as RFC 7807 problem details; surface their detail.
        $detail = $_.Exception.Message
        $errorId = 'VmbusOps.RequestFailed'
        if ($_.ErrorDetails -and $_.ErrorDetails.Message) {
            try {
                $problem = $_.ErrorDetails.Message | ConvertFrom-Json
                $detail = "$($problem.title): $($problem.detail)"
                $errorId = 'VmbusOps.' + ($problem.type -replace '^urn:vmbusops:problem:', '')
            } catch {
                $detail = $_.ErrorDetails.Message
            }
        }
        $record = [System.Management.Automation.ErrorRecord]::new(
            [System.InvalidOperationException]::new($detail), $errorId,
            [System.Management.Automation.ErrorCategory]::InvalidOperation, $Path)
        $PSCmdlet.ThrowTerminatingError($record)
    }
}

function ConvertTo-VmbusOpsTime {
    param($Seconds)
    if ($null -eq $Seconds) { return $null }
    [DateTimeOffset]::FromUnixTimeMilliseconds([long]([double]$Seconds * 1000)).LocalDateTime
}

function ConvertTo-VmbusOpsJob {
    param($Job, $Connection)
    [pscustomobject]@{
        PSTypeName      = 'VmbusOps.Job'
        Id              = [int]$Job.id
        Bundle          = $Job.bundle
        Version         = [int]$Job.version
        State           = $Job.state
        Runs            = $Job.runs
        Targets         = if ($Job.PSObject.Properties['targets']) { @($Job.targets) } else { @() }
        CreatedAt       = ConvertTo-VmbusOpsTime $Job.created_at
        StartedAt       = ConvertTo-VmbusOpsTime $Job.started_at
        FinishedAt      = ConvertTo-VmbusOpsTime $Job.finished_at
        CancelRequested = [bool]$Job.cancel_requested
        Agent           = $Connection.Agent
    }
}

function Submit-VmbusOpsJob {
    <#
    .SYNOPSIS
        Submit signed bundles (.vmb); the agent verifies each before anything runs.
    .OUTPUTS
        VmbusOps.Job (or, for a bundle that carries a schedule, VmbusOps.Schedule)
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('VmbusOps.Job')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipeline, ValueFromPipelineByPropertyName)]
        [Alias('FullName')]
        [string[]] $Path,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Agent $Agent -Token $Token }
    process {
        foreach ($item in $Path) {
            $file = (Resolve-Path -LiteralPath $item -ErrorAction Stop).ProviderPath
            if (-not $PSCmdlet.ShouldProcess($file, "submit to $($connection.Agent)")) { continue }
            $answer = Invoke-VmbusOpsApi -Connection $connection -Path '/v1/jobs' -Method Post `
                -InFile $file -ContentType 'application/octet-stream'
            if ($answer.PSObject.Properties['schedule']) {
                $s = $answer.schedule
                [pscustomobject]@{
                    PSTypeName = 'VmbusOps.Schedule'; Name = $s.name; Version = [int]$s.version
                    Cron = $s.cron; TimeZone = $s.timezone; NextRun = [DateTimeOffset]::Parse($s.next_run).LocalDateTime
                    Agent = $connection.Agent
                }
            } else {
                ConvertTo-VmbusOpsJob $answer.job $connection
            }
        }
    }
}

function Get-VmbusOpsJob {
    <#
    .SYNOPSIS
        Jobs visible to the token (newest first), or the jobs with the given ids.
    .OUTPUTS
        VmbusOps.Job; with -IncludeRuns, each job's VmbusOps.Run objects in its RunDetails property.
    #>
    [CmdletBinding(DefaultParameterSetName = 'List')]
    [OutputType('VmbusOps.Job')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName, ParameterSetName = 'ById')]
        [int[]] $Id,
        [Parameter(ParameterSetName = 'List')] [ValidateRange(1, 500)] [int] $Limit = 50,
        [Parameter(ParameterSetName = 'List')] [string] $State,
        [switch] $IncludeRuns,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Agent $Agent -Token $Token }
    process {
        $jobs = if ($PSCmdlet.ParameterSetName -eq 'ById') {
            foreach ($jobId in $Id) { (Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId").job }
        } else {
            $query = "?limit=$Limit" + $(if ($State) { "&state=$([uri]::EscapeDataString($State))" } else { '' })
            (Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs$query").jobs
        }
        foreach ($job in $jobs) {
            $out = ConvertTo-VmbusOpsJob $job $connection
            if ($IncludeRuns) {
                $runs = (Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$($out.Id)/runs").runs
                $details = foreach ($run in $runs) {
                    [pscustomobject]@{
                        PSTypeName = 'VmbusOps.Run'; JobId = $out.Id; VM = $run.vm; State = $run.state
                        CurrentStep = $run.current_step; Records = [int]$run.records; Error = $run.error
                        StartedAt = ConvertTo-VmbusOpsTime $run.started_at; FinishedAt = ConvertTo-VmbusOpsTime $run.finished_at
                        Steps = @($run.steps); Excerpt = @($run.excerpt)
                    }
                }
                $out | Add-Member -NotePropertyName RunDetails -NotePropertyValue @($details)
            }
            $out
        }
    }
}

function Wait-VmbusOpsJob {
    <#
    .SYNOPSIS
        Wait until jobs end; writes each job as it finishes.
    #>
    [CmdletBinding()]
    [OutputType('VmbusOps.Job')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)] [int[]] $Id,
        [int] $TimeoutSeconds = 86400,
        [ValidateRange(1, 300)] [int] $PollSeconds = 2,
        [string] $Agent,
        [securestring] $Token
    )
    begin {
        $connection = Resolve-VmbusOpsConnection -Agent $Agent -Token $Token
        $pending = [System.Collections.Generic.List[int]]::new()
    }
    process { foreach ($jobId in $Id) { $pending.Add($jobId) } }
    end {
        $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
        while ($pending.Count -gt 0) {
            foreach ($jobId in @($pending)) {
                $job = ConvertTo-VmbusOpsJob (Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId").job $connection
                if ($script:ActiveStates -notcontains $job.State) {
                    [void]$pending.Remove($jobId)
                    $job
                }
            }
            if ($pending.Count -eq 0) { break }
            if ((Get-Date) -gt $deadline) {
                Write-Error -ErrorId 'VmbusOps.WaitTimeout' -Message "jobs $($pending -join ', ') still running after $TimeoutSeconds s"
                return
            }
            Start-Sleep -Seconds $PollSeconds
        }
    }
}

function Receive-VmbusOpsJobOutput {
    <#
    .SYNOPSIS
        A job's records (output, errors, warnings, verbose, progress...), in order; -Wait follows
        the job until it ends, never repeating or skipping a record (the agent's cursor).
    .OUTPUTS
        VmbusOps.Record
    #>
    [CmdletBinding()]
    [OutputType('VmbusOps.Record')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)] [int[]] $Id,
        [string] $VM,
        [ValidateSet('output', 'error', 'warning', 'verbose', 'debug', 'information', 'progress', 'state')]
        [string[]] $Stream,
        [switch] $Wait,
        [ValidateRange(1, 60)] [int] $PollSeconds = 1,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Agent $Agent -Token $Token }
    process {
        foreach ($jobId in $Id) {
            $cursor = ''
            while ($true) {
                $query = "?limit=5000&after=$([uri]::EscapeDataString($cursor))"
                if ($VM) { $query += "&vm=$([uri]::EscapeDataString($VM))" }
                $page = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId/records$query"
                foreach ($r in $page.records) {
                    if ($Stream -and $Stream -notcontains $r.stream) { continue }
                    $text = switch ($r.stream) {
                        'output' { if ($r.value -is [string]) { $r.value } else { ($r.value | ConvertTo-Json -Compress -Depth 8) } }
                        'information' { "$($r.message_data)" }
                        'progress' { "$($r.activity): $($r.status_description)" }
                        'state' { "$($r.state)" }
                        default { "$($r.message)" }
                    }
                    [pscustomobject]@{
                        PSTypeName = 'VmbusOps.Record'; JobId = $jobId; VM = $r.vm; Seq = [int]$r.seq
                        Stream = $r.stream; Step = $r.step; Time = ConvertTo-VmbusOpsTime $r.time
                        Message = $text; Record = $r
                    }
                }
                $cursor = $page.cursor
                if (@($page.records).Count -ge 5000) { continue }
                if (-not $Wait -or $script:ActiveStates -notcontains $page.state) {
                    if (@($page.records).Count -eq 0) { break }
                    continue
                }
                Start-Sleep -Seconds $PollSeconds
            }
        }
    }
}

Export-ModuleMember -Function @('Submit-VmbusOpsJob', 'Get-VmbusOpsJob', 'Wait-VmbusOpsJob', 'Receive-VmbusOpsJobOutput')
