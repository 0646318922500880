<#
    A real vmbusops agent on loopback for the runbook module's tests, set up through the vmbusops
    command line the way an operator does it (README: signed bundles, the agent):

        keys new -> trust add -> agent token create -> bundle build -> bundle sign -> agent

    The agent runs the embedded simulated Hyper-V host (`--host sim`, the default lab), on an
    ephemeral port under a VMBUSOPS_HOME of its own. Tokens stay in SecureStrings and a private
    table; nothing here writes a token or a passphrase to the output.

    $env:VMBUSOPS_PYTHON is the Python that has vmbusops installed (scripts/test sets it).
#>

Set-StrictMode -Version 3.0

function Get-VmbusOpsPython {
    if (-not $env:VMBUSOPS_PYTHON) {
        throw 'Set $env:VMBUSOPS_PYTHON to the Python that has vmbusops installed (scripts/test does).'
    }
    $env:VMBUSOPS_PYTHON
}

function Invoke-VmbusOpsCli {
    <#
        Runs `python -m vmbusops ARGS` under the lab's VMBUSOPS_HOME; throws with its stderr on failure.
        Arguments go through ProcessStartInfo.ArgumentList: pwsh on Unix would expand a '*' glob
        given to a native command, even from a splatted array.
    #>
    param(
        [Parameter(Mandatory)] $Lab,
        [Parameter(Mandatory)] [string[]] $Arguments
    )
    $start = [System.Diagnostics.ProcessStartInfo]::new((Get-VmbusOpsPython))
    foreach ($a in @('-m', 'vmbusops') + $Arguments) { $start.ArgumentList.Add($a) }
    $start.WorkingDirectory = $Lab.Root
    $start.Environment['VMBUSOPS_HOME'] = $Lab.Home
    $start.Environment['VMBUSOPS_KEY_PASSPHRASE'] = $Lab.Passphrase
    $start.RedirectStandardOutput = $true
    $start.RedirectStandardError = $true
    $process = [System.Diagnostics.Process]::Start($start)
    try {
        $stderr = $process.StandardError.ReadToEndAsync()
        $stdout = $process.StandardOutput.ReadToEnd()
        $process.WaitForExit()
        if ($process.ExitCode -ne 0) {
            throw "vmbusops $($Arguments[0..1] -join ' ') failed ($($process.ExitCode)): $($stderr.GetAwaiter().GetResult())"
        }
        $stdout
    } finally {
        $process.Dispose()
    }
}

function New-LoopbackAgentLab {
    <#
        A VMBUSOPS_HOME with two signing keys (alice is trusted for every VM of the default lab,
        mallory for none), and tokens: admin (everything), tenant (submit/read on web* only).
    #>
    param([Parameter(Mandatory)] [string] $Root)
    $null = New-Item -ItemType Directory -Force -Path $Root
    $lab = [pscustomobject]@{
        Root       = $Root
        Home       = Join-Path $Root 'home'
        Passphrase = [guid]::NewGuid().ToString('n')
        Tokens     = @{}
        Process    = $null
        Url        = $null
        LogPath    = Join-Path $Root 'agent.log'
    }
    $null = New-Item -ItemType Directory -Force -Path $lab.Home
    # Runs still going when the tests end are stopped at once, not waited for.
    Set-Content -LiteralPath (Join-Path $lab.Home 'config.toml') -Value '[agent]', 'shutdown_grace_seconds = 0.2' -Encoding utf8NoBOM
    $null = Invoke-VmbusOpsCli $lab 'keys', 'new', 'alice', '--passphrase'
    $null = Invoke-VmbusOpsCli $lab 'keys', 'new', 'mallory', '--passphrase'
    $null = Invoke-VmbusOpsCli $lab 'trust', 'add', (Join-Path $lab.Home 'keys/alice.pub'), '--vms', '*',
        '--credential', 'lab-admin', '--steps', 'copy,script,dsc'
    foreach ($spec in @(
            @{ Name = 'admin'; Scope = 'all'; VM = '*' },
            @{ Name = 'tenant'; Scope = 'submit,read'; VM = 'web*' })) {
        $answer = Invoke-VmbusOpsCli $lab 'agent', 'token', 'create', '--name', $spec.Name, '--scope', $spec.Scope,
            '--vm', $spec.VM, '--json'
        $lab.Tokens[$spec.Name] = ConvertTo-SecureString -String ($answer | ConvertFrom-Json).token -AsPlainText -Force
    }
    $lab
}

function New-LoopbackAgentBundle {
    <# Writes a bundle source with one script step per -Script text, builds it and signs it with -Key. #>
    param(
        [Parameter(Mandatory)] $Lab,
        [Parameter(Mandatory)] [string] $Name,
        [Parameter(Mandatory)] [string[]] $Script,
        [string[]] $VM = @('web01'),
        [string] $Key = 'alice',
        [int] $Version = 1,
        # More top-level TOML (e.g. a [schedule] table), written after the targets.
        [string[]] $Toml = @(),
        # Each step may run again when its job is resumed after an interruption.
        [switch] $Idempotent
    )
    $source = Join-Path $Lab.Root "src-$Name-$Version"
    $null = New-Item -ItemType Directory -Force -Path (Join-Path $source 'scripts')
    $lines = [System.Collections.Generic.List[string]]::new()
    $lines.Add("name = `"$Name`"")
    $lines.Add("version = $Version")
    $lines.Add('credential = "lab-admin"')
    $lines.Add('[targets]')
    $lines.Add('vms = [' + (($VM | ForEach-Object { "`"$_`"" }) -join ', ') + ']')
    foreach ($line in $Toml) { $lines.Add($line) }
    for ($i = 0; $i -lt $Script.Count; $i++) {
        Set-Content -LiteralPath (Join-Path $source "scripts/step$i.ps1") -Value $Script[$i] -Encoding utf8NoBOM
        $lines.Add('[[steps]]')
        $lines.Add("name = `"step$i`"")
        $lines.Add('kind = "script"')
        $lines.Add("file = `"scripts/step$i.ps1`"")
        if ($Idempotent) { $lines.Add('idempotent = true') }
    }
    Set-Content -LiteralPath (Join-Path $source 'bundle.toml') -Value $lines -Encoding utf8NoBOM
    $out = Join-Path $Lab.Root "$Name-$Version.vmb"
    $null = Invoke-VmbusOpsCli $Lab 'bundle', 'build', $source, '-o', $out
    $null = Invoke-VmbusOpsCli $Lab 'bundle', 'sign', $out, '--key', $Key
    $out
}

function Start-LoopbackAgent {
    <# Starts `python -m vmbusops agent --host sim` on an ephemeral loopback port; waits until it is ready. #>
    param([Parameter(Mandatory)] $Lab, [int] $TimeoutSeconds = 60)
    $ready = Join-Path $Lab.Root 'ready.json'
    Remove-Item -LiteralPath $ready -ErrorAction SilentlyContinue
    $saved = @{ Home = $env:VMBUSOPS_HOME; LabFile = $env:VMBUSOPS_LAB; HostKind = $env:VMBUSOPS_HOST }
    try {
        $env:VMBUSOPS_HOME = $Lab.Home
        $env:VMBUSOPS_LAB = $null
        $env:VMBUSOPS_HOST = $null
        $Lab.Process = Start-Process -FilePath (Get-VmbusOpsPython) -PassThru `
            -ArgumentList '-m', 'vmbusops', 'agent', '--host', 'sim', '--listen', '127.0.0.1:0', '--ready-file', $ready `
            -RedirectStandardOutput (Join-Path $Lab.Root 'agent.out') -RedirectStandardError $Lab.LogPath
    } finally {
        $env:VMBUSOPS_HOME = $saved.Home
        $env:VMBUSOPS_LAB = $saved.LabFile
        $env:VMBUSOPS_HOST = $saved.HostKind
    }
    $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
    while (-not (Test-Path -LiteralPath $ready)) {
        if ($Lab.Process.HasExited) {
            throw "the agent exited before it was ready (code $($Lab.Process.ExitCode)): $(Get-Content -Raw -LiteralPath $Lab.LogPath)"
        }
        if ([DateTime]::UtcNow -gt $deadline) { Stop-LoopbackAgent $Lab; throw "the agent was not ready in $TimeoutSeconds s" }
        Start-Sleep -Milliseconds 100
    }
    # The file is written whole by a rename, or is being written: retry until it parses.
    while ($true) {
        try { $Lab.Url = @((Get-Content -Raw -LiteralPath $ready | ConvertFrom-Json).listen)[0]; break } catch { Start-Sleep -Milliseconds 50 }
    }
    $Lab.Url
}

function Stop-LoopbackAgent {
    <# SIGTERM (the agent stops its runs and its simulator), then kill the tree if it lingers. #>
    param([Parameter(Mandatory)] $Lab)
    $process = $Lab.Process
    if ($null -eq $process) { return }
    if (-not $process.HasExited) {
        & kill -s TERM $process.Id
        if (-not $process.WaitForExit(30000)) { $process.Kill($true); $process.WaitForExit() }
    }
    $process.Dispose()
    $Lab.Process = $null
}

function Get-FreeLoopbackPort {
    <# A loopback port that nothing listens on (bound, then released). #>
    $listener = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
    $listener.Start()
    try { $listener.LocalEndpoint.Port } finally { $listener.Stop() }
}

Export-ModuleMember -Function New-LoopbackAgentLab, New-LoopbackAgentBundle, Start-LoopbackAgent, Stop-LoopbackAgent,
    Invoke-VmbusOpsCli, Get-FreeLoopbackPort
