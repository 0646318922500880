<#
    A stand-in for the Storage module where there is none (PowerShell 7 on Linux): Get-Volume with
    the parameter sets the vmbusops role restricts (the real one is a CDXML function, as this is a
    function). Each call is recorded as the Hyper-V stand-in records its calls.
#>

function Get-Volume {
    [CmdletBinding(DefaultParameterSetName = 'ByDriveLetter')]
    param(
        [Parameter(Position = 0, ParameterSetName = 'ByDriveLetter')] [char[]] $DriveLetter,
        [Parameter(ParameterSetName = 'ByPaths')] [string[]] $Path,
        [Parameter(ParameterSetName = 'ByLabel')] [string[]] $FileSystemLabel,
        [Parameter(ParameterSetName = 'ByFilePath')] [Alias('FullName')] [string] $FilePath,
        [switch] $AsJob
    )
    $calls = [System.AppDomain]::CurrentDomain.GetData('VmbusOps.HyperVCalls')
    if ($null -ne $calls) { $calls.Add([pscustomobject]@{ Command = 'Get-Volume'; Bound = @{} + $PSBoundParameters }) }
}

Export-ModuleMember -Function Get-Volume
