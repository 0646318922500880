#Requires -Version 7.0

# vmbusops lab: the Hyper-V cmdlets the agent sends, as functions that real PowerShell binds.
#
# Each function carries the real cmdlet's parameter sets and parameter types, so PowerShell's own
# parameter binder judges every command the agent sends (a string given to -ScriptBlock is refused
# exactly as on a Hyper-V host). Functions come before cmdlets in command lookup, so these shadow
# PowerShell's Invoke-Command and stand in for the Hyper-V module, which Linux does not have.
#
# What a cmdlet does to a VM is decided by `python -m vmbusops.pwshlab.labctl` (one JSON request
# on stdin, one JSON answer on stdout), which uses the simulator's own lab, state directory and
# error texts: the pwsh-lab host and the simulator see one lab. Its interpreter, state directory
# and lab file come from $env:VMBUSOPS_PWSHLAB_PYTHON, _STATE and _LAB.
#
# Invoke-Command -VMName/-VMId asks labctl whether PowerShell Direct would open a session (the VM
# exists and runs, the guest has booted, the credential is valid), then opens a real remote
# session to a child pwsh (what Start-Job uses), sets it up as the guest (a C: drive rooted at the
# guest's folder in the lab state, $env:COMPUTERNAME, $env:TEMP, `hostname`, the DSC cmdlets of
# ../../guest/VmbusOpsLabGuest.psm1 over the simulator's LCM) and runs the script
# block there with the real Invoke-Command -Session. Remoting's own semantics follow: output is
# deserialized, `exit N` in a script block closes the session without a code, and verbose,
# warning and debug records reach a PSRP client only when it declares a host UI. Any other use of
# Invoke-Command goes to the real cmdlet unchanged.
#
# Error records are the simulator's (message, FullyQualifiedErrorId, category, exception type);
# PowerShell appends ",<function name>" to the FullyQualifiedErrorId of an error a function writes.
# Checkpoints are in VmbusOpsLab.Checkpoints.ps1. Not modelled here: -AsJob, -CimSession/-ComputerName to other hosts, the VM object parameter sets
# beyond Get-VMIntegrationService -VM, and the lab faults that live in the simulator's protocol
# layer (crash_on, garbage_on, malformed_on, session_drop_after_records).

Set-StrictMode -Version 3.0

# ---------------------------------------------------------------------------------------------
# The Hyper-V module's own types the parameters name. They are emitted once per process (every
# runspace of the pool imports this module; the lock keeps two from defining them twice).
[System.Threading.Monitor]::Enter([System.AppDomain]::CurrentDomain)
try {
    if (-not ('Microsoft.HyperV.PowerShell.CopyFileSourceType' -as [type])) {
        $assembly = [System.Reflection.Emit.AssemblyBuilder]::DefineDynamicAssembly(
            [System.Reflection.AssemblyName]::new('Microsoft.HyperV.PowerShell.Lab'), 'Run')
        $module = $assembly.DefineDynamicModule('Microsoft.HyperV.PowerShell.Lab')
        $enums = [ordered]@{
            'Microsoft.HyperV.PowerShell.CopyFileSourceType' = @('Host')
            'Microsoft.HyperV.PowerShell.WaitVMTypes'        = @('Heartbeat', 'IPAddress')
            'Microsoft.HyperV.PowerShell.GroupType'          = @('VMCollectionType', 'ManagementCollectionType')
        }
        foreach ($name in $enums.Keys) {
            $enum = $module.DefineEnum($name, 'Public', [int])
            $value = 0
            foreach ($literal in $enums[$name]) { $null = $enum.DefineLiteral($literal, $value); $value++ }
            $null = $enum.CreateType()
        }
        $exception = $module.DefineType('Microsoft.HyperV.PowerShell.VirtualizationException', 'Public,Class', [Exception])
        $ctor = $exception.DefineConstructor('Public', 'Standard', [type[]]@([string]))
        $il = $ctor.GetILGenerator()
        $il.Emit([System.Reflection.Emit.OpCodes]::Ldarg_0)
        $il.Emit([System.Reflection.Emit.OpCodes]::Ldarg_1)
        $il.Emit([System.Reflection.Emit.OpCodes]::Call, [Exception].GetConstructor([type[]]@([string])))
        $il.Emit([System.Reflection.Emit.OpCodes]::Ret)
        $null = $exception.CreateType()
    }
} finally {
    [System.Threading.Monitor]::Exit([System.AppDomain]::CurrentDomain)
}

# ---------------------------------------------------------------------------------------------
# The lab controller.

function Invoke-LabControl {
    # One request to labctl; returns its answer as a hashtable. The request may hold a guest
    # password: it goes on the child's stdin, never on its command line.
    param([string] $Operation, [hashtable] $Request)
    $python = $env:VMBUSOPS_PWSHLAB_PYTHON
    $state = $env:VMBUSOPS_PWSHLAB_STATE
    if (-not $python -or -not $state) {
        throw 'vmbusops lab: VMBUSOPS_PWSHLAB_PYTHON and VMBUSOPS_PWSHLAB_STATE must be set (start the host with --host pwsh-lab)'
    }
    $Request['op'] = $Operation
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
    try {
        $stderr = $process.StandardError.ReadToEndAsync()
        $process.StandardInput.Write((ConvertTo-Json -InputObject $Request -Depth 4 -Compress))
        $process.StandardInput.Close()
        $stdout = $process.StandardOutput.ReadToEnd()
        $process.WaitForExit()
        $code = $process.ExitCode
    } finally {
        $process.Dispose()
    }
    $answer = $null
    if ($stdout) {
        try { $answer = ConvertFrom-Json -InputObject $stdout -AsHashtable } catch { $answer = $null }
    }
    if ($null -eq $answer -or $answer.ContainsKey('fatal')) {
        $why = if ($null -ne $answer) { $answer['fatal'] } else { "exit code $code; " + ($stderr.Result -split "`n" | Select-Object -Last 3) -join ' | ' }
        throw "vmbusops lab: $Operation failed: $why"
    }
    $answer
}

function Write-LabAnswer {
    # The answer's warnings and error records, written by the calling cmdlet.
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [hashtable] $Answer)
    foreach ($warning in @($Answer['warnings'])) {
        if ($null -ne $warning) { $Cmdlet.WriteWarning($warning) }
    }
    foreach ($e in @($Answer['errors'])) {
        if ($null -eq $e) { continue }
        $exception = $null
        $type = $e['exception_type'] -as [type]
        if ($null -ne $type) {
            try { $exception = $type::new([string] $e['message']) } catch { $exception = $null }
        }
        if ($null -eq $exception) { $exception = [System.Exception]::new([string] $e['message']) }
        $record = [System.Management.Automation.ErrorRecord]::new(
            $exception, [string] $e['fqid'], [System.Management.Automation.ErrorCategory] $e['category'], $e['target_object'])
        if ($e['target_name']) { $record.CategoryInfo.TargetName = [string] $e['target_name'] }
        if ($e['activity']) { $record.CategoryInfo.Activity = [string] $e['activity'] }
        $Cmdlet.WriteError($record)
    }
}

function ConvertTo-LabVM {
    param([hashtable] $VM)
    $object = [pscustomobject][ordered]@{
        Name                         = $VM['Name']
        VMName                       = $VM['Name']
        Id                           = [guid] $VM['Id']
        VMId                         = [guid] $VM['Id']
        State                        = $VM['State']
        Status                       = $VM['Status']
        Heartbeat                    = $VM['Heartbeat']
        Uptime                       = [timespan]::FromSeconds($VM['UptimeSeconds'])
        Notes                        = $VM['Notes']
        ComputerName                 = $VM['ComputerName']
        Generation                   = $VM['Generation']
        Version                      = $VM['Version']
        ProcessorCount               = $VM['ProcessorCount']
        GuestServiceInterfaceEnabled = $VM['GuestServiceInterfaceEnabled']
        CheckpointType               = $VM['CheckpointType']
        Path                         = $VM['Path']
        ConfigurationLocation        = $VM['ConfigurationLocation']
        SnapshotFileLocation         = $VM['SnapshotFileLocation']
        CheckpointFileLocation       = $VM['CheckpointFileLocation']
        MemoryStartup                = [long] $VM['MemoryStartup']
        ParentSnapshotId             = if ($VM['ParentSnapshotId']) { [guid] $VM['ParentSnapshotId'] } else { $null }
        ParentSnapshotName           = $VM['ParentSnapshotName']
    }
    $object.PSObject.TypeNames.Clear()
    foreach ($name in 'Microsoft.HyperV.PowerShell.VirtualMachine', 'Microsoft.HyperV.PowerShell.VirtualMachineBase',
        'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
        $object.PSObject.TypeNames.Add($name)
    }
    $object
}

function ConvertTo-LabIntegrationComponent {
    param([hashtable] $Component)
    $object = [pscustomobject][ordered]@{
        VMName                     = $Component['VMName']
        VMId                       = [guid] $Component['VMId']
        Name                       = $Component['Name']
        Enabled                    = [bool] $Component['Enabled']
        PrimaryStatusDescription   = $Component['PrimaryStatusDescription']
        SecondaryStatusDescription = $Component['SecondaryStatusDescription']
    }
    $object.PSObject.TypeNames.Clear()
    foreach ($name in 'Microsoft.HyperV.PowerShell.VMIntegrationComponent',
        'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
        $object.PSObject.TypeNames.Add($name)
    }
    $object
}

function ConvertTo-LabMember {
    # A group's member VM or group, typed as Hyper-V types it, with Hyper-V's string form: past
    # the default serialization depth that string is what a remote client receives.
    param([hashtable] $Member, [string] $TypeName)
    $short = $TypeName.Split('.')[-1]
    $object = [pscustomobject][ordered]@{ Name = $Member['Name']; Id = [guid] $Member['Id'] }
    $object.PSObject.TypeNames.Clear()
    foreach ($name in $TypeName, 'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
        $object.PSObject.TypeNames.Add($name)
    }
    $text = "$short (Name = '$($Member['Name'])') [Id = '$($Member['Id'])']"
    $object | Add-Member -MemberType ScriptMethod -Name ToString -Value ([scriptblock]::Create("'" + $text.Replace("'", "''") + "'")) -Force
    $object
}

function ConvertTo-LabVMGroup {
    param([hashtable] $Group)
    $object = [pscustomobject][ordered]@{
        Name           = $Group['Name']
        InstanceId     = [guid] $Group['InstanceId']
        GroupType      = [Microsoft.HyperV.PowerShell.GroupType] $Group['GroupType']
        VMMembers      = @(foreach ($m in @($Group['VMMembers'])) { if ($null -ne $m) { ConvertTo-LabMember $m 'Microsoft.HyperV.PowerShell.VirtualMachine' } })
        VMGroupMembers = @(foreach ($m in @($Group['VMGroupMembers'])) { if ($null -ne $m) { ConvertTo-LabMember $m 'Microsoft.HyperV.PowerShell.VMGroup' } })
        ComputerName   = $Group['ComputerName']
        IsDeleted      = $false
    }
    $object.PSObject.TypeNames.Clear()
    foreach ($name in 'Microsoft.HyperV.PowerShell.VMGroup', 'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
        $object.PSObject.TypeNames.Add($name)
    }
    $object
}

function Get-LabVMByName {
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [string[]] $Name)
    $answer = Invoke-LabControl -Operation 'get-vm' -Request @{ names = @($Name) }
    foreach ($vm in @($answer['objects'])) { if ($null -ne $vm) { ConvertTo-LabVM $vm } }
}

# ---------------------------------------------------------------------------------------------
# Hyper-V cmdlets.

function Get-VM {
    [CmdletBinding(DefaultParameterSetName = 'Name')]
    [OutputType('Microsoft.HyperV.PowerShell.VirtualMachine')]
    param(
        [Parameter(ParameterSetName = 'Name', Position = 0, ValueFromPipeline = $true)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'Id', Position = 0)]
        [Nullable[guid]] $Id,

        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [pscredential[]] $Credential
    )
    begin { $names = [System.Collections.Generic.List[string]]::new() }
    process { if ($Name) { $names.AddRange([string[]] $Name) } }
    end {
        $request = if ($PSCmdlet.ParameterSetName -eq 'Id' -and $null -ne $Id) { @{ ids = @([string] $Id) } } else { @{ names = @($names) } }
        $answer = Invoke-LabControl -Operation 'get-vm' -Request $request
        foreach ($vm in @($answer['objects'])) { if ($null -ne $vm) { ConvertTo-LabVM $vm } }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer $answer
    }
}

function Get-VMGroup {
    # Get-VMGroup's two parameter sets: Name (default) and Id, each with CimSession, ComputerName
    # and Credential.
    [CmdletBinding(DefaultParameterSetName = 'Name')]
    [OutputType('Microsoft.HyperV.PowerShell.VMGroup')]
    param(
        [Parameter(ParameterSetName = 'Name', Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'Id', Position = 0)]
        [Nullable[guid]] $Id,

        [ValidateNotNullOrEmpty()]
        [Microsoft.Management.Infrastructure.CimSession[]] $CimSession,

        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [pscredential[]] $Credential
    )
    $request = if ($PSCmdlet.ParameterSetName -eq 'Id' -and $null -ne $Id) { @{ id = [string] $Id } } else { @{ names = @($Name | Where-Object { $null -ne $_ }) } }
    $answer = Invoke-LabControl -Operation 'get-vm-group' -Request $request
    foreach ($g in @($answer['objects'])) { if ($null -ne $g) { ConvertTo-LabVMGroup $g } }
    Write-LabAnswer -Cmdlet $PSCmdlet -Answer $answer
}

function Get-VMIntegrationService {
    [CmdletBinding(DefaultParameterSetName = 'VMName')]
    [OutputType('Microsoft.HyperV.PowerShell.VMIntegrationComponent')]
    param(
        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [Parameter(ParameterSetName = 'VMObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [ValidateNotNullOrEmpty()]
        [psobject[]] $VM,

        [Parameter(Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'VMName')]
        [pscredential[]] $Credential
    )
    begin { $vmNames = [System.Collections.Generic.List[string]]::new() }
    process {
        if ($PSCmdlet.ParameterSetName -eq 'VMObject') { foreach ($v in $VM) { $vmNames.Add([string] $v.Name) } }
        else { $vmNames.AddRange([string[]] $VMName) }
    }
    end {
        $request = @{ vm_names = @($vmNames) }
        if ($Name) { $request['names'] = @($Name) }
        $answer = Invoke-LabControl -Operation 'get-integration' -Request $request
        foreach ($c in @($answer['objects'])) { if ($null -ne $c) { ConvertTo-LabIntegrationComponent $c } }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer $answer
    }
}

function Set-LabIntegrationService {
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [string[]] $Name, [string[]] $VMName, [bool] $Enabled, [bool] $Passthru)
    $answer = Invoke-LabControl -Operation 'set-integration' -Request @{ names = @($Name); vm_names = @($VMName); enabled = $Enabled }
    Write-LabAnswer -Cmdlet $Cmdlet -Answer $answer
    if ($Passthru) {
        $components = Invoke-LabControl -Operation 'get-integration' -Request @{ vm_names = @($VMName); names = @($Name) }
        foreach ($c in @($components['objects'])) { if ($null -ne $c) { ConvertTo-LabIntegrationComponent $c } }
    }
}

function Enable-VMIntegrationService {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'VMName')]
    param(
        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    if ($PSCmdlet.ShouldProcess(($VMName -join ', '), "Enable integration service $($Name -join ', ')")) {
        Set-LabIntegrationService -Cmdlet $PSCmdlet -Name $Name -VMName $VMName -Enabled $true -Passthru $Passthru.IsPresent
    }
}

function Disable-VMIntegrationService {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'VMName')]
    param(
        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    if ($PSCmdlet.ShouldProcess(($VMName -join ', '), "Disable integration service $($Name -join ', ')")) {
        Set-LabIntegrationService -Cmdlet $PSCmdlet -Name $Name -VMName $VMName -Enabled $false -Passthru $Passthru.IsPresent
    }
}

function Copy-VMFile {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Name')]
    param(
        [Parameter(ParameterSetName = 'Name', Mandatory = $true, Position = 0)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(Mandatory = $true, Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string] $SourcePath,

        [Parameter(Mandatory = $true, Position = 2)]
        [ValidateNotNullOrEmpty()]
        [string] $DestinationPath,

        [Parameter(Mandatory = $true)]
        [Microsoft.HyperV.PowerShell.CopyFileSourceType] $FileSource,

        [switch] $CreateFullPath,

        [switch] $Force,

        [Parameter(ParameterSetName = 'Name')]
        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'Name')]
        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    if (-not $PSCmdlet.ShouldProcess(($Name -join ', '), "Copy $SourcePath to $DestinationPath")) { return }
    # Copy-VMFile reads the host file by its file system path, as Hyper-V's VMMS does.
    $source = $PSCmdlet.GetUnresolvedProviderPathFromPSPath($SourcePath)
    $answer = Invoke-LabControl -Operation 'copy' -Request @{
        names = @($Name); source = $source; destination = $DestinationPath
        create_full_path = $CreateFullPath.IsPresent; force = $Force.IsPresent
    }
    Write-LabAnswer -Cmdlet $PSCmdlet -Answer $answer
    if ($Passthru -and -not @($answer['errors']).Count) { Get-LabVMByName -Cmdlet $PSCmdlet -Name $Name }
}

function Start-VM {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Name')]
    [OutputType('Microsoft.HyperV.PowerShell.VirtualMachine')]
    param(
        [Parameter(ParameterSetName = 'Name', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'Name')]
        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'Name')]
        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    process {
        if (-not $PSCmdlet.ShouldProcess(($Name -join ', '), 'Start-VM')) { return }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer (Invoke-LabControl -Operation 'start' -Request @{ names = @($Name) })
        if ($Passthru) { Get-LabVMByName -Cmdlet $PSCmdlet -Name $Name }
    }
}

function Stop-VM {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Name')]
    [OutputType('Microsoft.HyperV.PowerShell.VirtualMachine')]
    param(
        [Parameter(ParameterSetName = 'Name', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [switch] $Save,

        [switch] $TurnOff,

        [switch] $Force,

        [Parameter(ParameterSetName = 'Name')]
        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'Name')]
        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    process {
        if (-not $PSCmdlet.ShouldProcess(($Name -join ', '), 'Stop-VM')) { return }
        $request = @{ names = @($Name); save = $Save.IsPresent; turn_off = $TurnOff.IsPresent }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer (Invoke-LabControl -Operation 'stop' -Request $request)
        if ($Passthru) { Get-LabVMByName -Cmdlet $PSCmdlet -Name $Name }
    }
}

function Restart-VM {
    [CmdletBinding(SupportsShouldProcess = $true, DefaultParameterSetName = 'Name')]
    [OutputType('Microsoft.HyperV.PowerShell.VirtualMachine')]
    param(
        [Parameter(ParameterSetName = 'Name', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [switch] $Force,

        [switch] $Wait,

        [Microsoft.HyperV.PowerShell.WaitVMTypes] $For = 'Heartbeat',

        [uint16] $Delay,

        [Alias('TimeoutSec')]
        [ValidateRange(-1, [int]::MaxValue)]
        [int] $Timeout = -1,

        [Parameter(ParameterSetName = 'Name')]
        [ValidateNotNullOrEmpty()]
        [string[]] $ComputerName,

        [Parameter(ParameterSetName = 'Name')]
        [pscredential[]] $Credential,

        [switch] $Passthru
    )
    process {
        if (-not $PSCmdlet.ShouldProcess(($Name -join ', '), 'Restart-VM')) { return }
        $answer = Invoke-LabControl -Operation 'restart' -Request @{ names = @($Name); wait = $Wait.IsPresent }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer $answer
        if ($Passthru) { Get-LabVMByName -Cmdlet $PSCmdlet -Name $Name }
    }
}

# ---------------------------------------------------------------------------------------------
# PowerShell Direct.

# A child pwsh's connection info (what Start-Job uses); its constructor is internal.
$script:NewProcessConnection = [psobject].Assembly.GetType(
    'System.Management.Automation.Runspaces.NewProcessConnectionInfo').GetConstructors(
    [System.Reflection.BindingFlags] 'NonPublic,Instance')[0]

# The guest session's own module: the DSC cmdlets, over the simulator's LCM. It lives outside
# this folder (which is on the host's PSModulePath) so the host never loads it by itself.
$script:GuestModule = [System.IO.Path]::GetFullPath((Join-Path $PSScriptRoot '..' '..' 'guest' 'VmbusOpsLabGuest.psm1'))

# Runs first in each guest session: the guest's C: drive, working folder, identity and cmdlets.
$script:GuestSetup = {
    param([string] $Root, [string] $ComputerName, [string] $UserName, [string] $VMName, [string] $GuestModule)
    $null = New-PSDrive -Name C -PSProvider FileSystem -Root $Root -Scope Global
    Set-Location -LiteralPath 'C:\'
    $environment = [ordered]@{
        COMPUTERNAME = $ComputerName; USERNAME = $UserName; USERDOMAIN = $ComputerName
        SystemRoot = 'C:\Windows'; windir = 'C:\Windows'; SystemDrive = 'C:'
        TEMP = 'C:\Windows\Temp'; TMP = 'C:\Windows\Temp'; USERPROFILE = "C:\Users\$UserName"
        ProgramFiles = 'C:\Program Files'; OS = 'Windows_NT'; PROCESSOR_ARCHITECTURE = 'AMD64'
    }
    foreach ($key in $environment.Keys) { Set-Item -LiteralPath "env:$key" -Value $environment[$key] }
    function global:hostname { $env:COMPUTERNAME }
    # The guest's power is the lab VM's, never this machine's: PowerShell 7 on Linux has its own
    # Restart-Computer and Stop-Computer, which these functions shadow. Restart-Computer restarts
    # the lab VM and ends the session, as a rebooting guest does, through the host's SetShouldExit
    # (which closes a remote session whatever script file it is called from).
    $global:VmbusOpsLabVM = $VMName
    Import-Module -Name $GuestModule -Global -ErrorAction Stop
    function global:Restart-Computer {
        [CmdletBinding()]
        param([Parameter(Position = 0)][string[]] $ComputerName, [switch] $Force, [switch] $Wait)
        $arguments = @('-m', 'vmbusops.pwshlab.labctl', '--state-dir', $env:VMBUSOPS_PWSHLAB_STATE)
        if ($env:VMBUSOPS_PWSHLAB_LAB) { $arguments += @('--lab', $env:VMBUSOPS_PWSHLAB_LAB) }
        $request = ConvertTo-Json -Compress -InputObject @{ op = 'restart'; names = @($global:VmbusOpsLabVM) }
        $null = $request | & $env:VMBUSOPS_PWSHLAB_PYTHON @arguments
        $Host.SetShouldExit(0)
    }
    function global:Stop-Computer {
        [CmdletBinding()]
        param([Parameter(Position = 0)][string[]] $ComputerName, [switch] $Force)
        throw 'vmbusops lab: Stop-Computer is not modelled in a lab guest (use Stop-VM on the host)'
    }
}

function New-LabGuestSession {
    # A remote session to a child pwsh set up as the guest: PowerShell Direct's process boundary.
    # Invoke-Command -VMName gives its remote runspace the cmdlet's own host (here the PSRP
    # client's, relayed by this server), so the guest's verbose, warning and debug lines reach a
    # client that declared a host UI. [runspacefactory]::CreateOutOfProcessRunspace would give it
    # no host, and PowerShell would drop those lines; hence the connection info's own constructor.
    param([hashtable] $Guest)
    $runspace = [runspacefactory]::CreateRunspace(
        [System.Management.Automation.Runspaces.RunspaceConnectionInfo] $script:NewProcessConnection.Invoke(@($null)),
        [System.Management.Automation.Host.PSHost] $Host,
        [System.Management.Automation.Runspaces.TypeTable] $null)
    try {
        $runspace.Open()
        $session = [System.Management.Automation.Runspaces.PSSession]::Create($runspace, 'VMBus', $null)
        Microsoft.PowerShell.Core\Invoke-Command -Session $session -ScriptBlock $script:GuestSetup `
            -ArgumentList $Guest['root'], $Guest['computer_name'], $Guest['user'], $Guest['name'], $script:GuestModule -ErrorAction Stop
        [pscustomobject]@{ Session = $session; Runspace = $runspace }
    } catch {
        $runspace.Dispose()
        throw
    }
}

function Invoke-LabGuestCommand {
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [hashtable] $Bound, [object[]] $InputObjects)
    $scriptBlock = if ($Bound.ContainsKey('ScriptBlock')) { $Bound['ScriptBlock'] } else {
        $path = $Cmdlet.GetResolvedProviderPathFromPSPath($Bound['FilePath'], [ref] $null)
        [scriptblock]::Create((Get-Content -LiteralPath $path[0] -Raw))
    }
    $credential = [pscredential] $Bound['Credential']
    $targets = if ($Bound.ContainsKey('VMName')) { @($Bound['VMName'] | ForEach-Object { @{ vm_name = [string] $_ } }) }
    else { @($Bound['VMId'] | ForEach-Object { @{ vm_id = [string] $_ } }) }
    $guests = [System.Collections.Generic.List[object]]::new()
    try {
        foreach ($target in $targets) {
            $target['user'] = $credential.UserName
            $target['password'] = $credential.GetNetworkCredential().Password
            $answer = Invoke-LabControl -Operation 'open-guest' -Request $target
            $target.Remove('password')
            Write-LabAnswer -Cmdlet $Cmdlet -Answer $answer
            if ($answer.ContainsKey('guest')) { $guests.Add((New-LabGuestSession -Guest $answer['guest'])) }
        }
        if ($guests.Count -eq 0) { return }
        $invoke = @{ Session = @($guests | ForEach-Object Session); ScriptBlock = $scriptBlock }
        foreach ($name in 'ArgumentList', 'ThrottleLimit', 'HideComputerName') {
            if ($Bound.ContainsKey($name)) { $invoke[$name] = $Bound[$name] }
        }
        if ($InputObjects.Count) {
            $InputObjects | Microsoft.PowerShell.Core\Invoke-Command @invoke
        } else {
            Microsoft.PowerShell.Core\Invoke-Command @invoke
        }
    } finally {
        foreach ($guest in $guests) { $guest.Runspace.Dispose() }
    }
}

# Invoke-Command: every parameter set of the real cmdlet, taken from its own metadata so the
# binder sees exactly the real parameters and types; -VMName/-VMId go to the lab, the rest to
# the cmdlet itself. One exception: -ScriptBlock is declared without its type here and its value
# is bound by the real cmdlet. A function's typed parameter converts through an argument
# transformation, whose refusal reads "Cannot process argument transformation on parameter
# 'ScriptBlock'", where the cmdlet on a Hyper-V host says "Cannot bind parameter 'ScriptBlock'.
# Cannot convert the "..." value of type "System.String" to type
# "System.Management.Automation.ScriptBlock"." (FullyQualifiedErrorId
# CannotConvertArgumentNoMessage, to which PowerShell appends this function's name).
$script:InvokeCommandBody = @'
begin {
    $labSets = 'VMName', 'VMId', 'FilePathVMName', 'FilePathVMId'
    $toLab = $PSCmdlet.ParameterSetName -in $labSets
    if ($toLab -and $PSBoundParameters.ContainsKey('ScriptBlock') -and $ScriptBlock -isnot [scriptblock]) {
        # The real binder refuses the value. -ScriptBlock is bound before -Session, and a $null
        # session is refused too, so nothing can run here whatever the value was.
        try {
            Microsoft.PowerShell.Core\Invoke-Command -ScriptBlock $ScriptBlock -Session $null -ErrorAction Stop
        } catch {
            $PSCmdlet.ThrowTerminatingError($_)
        }
    }
    if ($toLab) {
        $inputs = [System.Collections.Generic.List[object]]::new()
    } else {
        try {
            $forward = { Microsoft.PowerShell.Core\Invoke-Command @PSBoundParameters }.GetSteppablePipeline($MyInvocation.CommandOrigin)
            $forward.Begin($PSCmdlet)
        } catch {
            # The real cmdlet's binding refusals end the command, as they would without this function.
            $PSCmdlet.ThrowTerminatingError($_)
        }
    }
}
process {
    if ($toLab) {
        if ($PSBoundParameters.ContainsKey('InputObject')) { $inputs.Add($InputObject) }
    } else {
        $forward.Process($_)
    }
}
end {
    if ($toLab) {
        $bound = @{} + $PSBoundParameters
        $null = $bound.Remove('InputObject')
        Invoke-LabGuestCommand -Cmdlet $PSCmdlet -Bound $bound -InputObjects $inputs.ToArray()
    } else {
        $forward.End()
    }
}
'@

$metadata = [System.Management.Automation.CommandMetadata]::new(
    (Get-Command -Name 'Microsoft.PowerShell.Core\Invoke-Command' -CommandType Cmdlet))
$parameters = [System.Management.Automation.ProxyCommand]::GetParamBlock($metadata)
$untyped = $parameters -replace '\[scriptblock\]\s*(\$\{ScriptBlock\})', '$1'
if ($untyped -eq $parameters) { throw 'vmbusops lab: Invoke-Command''s -ScriptBlock parameter was not found in its metadata' }
$definition = [scriptblock]::Create(
    [System.Management.Automation.ProxyCommand]::GetCmdletBindingAttribute($metadata) +
    "`nparam($untyped)`n" + $script:InvokeCommandBody)
Set-Item -LiteralPath 'function:script:Invoke-Command' -Value $ExecutionContext.SessionState.Module.NewBoundScriptBlock($definition)
Remove-Variable -Name metadata, parameters, untyped, definition

# Checkpoints: Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot, Get-VMHardDiskDrive, Get-Volume.
. (Join-Path $PSScriptRoot 'VmbusOpsLab.Checkpoints.ps1')

Export-ModuleMember -Function @(
    'Get-VM', 'Get-VMGroup', 'Get-VMIntegrationService', 'Enable-VMIntegrationService', 'Disable-VMIntegrationService',
    'Copy-VMFile', 'Start-VM', 'Stop-VM', 'Restart-VM', 'Invoke-Command', 'Checkpoint-VM', 'Get-VMSnapshot',
    'Restore-VMSnapshot', 'Remove-VMSnapshot', 'Get-VMHardDiskDrive', 'Get-Volume'
) -Alias 'Get-VMCheckpoint', 'Restore-VMCheckpoint', 'Remove-VMCheckpoint'
