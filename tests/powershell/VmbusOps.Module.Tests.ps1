<#
    The runbook module (host_agent/powershell/VmbusOps.psd1) against a real vmbusops agent on
    loopback: the agent process, its HTTP API, bundle verification and the simulated Hyper-V host
    are all the real ones; only PowerShell 7 stands in for a runbook's Windows PowerShell 5.1
    (Invoke-RestMethod differs between the two in its error objects; the module handles both,
    and only a 5.1 host can show the 5.1 half).
#>

BeforeAll {
    $ErrorActionPreference = 'Stop'
    Import-Module (Join-Path $PSScriptRoot 'LoopbackAgent.psm1') -Force
    $repo = (Resolve-Path (Join-Path $PSScriptRoot '../..')).ProviderPath
    Import-Module (Join-Path $repo 'host_agent/powershell/VmbusOps.psd1') -Force

    $lab = New-LoopbackAgentLab -Root (Join-Path $TestDrive 'lab')
    $hello = New-LoopbackAgentBundle -Lab $lab -Name 'hello' -VM 'web01', 'web02' `
        -Script "Write-Output 'hello from the guest'; Write-Warning 'mind the gap'; Write-Verbose 'detail' -Verbose"
    $counting = New-LoopbackAgentBundle -Lab $lab -Name 'counting' `
        -Script '1..25 | ForEach-Object { Write-Output "line $_"; Start-Sleep -Milliseconds 40 }'
    $slow = New-LoopbackAgentBundle -Lab $lab -Name 'slow' -Script 'Start-Sleep -Seconds 8; Write-Output done'
    $untrusted = New-LoopbackAgentBundle -Lab $lab -Name 'untrusted' -Key 'mallory' -Script "Write-Output 'never'"
    $outOfScope = New-LoopbackAgentBundle -Lab $lab -Name 'db' -VM 'db01' -Script "Write-Output 'db'"
    $url = Start-LoopbackAgent -Lab $lab
    $admin = @{ Agent = $url; Token = $lab.Tokens['admin'] }
    $plainTokens = foreach ($t in $lab.Tokens.Values) { [System.Net.NetworkCredential]::new('', $t).Password }

    function Assert-NoToken {
        # Everything a runbook's log can show: message, details, recommended action, target.
        param($Text)
        foreach ($plain in $plainTokens) {
            if ("$Text".Contains($plain)) { throw 'a token appears in what the module wrote' }
        }
    }
}

AfterAll {
    if ($lab) { Stop-LoopbackAgent -Lab $lab }
    Remove-Module VmbusOps, LoopbackAgent -ErrorAction SilentlyContinue
}

Describe 'The module' {
    It 'exports exactly the six cmdlets the manifest names' {
        (Get-Module VmbusOps).ExportedFunctions.Keys | Sort-Object |
            Should -Be @('Get-VmbusOpsJob', 'Receive-VmbusOpsJobOutput', 'Resume-VmbusOpsJob', 'Stop-VmbusOpsJob', 'Submit-VmbusOpsJob',
                'Wait-VmbusOpsJob')
        Test-ModuleManifest -Path (Join-Path $repo 'host_agent/powershell/VmbusOps.psd1') | Should -Not -BeNullOrEmpty
    }
}

Describe 'A signed bundle, submitted, waited for and read back' {
    BeforeAll {
        $job = Submit-VmbusOpsJob -Path $hello @admin
        $done = $job | Wait-VmbusOpsJob -PollSeconds 1 -TimeoutSeconds 60 @admin
    }

    It 'is accepted as a typed job' {
        $job.PSObject.TypeNames[0] | Should -Be 'VmbusOps.Job'
        $job.Id | Should -BeOfType [int]
        $job.Bundle | Should -Be 'hello'
        $job.Targets | Sort-Object | Should -Be @('web01', 'web02')
        $job.Agent | Should -Be $url
        $job.CreatedAt | Should -BeOfType [datetime]
    }

    It 'ends in success, and Wait-VmbusOpsJob writes the finished job' {
        $done.Id | Should -Be $job.Id
        $done.State | Should -Be 'success'
        $done.FinishedAt | Should -BeOfType [datetime]
    }

    It 'is listed, and read by id with its runs' {
        (Get-VmbusOpsJob -State success @admin).Id | Should -Contain $job.Id
        $read = Get-VmbusOpsJob -Id $job.Id -IncludeRuns @admin
        $read.RunDetails.VM | Sort-Object | Should -Be @('web01', 'web02')
        $read.RunDetails.State | Should -Be @('success', 'success')
        $read.RunDetails[0].PSObject.TypeNames[0] | Should -Be 'VmbusOps.Run'
    }

    It 'gives back every record of every VM, as text, in order' {
        $records = $job | Receive-VmbusOpsJobOutput @admin
        foreach ($vm in 'web01', 'web02') {
            $mine = @($records | Where-Object VM -EQ $vm)
            $mine.Seq | Should -Be (1..$mine.Count)
            ($mine | Where-Object Stream -EQ 'output').Message | Should -Be 'hello from the guest'
            ($mine | Where-Object Stream -EQ 'warning').Message | Should -Be 'mind the gap'
            ($mine | Where-Object Stream -EQ 'verbose').Message | Should -Be 'detail'
        }
        $records[0].PSObject.TypeNames[0] | Should -Be 'VmbusOps.Record'
        $records[0].Step | Should -Be 'step0'
    }

    It 'filters by stream and by VM' {
        $warnings = Receive-VmbusOpsJobOutput -Id $job.Id -VM web02 -Stream warning @admin
        @($warnings).Count | Should -Be 1
        $warnings.VM | Should -Be 'web02'
        $warnings.Message | Should -Be 'mind the gap'
    }

    It 'takes the agent and the token from the environment' {
        $saved = $env:VMBUSOPS_AGENT, $env:VMBUSOPS_TOKEN
        try {
            $env:VMBUSOPS_AGENT = $url
            $env:VMBUSOPS_TOKEN = [System.Net.NetworkCredential]::new('', $lab.Tokens['admin']).Password
            (Get-VmbusOpsJob -Id $job.Id).State | Should -Be 'success'
        } finally {
            $env:VMBUSOPS_AGENT, $env:VMBUSOPS_TOKEN = $saved
        }
    }

    It 'never writes the token to the verbose stream' {
        $verbose = Get-VmbusOpsJob -Id $job.Id -Verbose @admin 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }
        $verbose | Should -Not -BeNullOrEmpty
        Assert-NoToken ($verbose | Out-String)
    }
}

Describe 'What else a bundle can be and a guest can write' {
    It 'a bundle with a schedule is registered, not run: a VmbusOps.Schedule with its next run' {
        $weekly = New-LoopbackAgentBundle -Lab $lab -Name 'weekly' -Script "Write-Output 'patch'" `
            -Toml '[schedule]', 'cron = "0 2 * * 6"', 'window = "4h"', 'timezone = "UTC"'
        $schedule = Submit-VmbusOpsJob -Path $weekly @admin
        $schedule.PSObject.TypeNames[0] | Should -Be 'VmbusOps.Schedule'
        $schedule.Name | Should -Be 'weekly'
        $schedule.NextRun | Should -BeOfType [datetime]
        $next = $schedule.NextRun.ToUniversalTime()
        $next.DayOfWeek | Should -Be 'Saturday'
        $next.Hour | Should -Be 2
        $next | Should -BeGreaterThan ([datetime]::UtcNow)
    }

    It 'objects and information records read as text, not as JSON' {
        $objects = New-LoopbackAgentBundle -Lab $lab -Name 'objects' `
            -Script "Get-Service -Name W3SVC; Write-Information -MessageData 'a note'"
        $job = Submit-VmbusOpsJob -Path $objects @admin | Wait-VmbusOpsJob -PollSeconds 1 @admin
        $job.State | Should -Be 'success'
        $records = Receive-VmbusOpsJobOutput -Id $job.Id @admin
        $service = $records | Where-Object Stream -EQ 'output'
        $service.Record.value.'$type' | Should -Not -BeNullOrEmpty
        $service.Message | Should -Be $service.Record.value.string
        ($records | Where-Object Stream -EQ 'information').Message | Should -Be 'a note'
    }
}

Describe 'Following a running job' {
    It 'Receive-VmbusOpsJobOutput -Wait streams until the end, never repeating or skipping a record' {
        $job = Submit-VmbusOpsJob -Path $counting @admin
        $records = @(Receive-VmbusOpsJobOutput -Id $job.Id -Wait -PollSeconds 1 @admin)
        ($records | Where-Object Stream -EQ 'output').Message | Should -Be (1..25 | ForEach-Object { "line $_" })
        $records.Seq | Should -Be (1..$records.Count)
        $records[-1].Stream | Should -Be 'state'
        (Get-VmbusOpsJob -Id $job.Id @admin).State | Should -Be 'success'
    }

    It 'Wait-VmbusOpsJob gives up after -TimeoutSeconds with VmbusOps.WaitTimeout' {
        $job = Submit-VmbusOpsJob -Path $slow @admin
        $err = { $job | Wait-VmbusOpsJob -TimeoutSeconds 1 -PollSeconds 1 @admin -ErrorAction Stop } |
            Should -Throw -ErrorId 'VmbusOps.WaitTimeout,Wait-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'OperationTimeout'
        $err.TargetObject | Should -Be @($job.Id)
    }
}

Describe 'Following live over the event stream (-Follow), and cancelling (Stop-VmbusOpsJob)' {
    It 'writes each record to its own PowerShell stream, and ends with the job' {
        $mixed = New-LoopbackAgentBundle -Lab $lab -Name 'mixed' -Script (
            "Write-Output 'out one'; Write-Warning 'careful'; Write-Verbose 'details' -Verbose; " +
            "Write-Information -MessageData 'a note'; Write-Output 'out two'; Write-Error 'it broke'")
        $job = Submit-VmbusOpsJob -Path $mixed @admin
        $all = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow -Verbose -ErrorAction Continue @admin *>&1)
        $output = @($all | Where-Object { $_.PSObject.TypeNames[0] -eq 'VmbusOps.Record' })
        $output.Message | Should -Be @('out one', 'out two')
        $output.VM | Should -Be @('web01', 'web01')
        ($all | Where-Object { $_ -is [System.Management.Automation.WarningRecord] }).Message | Should -Be '[web01] careful'
        ($all | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] -and $_.Message -like '`[web01`] details' }) |
            Should -Not -BeNullOrEmpty
        $info = @($all | Where-Object { $_ -is [System.Management.Automation.InformationRecord] })
        $info.MessageData | Should -Be '[web01] a note'
        $info.Tags | Should -Contain 'web01'
        $errors = @($all | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] })
        $errors.Count | Should -Be 1
        $errors[0].FullyQualifiedErrorId | Should -Be 'VmbusOps.GuestError,Receive-VmbusOpsJobOutput'
        $errors[0].Exception.Message | Should -Be '[web01] it broke'
        $errors[0].TargetObject.Stream | Should -Be 'error'
        # It returned on its own: the job is over.
        (Get-VmbusOpsJob -Id $job.Id @admin).State | Should -Not -BeIn @('pending', 'delayed', 'in-progress')
    }

    It 'shows guest control characters escaped, in every stream and on the objects, and keeps the record as it came' {
        $hostile = New-LoopbackAgentBundle -Lab $lab -Name 'hostile' -Script (
            'Write-Output "out`e[2J`aend"; Write-Warning "warn`e[31mred"; Write-Verbose "verb`rCR" -Verbose')
        $job = Submit-VmbusOpsJob -Path $hostile @admin
        $all = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow -Verbose @admin *>&1)
        $output = @($all | Where-Object { $_.PSObject.TypeNames[0] -eq 'VmbusOps.Record' })
        $output.Message | Should -Be 'out\x1b[2J\x07end'
        $output.Record.value | Should -Be "out$([char]27)[2J$([char]7)end"
        ($all | Where-Object { $_ -is [System.Management.Automation.WarningRecord] }).Message | Should -Be '[web01] warn\x1b[31mred'
        ($all | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] -and $_.Message -like '*verb*' }).Message |
            Should -Be '[web01] verb\x0dCR'
        $paged = @(Receive-VmbusOpsJobOutput -Id $job.Id @admin)
        ($paged | Where-Object Stream -EQ 'warning').Message | Should -Be 'warn\x1b[31mred'
        ($paged | Where-Object Stream -EQ 'output').Message | Should -Be 'out\x1b[2J\x07end'
        $module = Get-Module VmbusOps
        & $module { ConvertTo-VmbusOpsSafeText "rtl$([char]0x202E)x$([char]0x9B)tab`tnewline`n" } |
            Should -Be "rtl\u202ex\x9btab`tnewline`n"
    }

    It 'gets each record while the job runs: cancelled on its first line, the job never writes its second' {
        $long = New-LoopbackAgentBundle -Lab $lab -Name 'long' -Script "Write-Output 'first'; Start-Sleep -Seconds 60; Write-Output 'never'"
        $job = Submit-VmbusOpsJob -Path $long @admin
        $seen = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow @admin | ForEach-Object {
                if ($_.Message -eq 'first') { Stop-VmbusOpsJob -Id $job.Id @admin }
                $_
            })
        $seen.Message | Should -Be @('first')
        ($job | Wait-VmbusOpsJob -PollSeconds 1 -TimeoutSeconds 60 @admin).State | Should -Be 'cancelled'
    }

    It 'filters by VM and stream' {
        $job = Submit-VmbusOpsJob -Path $hello @admin | Wait-VmbusOpsJob -PollSeconds 1 @admin
        $web02 = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow -VM web02 -Stream output, warning @admin 3>&1)
        $web02.Count | Should -Be 2
        $web02[0].VM | Should -Be 'web02'
        $web02[0].Message | Should -Be 'hello from the guest'
        "$($web02[1])" | Should -Be '[web02] mind the gap'
    }

    It '-After N starts after record N (the event id: on one VM, its Seq)' {
        $counted = New-LoopbackAgentBundle -Lab $lab -Name 'counted' -Script '1..25 | ForEach-Object { Write-Output "line $_" }'
        $job = Submit-VmbusOpsJob -Path $counted @admin | Wait-VmbusOpsJob -PollSeconds 1 @admin
        $all = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow @admin)
        $all.Message | Should -Be (1..25 | ForEach-Object { "line $_" })
        $late = @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow -After 20 @admin)
        $late.Seq | Should -Be @(21..25)
        $late.Message | Should -Be @(21..25 | ForEach-Object { "line $_" })
        @(Receive-VmbusOpsJobOutput -Id $job.Id -Follow -After 1000 @admin) | Should -BeNullOrEmpty
    }

    It 'stops reading when the pipeline has what it wants, the job still running' {
        $job = Submit-VmbusOpsJob -Path (New-LoopbackAgentBundle -Lab $lab -Name 'endless' `
                -Script "Write-Output 'one'; Write-Output 'two'; Start-Sleep -Seconds 60") @admin
        $first = Receive-VmbusOpsJobOutput -Id $job.Id -Follow @admin | Select-Object -First 1
        $first.Message | Should -Be 'one'
        (Get-VmbusOpsJob -Id $job.Id @admin).State | Should -Be 'in-progress'
        Stop-VmbusOpsJob -Id $job.Id @admin
    }

    It 'an unknown job: non-terminating VmbusOps.NotFound, as without -Follow' {
        { Receive-VmbusOpsJobOutput -Id 99999 -Follow @admin -ErrorAction Stop } |
            Should -Throw -ErrorId 'VmbusOps.NotFound,Receive-VmbusOpsJobOutput'
    }

    It 'Stop-VmbusOpsJob: a finished job is VmbusOps.NotActive, an unknown one NotFound, and the others still go' {
        $slowJob = Submit-VmbusOpsJob -Path (New-LoopbackAgentBundle -Lab $lab -Name 'stoppable' -Script 'Start-Sleep -Seconds 60') @admin
        $finished = (Get-VmbusOpsJob -State success -Limit 1 @admin).Id
        $stopped = Stop-VmbusOpsJob -Id $finished, 99999, $slowJob.Id -PassThru @admin -ErrorAction SilentlyContinue -ErrorVariable failures
        $stopped.Id | Should -Be $slowJob.Id
        $stopped.CancelRequested | Should -BeTrue
        $ours = @($failures | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] -and $_.FullyQualifiedErrorId -like 'VmbusOps.*' })
        $ours.FullyQualifiedErrorId | Should -Be @('VmbusOps.NotActive,Stop-VmbusOpsJob', 'VmbusOps.NotFound,Stop-VmbusOpsJob')
        $ours[0].CategoryInfo.Category | Should -Be 'InvalidOperation'
        ($slowJob | Wait-VmbusOpsJob -PollSeconds 1 -TimeoutSeconds 60 @admin).State | Should -Be 'cancelled'
    }

    It 'Stop-VmbusOpsJob needs the cancel scope: VmbusOps.Forbidden, and -WhatIf sends nothing' {
        $job = Submit-VmbusOpsJob -Path (New-LoopbackAgentBundle -Lab $lab -Name 'kept' -Script 'Start-Sleep -Seconds 60') @admin
        { Stop-VmbusOpsJob -Id $job.Id -Agent $url -Token $lab.Tokens['tenant'] } |
            Should -Throw -ErrorId 'VmbusOps.Forbidden,Stop-VmbusOpsJob'
        Stop-VmbusOpsJob -Id $job.Id -WhatIf @admin
        (Get-VmbusOpsJob -Id $job.Id @admin).CancelRequested | Should -BeFalse
        Stop-VmbusOpsJob -Id $job.Id -VM web01 @admin
        ($job | Wait-VmbusOpsJob -PollSeconds 1 -TimeoutSeconds 60 @admin).State | Should -Be 'cancelled'
    }
}

Describe 'A followed connection that drops' {
    BeforeAll {
        # An event stream server that ends its first answer after two records (no `end` event)
        # and serves the rest to whoever asks again, noting the Last-Event-ID it was given.
        $port = Get-FreeLoopbackPort
        $listener = [System.Net.HttpListener]::new()
        $listener.Prefixes.Add("http://127.0.0.1:$port/")
        $listener.Start()
        $seen = [System.Collections.Concurrent.ConcurrentQueue[string]]::new()
        $server = [powershell]::Create()
        $null = $server.AddScript({
                param($listener, $seen)
                function Record([int] $n) {
                    "id: $n`nevent: record`ndata: {`"vm`":`"web01`",`"seq`":$n,`"time`":1.5,`"step`":`"s`",`"stream`":`"output`",`"value`":`"line $n`"}`n`n"
                }
                $answers = @(
                    ("retry: 10`n`nevent: job`ndata: {`"job`":7,`"state`":`"in-progress`"}`n`n: keep-alive`n`n" + (Record 1) + (Record 2)),
                    ((Record 3) + "event: end`ndata: {`"job`":7,`"state`":`"success`",`"cancel_requested`":false}`n`n")
                )
                foreach ($answer in $answers) {
                    $context = $listener.GetContext()
                    $seen.Enqueue("$($context.Request.Url.AbsolutePath) after=$($context.Request.Headers['Last-Event-ID'])")
                    $context.Response.ContentType = 'text/event-stream'
                    $context.Response.SendChunked = $true
                    $bytes = [System.Text.Encoding]::UTF8.GetBytes($answer)
                    $context.Response.OutputStream.Write($bytes, 0, $bytes.Length)
                    $context.Response.Close()
                }
            }).AddArgument($listener).AddArgument($seen)
        $serving = $server.BeginInvoke()
    }

    AfterAll {
        $listener.Stop()
        $listener.Close()
        $server.Dispose()
    }

    It 'is opened again after the last record it got, with Last-Event-ID: nothing repeated or skipped' {
        $records = @(Receive-VmbusOpsJobOutput -Id 7 -Follow -Agent "http://127.0.0.1:$port" -Token $lab.Tokens['admin'])
        $records.Message | Should -Be @('line 1', 'line 2', 'line 3')
        $serving.AsyncWaitHandle.WaitOne(5000) | Should -BeTrue -Because 'the server gave both its answers'
        $seen.ToArray() | Should -Be @('/v1/jobs/7/events after=', '/v1/jobs/7/events after=2')
    }
}

Describe 'Failures are PowerShell errors with ids a runbook can branch on' {
    It 'a bundle signed by an untrusted key: VmbusOps.BundleRejected, nothing runs' {
        $before = @(Get-VmbusOpsJob -Limit 500 @admin).Count
        $err = { Submit-VmbusOpsJob -Path $untrusted @admin } | Should -Throw -ErrorId 'VmbusOps.BundleRejected,Submit-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'InvalidData'
        $err.Exception.Message | Should -BeLike 'Bundle rejected: *'
        @(Get-VmbusOpsJob -Limit 500 @admin).Count | Should -Be $before
    }

    It 'a bundle submitted twice: the replay is refused and the hint is kept' {
        $again = New-LoopbackAgentBundle -Lab $lab -Name 'again' -Script "Write-Output 'once'"
        $null = Submit-VmbusOpsJob -Path $again @admin
        $err = { Submit-VmbusOpsJob -Path $again @admin } | Should -Throw -ErrorId 'VmbusOps.BundleRejected,Submit-VmbusOpsJob' -PassThru
        $err.Exception.Message | Should -BeLike '*already accepted*'
        $err.ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
    }

    It 'a token outside the bundle''s VMs: VmbusOps.Forbidden' {
        $err = { Submit-VmbusOpsJob -Path $outOfScope -Agent $url -Token $lab.Tokens['tenant'] } |
            Should -Throw -ErrorId 'VmbusOps.Forbidden,Submit-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'PermissionDenied'
        $err.Exception.Message | Should -BeLike '*db01*'
    }

    It 'a bad token: VmbusOps.Unauthorized, and the token is not in the error' {
        $bad = ConvertTo-SecureString -String ('vmb_' + [guid]::NewGuid().ToString('n')) -AsPlainText -Force
        $err = { Get-VmbusOpsJob -Agent $url -Token $bad } | Should -Throw -ErrorId 'VmbusOps.Unauthorized,Get-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'AuthenticationError'
        $plain = [System.Net.NetworkCredential]::new('', $bad).Password
        ($err | Out-String) + $err.Exception.ToString() | Should -Not -BeLike "*$plain*"
    }

    It 'no token at all: VmbusOps.NoToken, before any request' {
        $saved = $env:VMBUSOPS_TOKEN
        try {
            $env:VMBUSOPS_TOKEN = $null
            { Get-VmbusOpsJob -Agent $url } | Should -Throw -ErrorId 'VmbusOps.NoToken,Get-VmbusOpsJob'
        } finally { $env:VMBUSOPS_TOKEN = $saved }
    }

    It 'an unknown job id: a non-terminating VmbusOps.NotFound, and the other ids still answer' {
        $known = (Get-VmbusOpsJob -Limit 1 @admin).Id
        $found = Get-VmbusOpsJob -Id 99999, $known @admin -ErrorAction SilentlyContinue -ErrorVariable failures
        $found.Id | Should -Be $known
        # -ErrorVariable of an advanced function also collects the exceptions its own try/catch
        # handled (here Invoke-RestMethod's 404): PowerShell's behaviour, not ours to change.
        $ours = @($failures | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] -and $_.FullyQualifiedErrorId -like 'VmbusOps.*' })
        $ours.Count | Should -Be 1
        $ours[0].FullyQualifiedErrorId | Should -Be 'VmbusOps.NotFound,Get-VmbusOpsJob'
        $ours[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $ours[0].TargetObject | Should -Be '/v1/jobs/99999'
        $ours[0].Exception.Message | Should -BeLike '*99999*'
        { Get-VmbusOpsJob -Id 99999 @admin -ErrorAction Stop } | Should -Throw -ErrorId 'VmbusOps.NotFound,Get-VmbusOpsJob'
        { Wait-VmbusOpsJob -Id 99999 @admin -ErrorAction Stop } | Should -Throw -ErrorId 'VmbusOps.NotFound,Wait-VmbusOpsJob'
        { Receive-VmbusOpsJobOutput -Id 99999 @admin -ErrorAction Stop } |
            Should -Throw -ErrorId 'VmbusOps.NotFound,Receive-VmbusOpsJobOutput'
    }

    It 'an unreachable agent: VmbusOps.AgentUnreachable naming the agent' {
        $nowhere = "http://127.0.0.1:$(Get-FreeLoopbackPort)"
        $err = { Get-VmbusOpsJob -Agent $nowhere -Token $lab.Tokens['admin'] } |
            Should -Throw -ErrorId 'VmbusOps.AgentUnreachable,Get-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'ConnectionError'
        $err.Exception.Message | Should -BeLike "*$nowhere*"
        Assert-NoToken (($err | Out-String) + $err.Exception.ToString())
    }
}

Describe 'Answers that are not the agent''s problem details' {
    BeforeAll {
        # A loopback HTTP server that answers each request with the next canned answer, as a
        # reverse proxy or a gateway in front of the agent might (and as Windows PowerShell 5.1
        # sees any error answer without a Content-Length: no body at all).
        $port = Get-FreeLoopbackPort
        $listener = [System.Net.HttpListener]::new()
        $listener.Prefixes.Add("http://127.0.0.1:$port/")
        $listener.Start()
        $server = [powershell]::Create()
        $null = $server.AddScript({
                param($listener)
                $answers = @(
                    @{ Status = 404; Type = $null; Body = '' }
                    @{ Status = 502; Type = 'text/html'; Body = "<html><body><h1>502 Bad Gateway</h1>`n<p>upstream   closed</p></body></html>" }
                    @{ Status = 401; Type = 'text/plain'; Body = 'denied by the gateway' }
                )
                foreach ($answer in $answers) {
                    $context = $listener.GetContext()
                    $context.Response.StatusCode = $answer.Status
                    if ($answer.Type) { $context.Response.ContentType = $answer.Type }
                    $bytes = [System.Text.Encoding]::UTF8.GetBytes($answer.Body)
                    $context.Response.ContentLength64 = $bytes.Length
                    $context.Response.OutputStream.Write($bytes, 0, $bytes.Length)
                    $context.Response.Close()
                }
            }).AddArgument($listener)
        $serving = $server.BeginInvoke()
        $gateway = @{ Agent = "http://127.0.0.1:$port"; Token = $lab.Tokens['admin'] }
    }

    AfterAll {
        $listener.Stop()
        $listener.Close()
        $server.Dispose()
    }

    It 'a 404 without a body is still VmbusOps.NotFound' {
        $err = { Get-VmbusOpsJob -Id 5 @gateway -ErrorAction Stop } | Should -Throw -ErrorId 'VmbusOps.NotFound,Get-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'ObjectNotFound'
        $err.Exception.Message | Should -BeLike '*HTTP 404*'
    }

    It 'a gateway''s HTML page is VmbusOps.Http502, with its text on one line' {
        $err = { Get-VmbusOpsJob @gateway } | Should -Throw -ErrorId 'VmbusOps.Http502,Get-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'ResourceUnavailable'
        $err.Exception.Message | Should -BeLike '*HTTP 502*upstream closed*'
    }

    It 'a 401 in plain text is VmbusOps.Unauthorized' {
        $err = { Get-VmbusOpsJob @gateway } | Should -Throw -ErrorId 'VmbusOps.Unauthorized,Get-VmbusOpsJob' -PassThru
        $err.CategoryInfo.Category | Should -Be 'AuthenticationError'
        $err.Exception.Message | Should -BeLike '*denied by the gateway*'
        $serving.AsyncWaitHandle.WaitOne(5000) | Should -BeTrue -Because 'the server gave all its answers'
    }
}

Describe 'Resuming a job its agent''s stop interrupted (Resume-VmbusOpsJob)' {
    # Last in the file: the agent is stopped and started again, on another port.
    BeforeAll {
        $resumable = New-LoopbackAgentBundle -Lab $lab -Name 'resumable' -Idempotent `
            -Script "Write-Output 'first'", '1..30 | ForEach-Object { Write-Output "line $_"; Start-Sleep -Milliseconds 50 }'
        $job = Submit-VmbusOpsJob -Path $resumable @admin
        $deadline = [DateTime]::UtcNow.AddSeconds(30)
        do {
            Start-Sleep -Milliseconds 200
            $run = @((Get-VmbusOpsJob -Id $job.Id -IncludeRuns @admin).RunDetails)[0]
        } until ($run.Records -ge 4 -or [DateTime]::UtcNow -gt $deadline)
        Stop-LoopbackAgent -Lab $lab  # SIGTERM: the job's run is stopped under it
        $restarted = @{ Agent = (Start-LoopbackAgent -Lab $lab); Token = $lab.Tokens['admin'] }
    }

    It 'reads interrupted, is resumed by the next agent, and ends in success' {
        (Get-VmbusOpsJob -Id $job.Id @restarted).State | Should -Be 'interrupted'
        $resumed = Resume-VmbusOpsJob -Id $job.Id @restarted
        $resumed.PSObject.TypeNames[0] | Should -Be 'VmbusOps.Job'
        $resumed.Id | Should -Be $job.Id
        $resumed.State | Should -BeIn @('pending', 'in-progress')
        ($resumed | Wait-VmbusOpsJob -PollSeconds 1 -TimeoutSeconds 60 @restarted).State | Should -Be 'success'
        $first = @(Receive-VmbusOpsJobOutput -Id $job.Id @restarted | Where-Object Message -eq 'first')
        $first.Count | Should -Be 1 -Because 'a finished step never runs again'
    }

    It 'a finished job is VmbusOps.NotInterrupted, an unknown one NotFound, and each id is tried' {
        $got = Resume-VmbusOpsJob -Id $job.Id, 99999 @restarted -ErrorAction SilentlyContinue -ErrorVariable failures
        $got | Should -BeNullOrEmpty
        $ours = @($failures | Where-Object { $_ -is [System.Management.Automation.ErrorRecord] -and $_.FullyQualifiedErrorId -like 'VmbusOps.*' })
        $ours.FullyQualifiedErrorId | Should -Be @('VmbusOps.NotInterrupted,Resume-VmbusOpsJob', 'VmbusOps.NotFound,Resume-VmbusOpsJob')
        $ours[0].CategoryInfo.Category | Should -Be 'InvalidOperation'
        $ours[0].Exception.Message | Should -BeLike '*only an interrupted job can be resumed*'
    }
}
