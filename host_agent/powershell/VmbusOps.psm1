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
        Submit-VmbusOpsJob .\patch.vmb | Receive-VmbusOpsJobOutput -Follow -Verbose    # live, stream by stream
        Get-VmbusOpsJob -State in-progress | Stop-VmbusOpsJob
        Get-VmbusOpsJob -State interrupted | Resume-VmbusOpsJob | Wait-VmbusOpsJob    # after the agent's restart
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
        HttpRequestException; both keep the answer's body in ErrorDetails.Message, which the
        caller passes as -Body (HttpWebRequest's WebException, on both: the caller reads it).
    #>
    param(
        [Parameter(Mandatory)] [System.Exception] $Exception,
        [Parameter(Mandatory)] $Connection,
        [string] $Body,
        [string] $Method,
        [string] $Path
    )
    # A .NET method call's failure (HttpWebRequest.GetResponse) arrives wrapped.
    if ($Exception -is [System.Management.Automation.MethodInvocationException] -and $Exception.InnerException) {
        $Exception = $Exception.InnerException
    }
    $response = $null
    if ($Exception.PSObject.Properties['Response']) { $response = $Exception.Response }
    if ($null -eq $response) {
        return New-VmbusOpsErrorRecord -ErrorId 'VmbusOps.AgentUnreachable' -Category ConnectionError `
            -Message "Cannot reach the vmbusops agent at $($Connection.Agent): $($Exception.Message)" `
            -TargetObject $Connection.Agent -InnerException $Exception `
            -RecommendedAction 'Check -Agent (or $env:VMBUSOPS_AGENT) and that the agent is running: vmbusops agent'
    }
    $status = [int]$response.StatusCode
    if (-not $Body) { $Body = '' }
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
        except that with -NotFoundIsNonTerminating a 404 (and any -NonTerminatingCategory) is
        written as a non-terminating error of that cmdlet and nothing is returned (one unknown job
        id among several must not end the rest).
    #>
    param(
        [Parameter(Mandatory)] $Connection,
        [Parameter(Mandatory)] [string] $Path,
        [string] $Method = 'Get',
        [string] $InFile,
        [string] $ContentType,
        [switch] $NotFoundIsNonTerminating,
        # More error categories written as non-terminating errors (Stop-VmbusOpsJob: InvalidOperation).
        [string[]] $NonTerminatingCategory = @()
    )
    if ($NotFoundIsNonTerminating) { $NonTerminatingCategory += 'ObjectNotFound' }
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
        $body = $null
        if ($_.ErrorDetails) { $body = $_.ErrorDetails.Message }
        $record = ConvertFrom-VmbusOpsFailure -Exception $_.Exception -Body $body -Connection $Connection -Method $Method -Path $Path
        if ($NonTerminatingCategory -contains "$($record.CategoryInfo.Category)") {
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

function ConvertTo-VmbusOpsSafeText {
    <#
        Guest text as a console may show it: every control character but tab and newline as
        \xNN (an escape sequence would clear the screen or set the window's title; a carriage
        return would overwrite the "[VM]" before it), and each bidirectional override or isolate
        as \uNNNN, as the vmbusops command line shows them. Windows PowerShell 5.1 strips none.
    #>
    param([AllowNull()] [AllowEmptyString()] [string] $Text)
    if ([string]::IsNullOrEmpty($Text)) { return $Text }
    $script:UnsafeChar.Replace($Text, {
            param($m)
            $c = [int][char]$m.Value
            if ($c -lt 0x100) { '\x{0:x2}' -f $c } else { '\u{0:x4}' -f $c }
        })
}

$script:UnsafeChar = [regex]::new('[\x00-\x08\x0B-\x1F\x7F-\x9F\u202A-\u202E\u2066-\u2069]')

function ConvertTo-VmbusOpsRecord {
    <#
        One record of the agent's JSON (a records page's or an SSE record event's) as a
        VmbusOps.Record: its Message is the text to show (guest text made safe to show:
        ConvertTo-VmbusOpsSafeText), its Record the agent's JSON as it came.
    #>
    param($Record, [int] $JobId)
    $r = $Record
    $text = switch ($r.stream) {
        'output' { ConvertTo-VmbusOpsText $r.value }
        'information' { ConvertTo-VmbusOpsText $r.message_data }
        'progress' { "$($r.activity): $($r.status_description)" }
        'state' { "$($r.state)" }
        default { "$($r.message)" }
    }
    [pscustomobject]@{
        PSTypeName = 'VmbusOps.Record'; JobId = $JobId; VM = ConvertTo-VmbusOpsSafeText $r.vm; Seq = [int]$r.seq
        Stream = $r.stream; Step = Get-VmbusOpsProperty $r 'step'; Time = ConvertTo-VmbusOpsTime $r.time
        Message = ConvertTo-VmbusOpsSafeText $text; Record = $r
    }
}

function Read-VmbusOpsEventStream {
    <#
        GET /v1/jobs/ID/events: the job's Server-Sent Events, written to the pipeline one by one as
        they arrive (objects with Event, Id and Data, the event's JSON decoded), until the agent's
        `end` event. The answer is read line by line, never as a whole: it lasts as long as the job.

        HttpWebRequest is on both editions (5.1's .NET Framework and 7's .NET; on 7 it does not
        buffer the response either). A connection that drops before the end is opened again with
        Last-Event-ID (the last record's number), so nothing is repeated or skipped, for up to
        -ReconnectSeconds; the agent's `retry:` field says how long to wait between attempts.
        Writes nothing and returns after a non-terminating 404 (an unknown job).
    #>
    param(
        [Parameter(Mandatory)] $Connection,
        [Parameter(Mandatory)] [int] $JobId,
        [long] $After = 0,
        [int] $ReconnectSeconds = 60
    )
    $path = "/v1/jobs/$JobId/events"
    $lastId = $After
    $retryMilliseconds = 1000
    $connected = $false
    $droppedAt = $null
    while ($true) {
        $request = [System.Net.HttpWebRequest]([System.Net.WebRequest]::Create($Connection.Agent + $path))
        $request.Method = 'GET'
        $request.Accept = 'text/event-stream'
        $request.AllowReadStreamBuffering = $false
        # Not pooled: an unfinished event stream must be cut, never drained on close (5.1 drains).
        $request.KeepAlive = $false
        # The agent sends a keep-alive line every 15 s: a minute of silence is a dead connection.
        $request.ReadWriteTimeout = 60000
        $request.Headers.Add('Authorization', $Connection.Headers.Authorization)
        if ($lastId -gt 0) { $request.Headers.Add('Last-Event-ID', [string]$lastId) }
        Write-Verbose "GET $($Connection.Agent)$path (after record $lastId)"
        $response = $null
        try {
            $response = $request.GetResponse()
        } catch {
            $failure = $_.Exception
            if ($failure -is [System.Management.Automation.MethodInvocationException] -and $failure.InnerException) {
                $failure = $failure.InnerException
            }
            $answer = $null
            if ($failure.PSObject.Properties['Response']) { $answer = $failure.Response }
            if ($null -eq $answer -and $connected) {
                # The agent went away while the job was followed: it may be restarting.
                if ($null -eq $droppedAt) { $droppedAt = [DateTime]::UtcNow }
                if (([DateTime]::UtcNow - $droppedAt).TotalSeconds -lt $ReconnectSeconds) {
                    Start-Sleep -Milliseconds $retryMilliseconds
                    continue
                }
            }
            $body = $null
            if ($null -ne $answer) {
                try {
                    $errorReader = [System.IO.StreamReader]::new($answer.GetResponseStream())
                    $body = $errorReader.ReadToEnd()
                    $errorReader.Dispose()
                } catch { $body = $null }
                $answer.Dispose()
            }
            $record = ConvertFrom-VmbusOpsFailure -Exception $failure -Body $body -Connection $Connection -Method GET -Path $path
            if ("$($record.CategoryInfo.Category)" -eq 'ObjectNotFound') {
                $Connection.Caller.WriteError($record)
                return
            }
            $Connection.Caller.ThrowTerminatingError($record)
        }
        $connected = $true
        $droppedAt = $null
        $reader = [System.IO.StreamReader]::new($response.GetResponseStream(), [System.Text.UTF8Encoding]::new($false))
        $ended = $false
        try {
            $name = 'message'; $id = $null
            $data = [System.Text.StringBuilder]::new()
            while ($true) {
                try {
                    $line = $reader.ReadLine()
                } catch {
                    Write-Verbose "the event stream broke: $($_.Exception.Message)"
                    $line = $null
                }
                if ($null -eq $line) { break }
                if ($line.Length -eq 0) {
                    # A blank line ends an event.
                    if ($data.Length -gt 0) {
                        if ($null -ne $id -and $id -match '^[0-9]+$') { $lastId = [long]$id }
                        if ($name -eq 'end') { $ended = $true }
                        [pscustomobject]@{ Event = $name; Id = $id; Data = ($data.ToString() | ConvertFrom-Json) }
                        if ($ended) { return }
                    }
                    $name = 'message'; $id = $null
                    [void]$data.Clear()
                    continue
                }
                if ($line.StartsWith(':')) { continue }
                $colon = $line.IndexOf(':')
                if ($colon -lt 0) { $field = $line; $value = '' } else {
                    $field = $line.Substring(0, $colon)
                    $value = $line.Substring($colon + 1)
                    if ($value.StartsWith(' ')) { $value = $value.Substring(1) }
                }
                switch ($field) {
                    'event' { $name = $value }
                    'id' { $id = $value }
                    'data' {
                        if ($data.Length -gt 0) { [void]$data.Append("`n") }
                        [void]$data.Append($value)
                    }
                    'retry' {
                        $ms = 0
                        if ([int]::TryParse($value, [ref]$ms) -and $ms -gt 0) { $retryMilliseconds = $ms }
                    }
                }
            }
        } finally {
            # Left early (the pipeline stopped: Select-Object -First, Ctrl-C): cut the connection.
            if (-not $ended) { $request.Abort() }
            $reader.Dispose()
            $response.Dispose()
        }
        # The answer ended without the `end` event: reconnect where it stopped.
        $droppedAt = [DateTime]::UtcNow
        Start-Sleep -Milliseconds $retryMilliseconds
    }
}

function Write-VmbusOpsRecordToStream {
    <#
        A VmbusOps.Record to the PowerShell stream it came from, on the calling cmdlet: output
        records as objects to the output, errors as non-terminating errors (VmbusOps.GuestError,
        the record as the target), warnings, verbose, debug and information records as
        "[VM] text" in their streams, progress as one progress bar per VM, and a run's end (the
        state stream) as a verbose line.
    #>
    param([Parameter(Mandatory)] $Item, [Parameter(Mandatory)] [System.Management.Automation.PSCmdlet] $Caller,
        [Parameter(Mandatory)] [hashtable] $ProgressIds)
    $line = "[$($Item.VM)] $($Item.Message)"
    $r = $Item.Record
    switch ($Item.Stream) {
        'output' { $Caller.WriteObject($Item) }
        'error' {
            $Caller.WriteError((New-VmbusOpsErrorRecord -ErrorId 'VmbusOps.GuestError' -Category FromStdErr `
                -Message $line -TargetObject $Item))
        }
        'warning' { $Caller.WriteWarning($line) }
        'verbose' { $Caller.WriteVerbose($line) }
        'debug' { $Caller.WriteDebug($line) }
        'information' {
            $information = [System.Management.Automation.InformationRecord]::new($line, "$($Item.VM)")
            $information.Tags.Add('VmbusOps')
            $information.Tags.Add("$($Item.VM)")
            $Caller.WriteInformation($information)
        }
        'progress' {
            if (-not $ProgressIds.ContainsKey("$($Item.VM)")) { $ProgressIds["$($Item.VM)"] = $ProgressIds.Count + 1 }
            $activity = ConvertTo-VmbusOpsSafeText "$(Get-VmbusOpsProperty $r 'activity')"
            if (-not $activity) { $activity = 'progress' }
            $status = ConvertTo-VmbusOpsSafeText "$(Get-VmbusOpsProperty $r 'status_description')"
            $progress = [System.Management.Automation.ProgressRecord]::new($ProgressIds["$($Item.VM)"], "[$($Item.VM)] $activity",
                $(if ($status) { $status } else { 'working' }))
            $percent = Get-VmbusOpsProperty $r 'percent_complete'
            if ($null -ne $percent -and [int]$percent -ge 0 -and [int]$percent -le 100) { $progress.PercentComplete = [int]$percent }
            if (Get-VmbusOpsProperty $r 'completed') {
                $progress.RecordType = [System.Management.Automation.ProgressRecordType]::Completed
            }
            $Caller.WriteProgress($progress)
        }
        default { $Caller.WriteVerbose("$line ($($Item.Stream))") }
    }
}

function Receive-VmbusOpsJobOutput {
    <#
    .SYNOPSIS
        A job's records (output, errors, warnings, verbose, progress...), in order; -Wait follows
        the job until it ends, never repeating or skipping a record (the agent's cursor).
    .DESCRIPTION
        Without -Follow, every record is a VmbusOps.Record object on the output stream.

        -Follow reads the agent's live event stream (Server-Sent Events) and writes each record
        to its own PowerShell stream as it arrives, as Receive-Job does: output records (as
        VmbusOps.Record objects) to the output, guest errors as non-terminating errors
        (VmbusOps.GuestError), warnings, verbose, debug and information records as "[VM] text"
        in theirs, progress as a progress bar per VM. It ends when the job ends; a dropped
        connection is resumed after the last record (Last-Event-ID). -After N starts after
        record N (each record's number is its event id). Ctrl-C takes effect when the next line
        arrives (the agent sends one at least every 15 s).
    .OUTPUTS
        VmbusOps.Record
    #>
    [CmdletBinding(DefaultParameterSetName = 'Page')]
    [OutputType('VmbusOps.Record')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)] [int[]] $Id,
        [string] $VM,
        [ValidateSet('output', 'error', 'warning', 'verbose', 'debug', 'information', 'progress', 'state')]
        [string[]] $Stream,
        [Parameter(ParameterSetName = 'Page')] [switch] $Wait,
        [Parameter(ParameterSetName = 'Page')] [ValidateRange(1, 60)] [int] $PollSeconds = 1,
        [Parameter(Mandatory, ParameterSetName = 'Follow')] [switch] $Follow,
        [Parameter(ParameterSetName = 'Follow')] [ValidateScript({ $_ -ge 0 })] [long] $After = 0,
        [Parameter(ParameterSetName = 'Follow')] [ValidateRange(0, 86400)] [int] $ReconnectSeconds = 60,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
    process {
        foreach ($jobId in $Id) {
            if ($Follow) {
                $progressIds = @{}
                $caller = $PSCmdlet
                Read-VmbusOpsEventStream -Connection $connection -JobId $jobId -After $After -ReconnectSeconds $ReconnectSeconds |
                    ForEach-Object -Process {
                        if ($_.Event -eq 'record') {
                            if ($VM -and $_.Data.vm -ne $VM) { return }
                            if ($Stream -and $Stream -notcontains $_.Data.stream) { return }
                            Write-VmbusOpsRecordToStream -Item (ConvertTo-VmbusOpsRecord $_.Data $jobId) -Caller $caller -ProgressIds $progressIds
                        } elseif ($_.Event -eq 'end') {
                            Write-Verbose "job $jobId ended: $($_.Data.state)"
                        }
                    }
                continue
            }
            $cursor = ''
            while ($true) {
                $query = "?limit=5000&after=$([uri]::EscapeDataString($cursor))"
                if ($VM) { $query += "&vm=$([uri]::EscapeDataString($VM))" }
                $page = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId/records$query" -NotFoundIsNonTerminating
                if ($null -eq $page) { break }
                foreach ($r in $page.records) {
                    if ($Stream -and $Stream -notcontains $r.stream) { continue }
                    ConvertTo-VmbusOpsRecord $r $jobId
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

function Stop-VmbusOpsJob {
    <#
    .SYNOPSIS
        Cancel jobs (or one VM's run of each, with -VM): the agent stops their guest pipelines.
    .DESCRIPTION
        Asks the agent to cancel (POST /v1/jobs/ID/cancel, or .../runs/VM/cancel); the token
        needs the cancel scope. A job that has already ended is a non-terminating
        VmbusOps.NotActive error, an unknown one VmbusOps.NotFound; the other ids still go.
        -PassThru writes each job as it reads after the request (CancelRequested is true; the
        job ends shortly after: Wait-VmbusOpsJob).
    .OUTPUTS
        VmbusOps.Job, with -PassThru
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('VmbusOps.Job')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)] [int[]] $Id,
        [string] $VM,
        [switch] $PassThru,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
    process {
        foreach ($jobId in $Id) {
            $path = "/v1/jobs/$jobId/cancel"
            $what = "job $jobId"
            if ($VM) {
                $path = "/v1/jobs/$jobId/runs/$([uri]::EscapeDataString($VM))/cancel"
                $what = "job $jobId on $VM"
            }
            if (-not $PSCmdlet.ShouldProcess($what, "cancel on $($connection.Agent)")) { continue }
            $answer = Invoke-VmbusOpsApi -Connection $connection -Path $path -Method Post -NotFoundIsNonTerminating `
                -NonTerminatingCategory 'InvalidOperation'
            if ($null -eq $answer -or -not $PassThru) { continue }
            $job = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId" -NotFoundIsNonTerminating
            if ($null -ne $job) { ConvertTo-VmbusOpsJob $job.job $connection }
        }
    }
}

function Resume-VmbusOpsJob {
    <#
    .SYNOPSIS
        Resume interrupted jobs (a job whose agent stopped under it): the agent takes each over
        and runs it to its end, under its bundle's resume policy. Finished steps never run again.
    .DESCRIPTION
        Asks the agent to resume (POST /v1/jobs/ID/resume); the token needs the submit scope.
        The agent verifies the job's bundle again first: if it no longer passes (its signer no
        longer trusted, past its expiry), the job ends failed, nothing runs, and this writes a
        non-terminating VmbusOps.BundleRejected error. A job that is not interrupted (it ended,
        or it runs) is a non-terminating VmbusOps.NotInterrupted error, an unknown one
        VmbusOps.NotFound; the other ids still go. Writes each resumed job as the agent answers
        it: follow it with Wait-VmbusOpsJob or Receive-VmbusOpsJobOutput -Follow.
    .OUTPUTS
        VmbusOps.Job
    #>
    [CmdletBinding(SupportsShouldProcess)]
    [OutputType('VmbusOps.Job')]
    param(
        [Parameter(Mandatory, Position = 0, ValueFromPipelineByPropertyName)] [int[]] $Id,
        [string] $Agent,
        [securestring] $Token
    )
    begin { $connection = Resolve-VmbusOpsConnection -Caller $PSCmdlet -Agent $Agent -Token $Token }
    process {
        foreach ($jobId in $Id) {
            if (-not $PSCmdlet.ShouldProcess("job $jobId", "resume on $($connection.Agent)")) { continue }
            $answer = Invoke-VmbusOpsApi -Connection $connection -Path "/v1/jobs/$jobId/resume" -Method Post `
                -NotFoundIsNonTerminating -NonTerminatingCategory 'InvalidOperation', 'InvalidData'
            if ($null -ne $answer) { ConvertTo-VmbusOpsJob $answer.job $connection }
        }
    }
}

Export-ModuleMember -Function @('Submit-VmbusOpsJob', 'Get-VmbusOpsJob', 'Wait-VmbusOpsJob', 'Receive-VmbusOpsJobOutput',
    'Stop-VmbusOpsJob', 'Resume-VmbusOpsJob')
