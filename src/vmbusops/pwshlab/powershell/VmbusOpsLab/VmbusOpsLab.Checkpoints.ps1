# vmbusops lab: Hyper-V's checkpoint cmdlets, dot-sourced by VmbusOpsLab.psm1.
#
# Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot (and the Get-/Restore-/Remove-VMCheckpoint
# aliases), Get-VMHardDiskDrive, and the Storage module's Get-Volume, with the parameter sets of
# Microsoft's reference (Windows Server 2022): PowerShell's binder judges what the agent sends, and
# ShouldProcess asks for confirmation where Hyper-V does (Restore-VMSnapshot's ConfirmImpact is
# High). What each does to the lab is labctl's (vmbusops.sim.checkpoints): the simulator and
# pwsh-lab share the checkpoints in the state directory. The VM and VMSnapshot object parameter
# sets take a lab object's name.

function ConvertTo-LabSnapshot {
    param([hashtable] $Snapshot)
    $object = [pscustomobject][ordered]@{
        Name                  = $Snapshot['Name']
        VMName                = $Snapshot['VMName']
        VMId                  = [guid] $Snapshot['VMId']
        Id                    = [guid] $Snapshot['Id']
        SnapshotType          = $Snapshot['SnapshotType']
        State                 = $Snapshot['State']
        CreationTime          = [datetime]::Parse($Snapshot['CreationTime'], [cultureinfo]::InvariantCulture, 'RoundtripKind')
        ParentSnapshotId      = if ($Snapshot['ParentSnapshotId']) { [guid] $Snapshot['ParentSnapshotId'] } else { $null }
        ParentSnapshotName    = $Snapshot['ParentSnapshotName']
        ParentCheckpointId    = if ($Snapshot['ParentCheckpointId']) { [guid] $Snapshot['ParentCheckpointId'] } else { $null }
        ParentCheckpointName  = $Snapshot['ParentCheckpointName']
        IsAutomaticCheckpoint = [bool] $Snapshot['IsAutomaticCheckpoint']
        Path                  = $Snapshot['Path']
        ComputerName          = $Snapshot['ComputerName']
        Notes                 = $Snapshot['Notes']
    }
    $object.PSObject.TypeNames.Clear()
    foreach ($name in 'Microsoft.HyperV.PowerShell.VMSnapshot', 'Microsoft.HyperV.PowerShell.VirtualMachineBase',
        'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
        $object.PSObject.TypeNames.Add($name)
    }
    $object
}

function Write-LabObjects {
    # The answer's objects through a converter, then its warnings and errors.
    param([System.Management.Automation.PSCmdlet] $Cmdlet, [hashtable] $Answer, [scriptblock] $Convert)
    foreach ($o in @($Answer['objects'])) { if ($null -ne $o) { & $Convert $o } }
    Write-LabAnswer -Cmdlet $Cmdlet -Answer $Answer
}

function Checkpoint-VM {
    [CmdletBinding(DefaultParameterSetName = 'Name', SupportsShouldProcess = $true)]
    [OutputType('Microsoft.HyperV.PowerShell.VMSnapshot')]
    param(
        [Parameter(ParameterSetName = 'Name', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [Alias('VMName')]
        [ValidateNotNullOrEmpty()]
        [string[]] $Name,

        [Parameter(ParameterSetName = 'VMObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [ValidateNotNullOrEmpty()]
        [psobject[]] $VM,

        [Parameter(Position = 1)]
        [Alias('CheckpointName')]
        [string] $SnapshotName,

        [Parameter(ParameterSetName = 'Name')] [ValidateNotNullOrEmpty()] [string[]] $ComputerName,
        [Parameter(ParameterSetName = 'Name')] [pscredential[]] $Credential,
        [switch] $AsJob,
        [switch] $Passthru
    )
    process {
        $names = if ($PSCmdlet.ParameterSetName -eq 'VMObject') { @($VM | ForEach-Object { [string] $_.Name }) } else { @($Name) }
        if (-not $PSCmdlet.ShouldProcess(($names -join ', '), 'Checkpoint-VM')) { return }
        $request = @{ names = $names; passthru = $Passthru.IsPresent }
        if ($PSBoundParameters.ContainsKey('SnapshotName')) { $request['snapshot_name'] = $SnapshotName }
        Write-LabObjects $PSCmdlet (Invoke-LabControl -Operation 'checkpoint' -Request $request) { param($o) ConvertTo-LabSnapshot $o }
    }
}

function Get-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'VMName')]
    [OutputType('Microsoft.HyperV.PowerShell.VMSnapshot')]
    param(
        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [Parameter(ParameterSetName = 'VMObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [psobject[]] $VM,

        [Parameter(ParameterSetName = 'Id', Mandatory = $true, Position = 0, ValueFromPipeline = $true, ValueFromPipelineByPropertyName = $true)]
        [guid] $Id,

        [Parameter(ParameterSetName = 'VMName', Position = 1)]
        [Parameter(ParameterSetName = 'VMObject', Position = 1)]
        [string] $Name,

        [Parameter(ParameterSetName = 'VMName')]
        [Parameter(ParameterSetName = 'VMObject')]
        [Alias('VMRecoveryCheckpoint')]
        [ValidateSet('Standard', 'Recovery', 'Planned', 'Missing', 'Replica', 'AppConsistentReplica', 'SyncedReplica')]
        [string] $SnapshotType,

        [Parameter(ParameterSetName = 'VMName')] [Parameter(ParameterSetName = 'Id')] [ValidateNotNullOrEmpty()] [string[]] $ComputerName,
        [Parameter(ParameterSetName = 'VMName')] [Parameter(ParameterSetName = 'Id')] [pscredential[]] $Credential
    )
    process {
        $request = switch ($PSCmdlet.ParameterSetName) {
            'Id' { @{ id = [string] $Id } }
            'VMObject' { @{ vm_names = @($VM | ForEach-Object { [string] $_.Name }) } }
            default { @{ vm_names = @($VMName) } }
        }
        if ($PSBoundParameters.ContainsKey('Name')) { $request['name'] = $Name }
        if ($SnapshotType) { $request['snapshot_type'] = $SnapshotType }
        Write-LabObjects $PSCmdlet (Invoke-LabControl -Operation 'get-snapshot' -Request $request) { param($o) ConvertTo-LabSnapshot $o }
    }
}

function Restore-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'SnapshotName', SupportsShouldProcess = $true, ConfirmImpact = 'High')]
    [OutputType('Microsoft.HyperV.PowerShell.VMSnapshot')]
    param(
        [Parameter(ParameterSetName = 'SnapshotName', Mandatory = $true, Position = 0)]
        [Parameter(ParameterSetName = 'VM', Mandatory = $true, Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string] $Name,

        [Parameter(ParameterSetName = 'SnapshotName', Mandatory = $true, Position = 1)]
        [ValidateNotNullOrEmpty()]
        [string] $VMName,

        [Parameter(ParameterSetName = 'SnapshotObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VMSnapshot')]
        [Alias('VMCheckpoint')]
        [psobject] $VMSnapshot,

        [Parameter(ParameterSetName = 'VM', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [psobject] $VM,

        [Parameter(ParameterSetName = 'SnapshotName')] [ValidateNotNullOrEmpty()] [string[]] $ComputerName,
        [Parameter(ParameterSetName = 'SnapshotName')] [pscredential[]] $Credential,
        [switch] $AsJob,
        [switch] $Passthru
    )
    process {
        switch ($PSCmdlet.ParameterSetName) {
            'SnapshotObject' { $target = [string] $VMSnapshot.VMName; $checkpoint = [string] $VMSnapshot.Name }
            'VM' { $target = [string] $VM.Name; $checkpoint = $Name }
            default { $target = $VMName; $checkpoint = $Name }
        }
        # A compiled cmdlet's ShouldProcess that fails (the client's host cannot answer) ends it;
        # in a function the failed method call would only be a statement's error.
        try { $confirmed = $PSCmdlet.ShouldProcess($checkpoint, "Restore-VMSnapshot will restore checkpoint `"$checkpoint`".") }
        catch { $PSCmdlet.ThrowTerminatingError($_) }
        if (-not $confirmed) { return }
        $request = @{ vm_names = @($target); name = $checkpoint; passthru = $Passthru.IsPresent }
        Write-LabObjects $PSCmdlet (Invoke-LabControl -Operation 'restore-snapshot' -Request $request) { param($o) ConvertTo-LabSnapshot $o }
    }
}

function Remove-VMSnapshot {
    [CmdletBinding(DefaultParameterSetName = 'SnapshotName', SupportsShouldProcess = $true)]
    [OutputType('Microsoft.HyperV.PowerShell.VirtualMachine')]
    param(
        [Parameter(ParameterSetName = 'SnapshotName', Mandatory = $true, Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [Parameter(ParameterSetName = 'VMObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [psobject[]] $VM,

        [Parameter(ParameterSetName = 'SnapshotObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VMSnapshot')]
        [Alias('VMCheckpoint')]
        [psobject[]] $VMSnapshot,

        [Parameter(ParameterSetName = 'SnapshotName', Position = 1, ValueFromPipeline = $true)]
        [Parameter(ParameterSetName = 'VMObject', Position = 1, ValueFromPipeline = $true)]
        [string[]] $Name,

        [Alias('IncludeAllChildCheckpoints')]
        [switch] $IncludeAllChildSnapshots,

        [Parameter(ParameterSetName = 'SnapshotName')] [ValidateNotNullOrEmpty()] [string[]] $ComputerName,
        [Parameter(ParameterSetName = 'SnapshotName')] [pscredential[]] $Credential,
        [switch] $AsJob,
        [switch] $Passthru
    )
    process {
        switch ($PSCmdlet.ParameterSetName) {
            'SnapshotObject' { $targets = @($VMSnapshot | ForEach-Object { [string] $_.VMName }); $names = @($VMSnapshot | ForEach-Object { [string] $_.Name }) }
            'VMObject' { $targets = @($VM | ForEach-Object { [string] $_.Name }); $names = @($Name) }
            default { $targets = @($VMName); $names = @($Name) }
        }
        if (-not $PSCmdlet.ShouldProcess((@($names) -join ', '), 'Remove-VMSnapshot')) { return }
        $request = @{ vm_names = $targets; children = $IncludeAllChildSnapshots.IsPresent }
        if ($null -ne $names -and @($names | Where-Object { $null -ne $_ }).Count) { $request['names'] = @($names) }
        Write-LabAnswer -Cmdlet $PSCmdlet -Answer (Invoke-LabControl -Operation 'remove-snapshot' -Request $request)
        if ($Passthru) { Get-LabVMByName -Cmdlet $PSCmdlet -Name $targets }
    }
}

function Get-VMHardDiskDrive {
    [CmdletBinding(DefaultParameterSetName = 'VMName')]
    [OutputType('Microsoft.HyperV.PowerShell.HardDiskDrive')]
    param(
        [Parameter(ParameterSetName = 'VMName', Mandatory = $true, Position = 0)]
        [ValidateNotNullOrEmpty()]
        [string[]] $VMName,

        [Parameter(ParameterSetName = 'VMObject', Mandatory = $true, Position = 0, ValueFromPipeline = $true)]
        [PSTypeName('Microsoft.HyperV.PowerShell.VirtualMachine')]
        [psobject[]] $VM,

        [ValidateSet('IDE', 'SCSI', 'PMEM', 'Floppy')] [string] $ControllerType,
        [int] $ControllerNumber,
        [int] $ControllerLocation,
        [Parameter(ParameterSetName = 'VMName')] [ValidateNotNullOrEmpty()] [string[]] $ComputerName,
        [Parameter(ParameterSetName = 'VMName')] [pscredential[]] $Credential
    )
    process {
        $names = if ($PSCmdlet.ParameterSetName -eq 'VMObject') { @($VM | ForEach-Object { [string] $_.Name }) } else { @($VMName) }
        Write-LabObjects $PSCmdlet (Invoke-LabControl -Operation 'get-hard-disk' -Request @{ vm_names = $names }) {
            param($o)
            $drive = [pscustomobject][ordered]@{
                VMName = $o['VMName']; VMId = [guid] $o['VMId']; Name = 'Hard Drive on SCSI controller number 0 at location 0'
                ControllerType = 'SCSI'; ControllerNumber = 0; ControllerLocation = 0; Path = $o['Path']; ComputerName = $o['ComputerName']
            }
            $drive.PSObject.TypeNames.Clear()
            foreach ($name in 'Microsoft.HyperV.PowerShell.HardDiskDrive', 'Microsoft.HyperV.PowerShell.Drive',
                'Microsoft.HyperV.PowerShell.VirtualizationObject', 'System.Object') {
                $drive.PSObject.TypeNames.Add($name)
            }
            $drive
        }
    }
}

function Get-Volume {
    # The Storage module's CDXML function; the lab answers -FilePath (the volume of a VM's folder).
    [CmdletBinding(DefaultParameterSetName = 'ByDriveLetter')]
    [OutputType('Microsoft.Management.Infrastructure.CimInstance#ROOT/Microsoft/Windows/Storage/MSFT_Volume')]
    param(
        [Parameter(ParameterSetName = 'ByDriveLetter', Position = 0, ValueFromPipelineByPropertyName = $true)] [char[]] $DriveLetter,
        [Parameter(ParameterSetName = 'ById', ValueFromPipelineByPropertyName = $true)] [Alias('Id')] [string[]] $ObjectId,
        [Parameter(ParameterSetName = 'ByUniqueId', ValueFromPipelineByPropertyName = $true)] [string[]] $UniqueId,
        [Parameter(ParameterSetName = 'ByPaths', ValueFromPipelineByPropertyName = $true)] [string[]] $Path,
        [Parameter(ParameterSetName = 'ByLabel', ValueFromPipelineByPropertyName = $true)] [string[]] $FileSystemLabel,
        [Parameter(ParameterSetName = 'ByFilePath', ValueFromPipelineByPropertyName = $true)] [Alias('FullName')] [string] $FilePath,
        [Alias('Session')] [object[]] $CimSession,
        [int] $ThrottleLimit,
        [switch] $AsJob
    )
    process {
        if ($PSCmdlet.ParameterSetName -ne 'ByFilePath') {
            throw 'vmbusops lab: Get-Volume answers only -FilePath in a lab'
        }
        Write-LabObjects $PSCmdlet (Invoke-LabControl -Operation 'get-volume' -Request @{ file_path = $FilePath }) {
            param($o)
            $volume = [pscustomobject]$o
            $volume.PSObject.TypeNames.Clear()
            foreach ($name in 'Microsoft.Management.Infrastructure.CimInstance#ROOT/Microsoft/Windows/Storage/MSFT_Volume',
                'Microsoft.Management.Infrastructure.CimInstance#MSFT_Volume', 'Microsoft.Management.Infrastructure.CimInstance', 'System.Object') {
                $volume.PSObject.TypeNames.Add($name)
            }
            $volume
        }
    }
}

Set-Alias -Name Get-VMCheckpoint -Value Get-VMSnapshot
Set-Alias -Name Restore-VMCheckpoint -Value Restore-VMSnapshot
Set-Alias -Name Remove-VMCheckpoint -Value Remove-VMSnapshot
