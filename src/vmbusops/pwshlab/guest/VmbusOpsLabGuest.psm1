#Requires -Version 7.0

# vmbusops lab, inside a guest session: the DSC cmdlets, as functions over the simulator's LCM,
# and Get-FileHash reporting the guest's own paths.
#
# Linux has no Local Configuration Manager. The lab's guest session (a child pwsh whose C: drive
# is the guest's lab folder) imports this module, so the DSC cmdlets a script calls in the guest
# are these functions, with the parameter sets and types of Windows PowerShell 5.1's
# PSDesiredStateConfiguration module: PowerShell's binder judges every call. Each one hands the
# call, as bound, to `python -m vmbusops.pwshlab.labctl`'s `dsc` operation, which runs the
# simulator's LCM (vmbusops.sim.dsc) on the same lab state and guest files, and decides
# everything: which cmdlets and parameters the simulator models (others get its "does not
# support" error), what the LCM does, what it writes.
#
# labctl streams the LCM's records as JSON lines while it works; each line is read as it comes
# and written at once as this cmdlet's own record (Write-Verbose for the LCM's verbose lines, an
# ErrorRecord with the LCM's exception type and id for its errors, PSCustomObjects with the real
# CIM type names for its objects), so every LCM line crosses the guest's remote session, the
# lab's PSRP server and the agent's client live, and -Verbose decides, as on Windows, whether
# the verbose lines are shown at all. Nothing secret is sent: a -Credential is refused by labctl
# by name, never by value.

Set-StrictMode -Version 3.0

# ---------------------------------------------------------------------------------------------
# Get-FileHash: on Windows its Path is the guest's own (C:\...); here the provider path of the
# C: drive is the lab folder on this machine. The real cmdlet, with its own parameters, hashes;
# this function reports each Path as the guest sees it, which the dsc step keys its checks by.

$script:FileHashBody = @'
begin { $root = (Get-PSDrive -Name C -PSProvider FileSystem -ErrorAction Stop).Root.TrimEnd('/', '\') }
process {
    foreach ($hash in Microsoft.PowerShell.Utility\Get-FileHash @PSBoundParameters) {
        if ($hash.Path -and $hash.Path.StartsWith($root + [System.IO.Path]::DirectorySeparatorChar, [System.StringComparison]::Ordinal)) {
            $hash.Path = 'C:\' + $hash.Path.Substring($root.Length + 1).Replace([string] [System.IO.Path]::DirectorySeparatorChar, '\')
        }
        $hash
    }
}
'@
$metadata = [System.Management.Automation.CommandMetadata]::new(
    (Get-Command -Name 'Microsoft.PowerShell.Utility\Get-FileHash' -CommandType Cmdlet))
$definition = [scriptblock]::Create(
    [System.Management.Automation.ProxyCommand]::GetCmdletBindingAttribute($metadata) +
    "`nparam($([System.Management.Automation.ProxyCommand]::GetParamBlock($metadata)))`n" + $script:FileHashBody)
Set-Item -LiteralPath 'function:script:Get-FileHash' -Value $ExecutionContext.SessionState.Module.NewBoundScriptBlock($definition)
Remove-Variable -Name metadata, definition

# ---------------------------------------------------------------------------------------------
# The DSC cmdlets.

function ConvertTo-LabParameter {
    # The bound parameters labctl needs: switches as booleans, strings, numbers and their arrays
    # as they are, anything else by its type (labctl refuses what the simulator does not model).
    # -WhatIf and -Confirm go too: the LCM's what-if run is its own (its lines say "What if:"),
    # and ShouldProcess here would add a "Performing the operation" line a real LCM never writes.
    param([System.Collections.IDictionary] $Bound)
    $skip = [System.Management.Automation.PSCmdlet]::CommonParameters
    $parameters = [ordered]@{}
    foreach ($name in $Bound.Keys) {
        if ($name -in $skip) { continue }
        $value = $Bound[$name]
        $parameters[$name] = if ($value -is [switch]) { $value.IsPresent }
        elseif ($null -eq $value -or $value -is [string] -or $value -is [ValueType]) { $value }
        elseif ($value -is [string[]]) { , @($value) }
        else { "[$($value.GetType().FullName)]" }
    }
    $parameters
}

function ConvertFrom-LabValue {
    # A value of labctl's stream (see vmbusops.pwshlab.labdsc) as a PowerShell value.
    param($Value)
    if ($Value -is [System.Collections.IDictionary]) {
        if ($Value.Contains('object')) {
            $shape = $Value['object']
            $object = [pscustomobject]@{}
            foreach ($pair in @($shape['properties'])) {
                $object.PSObject.Properties.Add([psnoteproperty]::new([string] $pair[0], (ConvertFrom-LabValue $pair[1])))
            }
            $object.PSObject.TypeNames.Clear()
            foreach ($name in @($shape['type_names'])) { $object.PSObject.TypeNames.Add([string] $name) }
            if ($null -ne $shape['to_string']) {
                $text = [string] $shape['to_string']
                $object.PSObject.Methods.Add([psscriptmethod]::new('ToString', { $text }.GetNewClosure()))
            }
            return $object
        }
        $table = [ordered]@{}
        foreach ($pair in @($Value['hashtable'])) { $table[[string] $pair[0]] = ConvertFrom-LabValue $pair[1] }
        return $table
    }
    if ($Value -is [System.Collections.IList]) {
        $items = [object[]]::new($Value.Count)
        for ($i = 0; $i -lt $Value.Count; $i++) { $items[$i] = ConvertFrom-LabValue $Value[$i] }
        return , $items
    }
    # JSON numbers arrive as Int64; the LCM's counts are Int32, as the simulator sends them.
    if ($Value -is [long] -and $Value -ge [int]::MinValue -and $Value -le [int]::MaxValue) { return [int] $Value }
    $Value
}

function New-LabErrorRecord {
    param([System.Collections.IDictionary] $Fields)
    $exception = $null
    $type = $Fields['exception_type'] -as [type]
    if ($null -ne $type) {
        try { $exception = $type::new([string] $Fields['message']) } catch { $exception = $null }
    }
    if ($null -eq $exception) { $exception = [System.Exception]::new([string] $Fields['message']) }
    $record = [System.Management.Automation.ErrorRecord]::new(
        $exception, [string] $Fields['fqid'], [System.Management.Automation.ErrorCategory] $Fields['category'], $Fields['target_object'])
    if ($Fields['target_name']) { $record.CategoryInfo.TargetName = [string] $Fields['target_name'] }
    if ($Fields['activity']) { $record.CategoryInfo.Activity = [string] $Fields['activity'] }
    $record
}

function Invoke-LabLcm {
    # One DSC cmdlet through labctl's `dsc` operation; each streamed line is written by $Cmdlet
    # as it arrives. A stream that ends without its `end` line is a broken guest, and says so.
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [string] $Name, [System.Collections.IDictionary] $Bound)
    $python = $env:VMBUSOPS_PWSHLAB_PYTHON
    $state = $env:VMBUSOPS_PWSHLAB_STATE
    if (-not $python -or -not $state -or -not $global:VmbusOpsLabVM) {
        throw 'vmbusops lab: this session is not a lab guest (VMBUSOPS_PWSHLAB_PYTHON, VMBUSOPS_PWSHLAB_STATE and the guest''s VM are needed)'
    }
    $request = @{
        op = 'dsc'; vm = $global:VmbusOpsLabVM; cmdlet = $Name
        parameters = ConvertTo-LabParameter -Bound $Bound
        location = (Get-Location).Path
    }
    $info = [System.Diagnostics.ProcessStartInfo]::new($python)
    foreach ($arg in @('-m', 'vmbusops.pwshlab.labctl', '--state-dir', $state)) { $info.ArgumentList.Add($arg) }
    if ($env:VMBUSOPS_PWSHLAB_LAB) { $info.ArgumentList.Add('--lab'); $info.ArgumentList.Add($env:VMBUSOPS_PWSHLAB_LAB) }
    $info.UseShellExecute = $false
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $utf8 = [System.Text.UTF8Encoding]::new($false)
    $info.StandardInputEncoding = $utf8
    $info.StandardOutputEncoding = $utf8
    $info.StandardErrorEncoding = $utf8
    $process = [System.Diagnostics.Process]::Start($info)
    $ended = $false
    try {
        $stderr = $process.StandardError.ReadToEndAsync()
        $process.StandardInput.Write((ConvertTo-Json -InputObject $request -Depth 6 -Compress))
        $process.StandardInput.Close()
        while ($true) {
            # Waited for in short slices: a stop (the agent cancelling the run) is honoured
            # between statements, and a blocking ReadLine would hold it until the LCM's next line.
            $next = $process.StandardOutput.ReadLineAsync()
            while (-not $next.Wait(100)) { }
            $line = $next.Result
            if ($null -eq $line) { break }
            $record = ConvertFrom-Json -InputObject $line -AsHashtable -DateKind String -Depth 64
            if ($record.ContainsKey('verbose')) { $Cmdlet.WriteVerbose([string] $record['verbose']) }
            elseif ($record.ContainsKey('warning')) { $Cmdlet.WriteWarning([string] $record['warning']) }
            elseif ($record.ContainsKey('error')) { $Cmdlet.WriteError((New-LabErrorRecord -Fields $record['error'])) }
            elseif ($record.ContainsKey('output')) { $Cmdlet.WriteObject((ConvertFrom-LabValue $record['output']), $false) }
            elseif ($record.ContainsKey('debug')) { $Cmdlet.WriteDebug([string] $record['debug']) }
            elseif ($record.ContainsKey('information')) { $Cmdlet.WriteInformation($record['information'], [string[]] @()) }
            elseif ($record.ContainsKey('progress')) {
                $p = $record['progress']
                $progress = [System.Management.Automation.ProgressRecord]::new(0, [string] $p['activity'], [string] $p['status'])
                $progress.PercentComplete = [int] $p['percent_complete']
                $Cmdlet.WriteProgress($progress)
            }
            elseif ($record.ContainsKey('end')) { $ended = $true }
            elseif ($record.ContainsKey('fatal')) { throw "vmbusops lab: $Name failed: $($record['fatal'])" }
        }
        $process.WaitForExit()
        if (-not $ended) {
            $why = ($stderr.Result -split "`n" | Where-Object { $_ } | Select-Object -Last 3) -join ' | '
            throw "vmbusops lab: the LCM's stream for $Name ended early (exit code $($process.ExitCode)): $why"
        }
    } finally {
        # Stopped (the agent cancelled the run): the LCM stops with it.
        if (-not $process.HasExited) { $process.Kill($true) }
        $process.Dispose()
    }
}

function Start-DscConfiguration {
    [CmdletBinding(DefaultParameterSetName = 'ComputerNameSet', SupportsShouldProcess = $true)]
    param(
        [Parameter(ParameterSetName = 'ComputerNameSet', Position = 0)]
        [Parameter(ParameterSetName = 'CimSessionSet', Position = 0)]
        [string] $Path,

        [Parameter(ParameterSetName = 'ComputerNameSet', Position = 1)]
        [Parameter(ParameterSetName = 'UseExistingComputerNameSet')]
        [Alias('CN', 'ServerName')]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'ComputerNameSet')]
        [Parameter(ParameterSetName = 'UseExistingComputerNameSet')]
        [pscredential] $Credential,

        [Parameter(Mandatory = $true, ParameterSetName = 'CimSessionSet')]
        [Parameter(Mandatory = $true, ParameterSetName = 'UseExistingCimSessionSet')]
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [Parameter(Mandatory = $true, ParameterSetName = 'UseExistingComputerNameSet')]
        [Parameter(Mandatory = $true, ParameterSetName = 'UseExistingCimSessionSet')]
        [switch] $UseExisting,

        [switch] $Wait,

        [switch] $Force,

        [int] $ThrottleLimit,

        [string] $JobName
    )
    Invoke-LabLcm -Cmdlet $PSCmdlet -Name 'Start-DscConfiguration' -Bound $PSBoundParameters
}

function Test-DscConfiguration {
    [CmdletBinding(DefaultParameterSetName = 'ComputerNameSet')]
    param(
        [Parameter(Mandatory = $true, ParameterSetName = 'PathSet', Position = 0)]
        [string] $Path,

        [Parameter(ParameterSetName = 'ComputerNameSet', Position = 0)]
        [Parameter(ParameterSetName = 'ReferenceConfigurationComputerNameSet', Position = 0)]
        [Parameter(ParameterSetName = 'PathSet', Position = 1)]
        [Alias('CN', 'ServerName')]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'ComputerNameSet')]
        [Parameter(ParameterSetName = 'ReferenceConfigurationComputerNameSet')]
        [Parameter(ParameterSetName = 'PathSet')]
        [pscredential] $Credential,

        [Parameter(Mandatory = $true, ParameterSetName = 'CimSessionSet')]
        [Parameter(Mandatory = $true, ParameterSetName = 'ReferenceConfigurationCimSessionSet')]
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [Parameter(Mandatory = $true, ParameterSetName = 'ReferenceConfigurationComputerNameSet')]
        [Parameter(Mandatory = $true, ParameterSetName = 'ReferenceConfigurationCimSessionSet')]
        [string] $ReferenceConfiguration,

        [Parameter(ParameterSetName = 'ComputerNameSet')]
        [Parameter(ParameterSetName = 'CimSessionSet')]
        [switch] $Detailed,

        [switch] $AsJob,

        [int] $ThrottleLimit,

        [string] $JobName
    )
    Invoke-LabLcm -Cmdlet $PSCmdlet -Name 'Test-DscConfiguration' -Bound $PSBoundParameters
}

function Get-DscConfigurationStatus {
    [CmdletBinding()]
    param(
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [int] $ThrottleLimit,

        [switch] $AsJob,

        [switch] $All,

        [string] $JobName
    )
    Invoke-LabLcm -Cmdlet $PSCmdlet -Name 'Get-DscConfigurationStatus' -Bound $PSBoundParameters
}

function Get-DscLocalConfigurationManager {
    [CmdletBinding()]
    param(
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [int] $ThrottleLimit,

        [switch] $AsJob,

        [string] $JobName
    )
    Invoke-LabLcm -Cmdlet $PSCmdlet -Name 'Get-DscLocalConfigurationManager' -Bound $PSBoundParameters
}

function Set-DscLocalConfigurationManager {
    [CmdletBinding(DefaultParameterSetName = 'ComputerNameSet', SupportsShouldProcess = $true)]
    param(
        [Parameter(Mandatory = $true, Position = 0)]
        [string] $Path,

        [Parameter(ParameterSetName = 'ComputerNameSet', Position = 1)]
        [Alias('CN', 'ServerName')]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'ComputerNameSet')]
        [pscredential] $Credential,

        [Parameter(Mandatory = $true, ParameterSetName = 'CimSessionSet')]
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [switch] $Force,

        [int] $ThrottleLimit
    )
    Invoke-LabLcm -Cmdlet $PSCmdlet -Name 'Set-DscLocalConfigurationManager' -Bound $PSBoundParameters
}

# The module's other cmdlets exist in a Windows guest; here labctl answers each with the
# simulator's "does not support" error instead of PowerShell's "not recognized".
foreach ($name in 'Get-DscConfiguration', 'Stop-DscConfiguration', 'Restore-DscConfiguration',
    'Remove-DscConfigurationDocument', 'Publish-DscConfiguration', 'Update-DscConfiguration',
    'Get-DscResource', 'Invoke-DscResource') {
    $body = "[CmdletBinding()] param([Parameter(ValueFromRemainingArguments = `$true)] `$Arguments)`n" +
        "Invoke-LabLcm -Cmdlet `$PSCmdlet -Name '$name' -Bound @{}"
    Set-Item -LiteralPath "function:script:$name" -Value $ExecutionContext.SessionState.Module.NewBoundScriptBlock([scriptblock]::Create($body))
}
Remove-Variable -Name name, body

Export-ModuleMember -Function @(
    'Get-FileHash',
    'Start-DscConfiguration', 'Test-DscConfiguration', 'Get-DscConfigurationStatus',
    'Get-DscLocalConfigurationManager', 'Set-DscLocalConfigurationManager',
    'Get-DscConfiguration', 'Stop-DscConfiguration', 'Restore-DscConfiguration',
    'Remove-DscConfigurationDocument', 'Publish-DscConfiguration', 'Update-DscConfiguration',
    'Get-DscResource', 'Invoke-DscResource'
)
