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

function New-VmbusOpsErrorRecord {
    param(
        [Parameter(Mandatory)] [string] $Message,
        [Parameter(Mandatory)] [string] $ErrorId,
        [Parameter(Mandatory)] [System.Management.Automation.ErrorCategory] $Category,
        $TargetObject,
        [string] $RecommendedAction,
        [System.Exception] $InnerException
    )
    $record = [System.Management.Automation.ErrorRecord]::new(
        [System.InvalidOperationException]::new($Message, $InnerException), $ErrorId, $Category, $TargetObject)
    if ($RecommendedAction) {
        $record.ErrorDetails = [System.Management.Automation.ErrorDetails]::new($Message)
        $record.ErrorDetails.RecommendedAction = $RecommendedAction
    }
    $record
}

function Resolve-VmbusOpsConnection {
    # -Caller: the public cmdlet this is for, so that its errors carry that cmdlet's name.
    param(
        [Parameter(Mandatory)] [System.Management.Automation.PSCmdlet] $Caller,
        [string] $Agent,
        [securestring] $Token
    )
    if (-not $Agent) { $Agent = $env:VMBUSOPS_AGENT }
    if (-not $Agent) { $Agent = $script:DefaultAgent }
    if ($Token) {
        $plain = [System.Net.NetworkCredential]::new('', $Token).Password
    } else {
        $plain = $env:VMBUSOPS_TOKEN
    }
    if (-not $plain) {
        $Caller.ThrowTerminatingError((New-VmbusOpsErrorRecord -ErrorId 'VmbusOps.NoToken' -Category AuthenticationError `
            -Message 'No API token: pass -Token or set $env:VMBUSOPS_TOKEN.' -TargetObject $Agent `
            -RecommendedAction 'Create one on the agent host with: vmbusops agent token create'))
    }
    if ($PSVersionTable.PSVersion.Major -lt 6) {
        [System.Net.ServicePointManager]::SecurityProtocol = [System.Net.SecurityProtocolType]::Tls12
    }
    [pscustomobject]@{ Agent = $Agent.TrimEnd('/'); Headers = @{ Authorization = "Bearer $plain" }; Caller = $Caller }
}

# An answer without problem details (a proxy's error page; on 5.1, any error answer without a
# Content-Length, whose body Invoke-RestMethod does not read): the kind its status would have had.
$script:StatusKind = @{ 401 = 'unauthorized'; 403 = 'forbidden'; 404 = 'not-found'; 413 = 'too-large'; 429 = 'rate-limited' }

# HTTP status -> the PowerShell error category a runbook can branch on.
$script:StatusCategory = @{
    400 = 'InvalidArgument'; 401 = 'AuthenticationError'; 403 = 'PermissionDenied'; 404 = 'ObjectNotFound'
    409 = 'InvalidOperation'; 413 = 'LimitsExceeded'; 415 = 'InvalidType'; 422 = 'InvalidData'; 429 = 'LimitsExceeded'
}

function ConvertFrom-VmbusOpsFailure {
    <#
        An Invoke-RestMethod failure as the error a runbook sees. The agent answers every refusal
        with RFC 7807 problem details (type urn:vmbusops:problem:KIND); the error id is
        VmbusOps.<Kind> (bundle-rejected -> VmbusOps.BundleRejected). No HTTP answer at all
        (refused, reset, name resolution, TLS) is VmbusOps.AgentUnreachable.
        Works on both editions: 5.1 throws a WebException, 7 an HttpResponseException or an
        HttpRequestException; both keep the answer's body in ErrorDetails.Message.
    #>
    param([Parameter(Mandatory)] $Failure, [Parameter(Mandatory)] $Connection, [string] $Method, [string] $Path)
    $response = $null
    if ($Failure.Exception.PSObject.Properties['Response']) { $response = $Failure.Exception.Response }
    if ($null -eq $response) {
        return New-VmbusOpsErrorRecord -ErrorId 'VmbusOps.AgentUnreachable' -Category ConnectionError `
            -Message "Cannot reach the vmbusops agent at $($Connection.Agent): $($Failure.Exception.Message)" `
            -TargetObject $Connection.Agent -InnerException $Failure.Exception `
            -RecommendedAction 'Check -Agent (or $env:VMBUSOPS_AGENT) and that the agent is running: vmbusops agent'
    }
    $status = [int]$response.StatusCode
    $body = ''
    if ($Failure.ErrorDetails -and $Failure.ErrorDetails.Message) { $body = $Failure.ErrorDetails.Message }
    $problem = $null
    try { $problem = $body | ConvertFrom-Json -ErrorAction Stop } catch { $problem = $null }
    $hint = $null
    if ($problem -and $problem.PSObject.Properties['type'] -and $problem.PSObject.Properties['detail']) {
        $kind = "$($problem.type)" -replace '^urn:vmbusops:problem:', ''
        $message = "$($problem.title): $($problem.detail)"
        if ($problem.PSObject.Properties['hint'] -and $problem.hint) { $hint = "$($problem.hint)" }
    } else {
        $kind = if ($script:StatusKind.ContainsKey($status)) { $script:StatusKind[$status] } else { "http-$status" }
        $text = ($body -replace '\s+', ' ').Trim()
        if ($text.Length -gt 200) { $text = $text.Substring(0, 200) + '...' }
        # HttpResponseMessage (7) has ReasonPhrase, HttpWebResponse (5.1) StatusDescription.
        $reason = Get-VmbusOpsProperty $response 'ReasonPhrase'
        if (-not $reason) { $reason = Get-VmbusOpsProperty $response 'StatusDescription' }
        $message = "$Method $Path answered HTTP $status $reason$(if ($text) { ": $text" })"
    }
    $words = foreach ($word in ($kind -split '[^A-Za-z0-9]+')) {
        if ($word) { $word.Substring(0, 1).ToUpperInvariant() + $word.Substring(1) }
    }
    $category = if ($script:StatusCategory.ContainsKey($status)) { $script:StatusCategory[$status] }
                elseif ($status -ge 500) { 'ResourceUnavailable' } else { 'NotSpecified' }
    New-VmbusOpsErrorRecord -ErrorId ('VmbusOps.' + ($words -join '')) -Category $category -Message $message `
        -TargetObject $Path -RecommendedAction $hint
}

function Invoke-VmbusOpsApi {
    <#
        One request to the agent. Failures are terminating errors of the calling public cmdlet,
        except that with -NotFoundIsNonTerminating a 404 is written as a non-terminating error of
        that cmdlet and nothing is returned (one unknown job id among several must not end the rest).
    #>
    param(
        [Parameter(Mandatory)] $Connection,
        [Parameter(Mandatory)] [string] $Path,
        [string] $Method = 'Get',
        [string] $InFile,
        [string] $ContentType,
        [switch] $NotFoundIsNonTerminating
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
        $record = ConvertFrom-VmbusOpsFailure -Failure $_ -Connection $Connection -Method $Method -Path $Path
        if ($NotFoundIsNonTerminating -and $record.CategoryInfo.Category -eq 'ObjectNotFound') {
            $Connection.Caller.WriteError($record)
            return
        }
        $Connection.Caller.ThrowTerminatingError($record)
    }
}

function ConvertTo-VmbusOpsTime {
    # The agent writes times as ISO 8601 UTC text; seconds since the epoch are read too.
    param($Value)
    if ($null -eq $Value) { return $null }
    if ($Value -is [double] -or $Value -is [long] -or $Value -is [int] -or $Value -is [decimal]) {
        return [DateTimeOffset]::FromUnixTimeMilliseconds([long]([double]$Value * 1000)).LocalDateTime
    }
    ConvertFrom-VmbusOpsDate $Value
}

function ConvertFrom-VmbusOpsDate {
    # PowerShell 7's ConvertFrom-Json already makes an ISO 8601 string a DateTime; 5.1's does not.
    param($Value)
    if ($null -eq $Value) { return $null }
    if ($Value -is [datetime]) { return $Value.ToLocalTime() }
    [DateTimeOffset]::Parse([string]$Value, [System.Globalization.CultureInfo]::InvariantCulture).LocalDateTime
}

function Get-VmbusOpsProperty {
    # A property the agent may leave out (Set-StrictMode refuses reading a missing one).
    param($InputObject, [string] $Name)
    if ($null -ne $InputObject -and $InputObject.PSObject.Properties[$Name]) { $InputObject.$Name }
}

function ConvertTo-VmbusOpsText {
    <#
        A record value as a line of text: strings as they are, PowerShell objects as their
        ToString (the agent keeps it in "string": Write-Host's HostInformationMessage is its text),
        anything else as compact JSON.
    #>
    param($Value)
    if ($null -eq $Value) { return '' }
    if ($Value -is [string]) { return $Value }
    if ($Value -is [System.Management.Automation.PSCustomObject] -and $Value.PSObject.Properties['$type']) {
        $text = Get-VmbusOpsProperty $Value 'string'
        if ($null -ne $text) { return [string]$text }
        $properties = Get-VmbusOpsProperty $Value 'properties'
        if ($null -ne $properties -and $properties.PSObject.Properties['Message']) { return [string]$properties.Message }
    }
    if ($Value -is [ValueType]) { return [string]$Value }
    $Value | ConvertTo-Json -Compress -Depth 8
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
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
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
                    Cron = $s.cron; TimeZone = $s.timezone; NextRun = ConvertFrom-VmbusOpsDate $s.next_run
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
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
    process {
        $jobs = if ($PSCmdlet.ParameterSetName -eq 'ById') {
            foreach ($jobId in $Id) {
                $answer = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId" -NotFoundIsNonTerminating
                if ($null -ne $answer) { $answer.job }
            }
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
        $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token
        $pending = [System.Collections.Generic.List[int]]::new()
    }
    process { foreach ($jobId in $Id) { $pending.Add($jobId) } }
    end {
        $deadline = (Get-Date).AddSeconds($TimeoutSeconds)
        while ($pending.Count -gt 0) {
            foreach ($jobId in @($pending)) {
                $answer = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId" -NotFoundIsNonTerminating
                if ($null -eq $answer) { [void]$pending.Remove($jobId); continue }
                $job = ConvertTo-VmbusOpsJob $answer.job $connection
                if ($script:ActiveStates -notcontains $job.State) {
                    [void]$pending.Remove($jobId)
                    $job
                }
            }
            if ($pending.Count -eq 0) { break }
            if ((Get-Date) -gt $deadline) {
                Write-Error -ErrorId 'VmbusOps.WaitTimeout' -Category OperationTimeout -TargetObject @($pending) `
                    -Message "jobs $($pending -join ', ') still running after $TimeoutSeconds s"
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
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
    process {
        foreach ($jobId in $Id) {
            $cursor = ''
            while ($true) {
                $query = "?limit=5000&after=$([uri]::EscapeDataString($cursor))"
                if ($VM) { $query += "&vm=$([uri]::EscapeDataString($VM))" }
                $page = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId/records$query" -NotFoundIsNonTerminating
                if ($null -eq $page) { break }
                foreach ($r in $page.records) {
                    if ($Stream -and $Stream -notcontains $r.stream) { continue }
                    $text = switch ($r.stream) {
                        'output' { ConvertTo-VmbusOpsText $r.value }
                        'information' { ConvertTo-VmbusOpsText $r.message_data }
                        'progress' { "$($r.activity): $($r.status_description)" }
                        'state' { "$($r.state)" }
                        default { "$($r.message)" }
                    }
                    [pscustomobject]@{
                        PSTypeName = 'VmbusOps.Record'; JobId = $jobId; VM = $r.vm; Seq = [int]$r.seq
                        Stream = $r.stream; Step = Get-VmbusOpsProperty $r 'step'; Time = ConvertTo-VmbusOpsTime $r.time
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
