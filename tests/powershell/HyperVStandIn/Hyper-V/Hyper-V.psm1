<#
    A stand-in for the Hyper-V module where there is none (PowerShell 7 on Linux): functions with
    the names and parameter types of the Hyper-V cmdlets the vmbusops role exposes, so that JEA
    builds its proxies from them and PowerShell's binder judges what a caller sends. Each call is
    recorded (command and bound parameters) in a list the test puts in the process's AppDomain
    data under 'VmbusOps.HyperVCalls', since a JEA runspace shares nothing else with the test.
    Get-VM answers every name or id with one running VM, as Invoke-Command -VMName/-VMId needs.
#>

function Add-StandInCall {
    param([string] $Command, [System.Collections.IDictionary] $Bound)
    $calls = [System.AppDomain]::CurrentDomain.GetData('VmbusOps.HyperVCalls')
    if ($null -ne $calls) { $calls.Add([pscustomobject]@{ Command = $Command; Bound = @{} + $Bound }) }
}

function Get-VM {
    [CmdletBinding(DefaultParameterSetName = 'Name')]
    param(
        [Parameter(Position = 0, ParameterSetName = 'Name')] [string[]] $Name,
        [Parameter(Mandatory, ParameterSetName = 'Id')] [Nullable[guid]] $Id
    )
    Add-StandInCall 'Get-VM' $PSBoundParameters
    $vmName = if ($Name) { $Name[0] } else { 'vm-by-id' }
    $vmId = if ($Id) { $Id.Value } else { [guid]'0f0e0d0c-0b0a-0908-0706-050403020100' }
    [pscustomobject]@{ Name = $vmName; VMName = $vmName; Id = $vmId; VMId = $vmId; State = 'Running' }
}

function Get-VMGroup {
    [CmdletBinding(DefaultParameterSetName = 'Name')]
    param(
        [Parameter(Position = 0, ParameterSetName = 'Name')] [string[]] $Name,
        [Parameter(Position = 0, ParameterSetName = 'Id')] [Nullable[guid]] $Id
    )
    Add-StandInCall 'Get-VMGroup' $PSBoundParameters
}

function Get-VMIntegrationService {
    [CmdletBinding()]
    param([Parameter(Mandatory)] [string[]] $VMName, [string[]] $Name)
    Add-StandInCall 'Get-VMIntegrationService' $PSBoundParameters
}

function Enable-VMIntegrationService {
    [CmdletBinding()]
    param([Parameter(Mandatory)] [string[]] $VMName, [Parameter(Mandatory)] [string[]] $Name)
    Add-StandInCall 'Enable-VMIntegrationService' $PSBoundParameters
}

function Copy-VMFile {
    [CmdletBinding()]
    param(
        [Parameter(Mandatory)] [string[]] $Name,
        [Parameter(Mandatory)] [string] $SourcePath,
        [Parameter(Mandatory)] [string] $DestinationPath,
        [Parameter(Mandatory)] [string] $FileSource,
        [switch] $CreateFullPath,
        [switch] $Force
    )
    Add-StandInCall 'Copy-VMFile' $PSBoundParameters
}

function Restart-VM {
    [CmdletBinding()]
    param([Parameter(Mandatory)] [string[]] $Name, [switch] $Force)
    Add-StandInCall 'Restart-VM' $PSBoundParameters
}

function Start-VM {
    [CmdletBinding()]
    param([Parameter(Mandatory)] [string[]] $Name)
    Add-StandInCall 'Start-VM' $PSBoundParameters
}

function Stop-VM {
    [CmdletBinding()]
    param([Parameter(Mandatory)] [string[]] $Name, [switch] $Force, [switch] $TurnOff)
    Add-StandInCall 'Stop-VM' $PSBoundParameters
}

# The checkpoint cmdlets, with the parameter sets of Microsoft's reference (Windows Server 2022).
# Restore-VMSnapshot asks for confirmation (ConfirmImpact High), as its documented example shows.

function Checkpoint-VM {
    [CmdletBinding(DefaultParameterSetName = 'Name', SupportsShouldProcess)]
    param(
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'Name', ValueFromPipeline)] [Alias('VMName')] [string[]] $Name,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMObject', ValueFromPipeline)] [object[]] $VM,
        [Parameter(Position = 1)] [Alias('CheckpointName')] [string] $SnapshotName,
        [Parameter(ParameterSetName = 'Name')] [string[]] $ComputerName,
        [switch] $AsJob,
        [switch] $Passthru
    )
    Add-StandInCall 'Checkpoint-VM' $PSBoundParameters
}

function Get-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'VMName')]
    param(
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMName', ValueFromPipeline)] [string[]] $VMName,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMObject', ValueFromPipeline)] [object[]] $VM,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'Id')] [Nullable[guid]] $Id,
        [Parameter(Position = 1, ParameterSetName = 'VMName')] [Parameter(Position = 1, ParameterSetName = 'VMObject')] [string] $Name,
        [Parameter(ParameterSetName = 'VMName')] [Parameter(ParameterSetName = 'Id')] [string[]] $ComputerName
    )
    Add-StandInCall 'Get-VMSnapshot' $PSBoundParameters
}

function Restore-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'SnapshotName', SupportsShouldProcess, ConfirmImpact = 'High')]
    param(
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'SnapshotName')] [Parameter(Mandatory, ParameterSetName = 'VM')] [string] $Name,
        [Parameter(Mandatory, Position = 1, ParameterSetName = 'SnapshotName')] [string] $VMName,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'SnapshotObject', ValueFromPipeline)] [Alias('VMCheckpoint')] [object] $VMSnapshot,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VM', ValueFromPipeline)] [object] $VM,
        [Parameter(ParameterSetName = 'SnapshotName')] [string[]] $ComputerName,
        [switch] $AsJob,
        [switch] $Passthru
    )
    if ($PSCmdlet.ShouldProcess($Name, 'Restore-VMSnapshot')) { Add-StandInCall 'Restore-VMSnapshot' $PSBoundParameters }
}

function Remove-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'SnapshotName', SupportsShouldProcess)]
    param(
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'SnapshotName')] [string[]] $VMName,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMObject', ValueFromPipeline)] [object[]] $VM,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'SnapshotObject', ValueFromPipeline)] [Alias('VMCheckpoint')] [object[]] $VMSnapshot,
        [Parameter(Position = 1, ParameterSetName = 'SnapshotName')] [Parameter(Position = 1, ParameterSetName = 'VMObject')] [string[]] $Name,
        [Parameter(ParameterSetName = 'SnapshotName')] [string[]] $ComputerName,
        [Alias('IncludeAllChildCheckpoints')] [switch] $IncludeAllChildSnapshots,
        [switch] $AsJob,
        [switch] $Passthru
    )
    if ($PSCmdlet.ShouldProcess(($Name -join ', '), 'Remove-VMSnapshot')) { Add-StandInCall 'Remove-VMSnapshot' $PSBoundParameters }
}

function Get-VMHardDiskDrive {
    [CmdletBinding(DefaultParameterSetName = 'VMName')]
    param(
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMName')] [string[]] $VMName,
        [Parameter(Mandatory, Position = 0, ParameterSetName = 'VMObject', ValueFromPipeline)] [object[]] $VM,
        [int] $ControllerNumber
    )
    Add-StandInCall 'Get-VMHardDiskDrive' $PSBoundParameters
}

Export-ModuleMember -Function Get-VM, Get-VMGroup, Get-VMIntegrationService, Enable-VMIntegrationService, Copy-VMFile, Restart-VM,
    Start-VM, Stop-VM, Checkpoint-VM, Get-VMSnapshot, Restore-VMSnapshot, Remove-VMSnapshot, Get-VMHardDiskDrive
