#Requires -RunAsAdministrator
#Requires -Version 5.1
<#
.SYNOPSIS
    Install the vmbusops host agent as a Windows service on a Hyper-V host.
.DESCRIPTION
    Creates a Python virtual environment under -InstallDir, installs vmbusops from -Wheel,
    creates the service account's state directory (%ProgramData%\vmbusops, owner-only) and the
    staging folder for remote agents (%ProgramData%\vmbusops\staging, writable only through the
    local group vmbusops-staging, which the JEA endpoint's virtual account joins),
    writes config.toml ([agent] listen defaults to 127.0.0.1:8421), and registers the service
    with WinSW (vmbusops-agent.xml beside this script). The service account must be a member of
    "Hyper-V Administrators"; it is asked for once and stored by the Service Control Manager.
.EXAMPLE
    .\install.ps1 -Wheel .\vmbusops-0.1.0-py3-none-any.whl -WinSW .\WinSW-x64.exe -Listen 0.0.0.0:8421 `
        -TlsCert C:\certs\agent.pem -TlsKey C:\certs\agent.key
#>
[CmdletBinding(SupportsShouldProcess)]
param(
    [Parameter(Mandatory)] [string] $Wheel,
    [Parameter(Mandatory)] [string] $WinSW,
    [string] $InstallDir = "$env:ProgramFiles\vmbusops",
    [string] $Python = 'py.exe',
    [string] $Listen = '127.0.0.1:8421',
    [string] $TlsCert,
    [string] $TlsKey,
    [string] $ClientCA,
    [pscredential] $ServiceAccount = (Get-Credential -Message 'Service account (member of Hyper-V Administrators)')
)
$ErrorActionPreference = 'Stop'

if (-not (Get-Command Get-VM -ErrorAction SilentlyContinue)) {
    throw 'The Hyper-V PowerShell module is missing: this is not a Hyper-V host (Install-WindowsFeature Hyper-V-PowerShell).'
}
if (($Listen -notmatch '^127\.0\.0\.1:') -and -not $TlsCert) {
    Write-Warning "Listening on $Listen without TLS: tokens would cross the network in clear text. Pass -TlsCert and -TlsKey."
}

$stateDir = Join-Path $env:ProgramData 'vmbusops'
New-Item -ItemType Directory -Force -Path $InstallDir, $stateDir, (Join-Path $stateDir 'logs') | Out-Null
# State directory: the service account and Administrators only.
$acl = New-Object System.Security.AccessControl.DirectorySecurity
$acl.SetAccessRuleProtection($true, $false)
foreach ($who in @('BUILTIN\Administrators', $ServiceAccount.UserName)) {
    $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($who, 'FullControl', 'ContainerInherit,ObjectInherit', 'None', 'Allow')
    $acl.AddAccessRule($rule)
}
Set-Acl -Path $stateDir -AclObject $acl

# Staging for remote agents (host_agent/README.md). Copy-VMFile reads from the host's disk, so a
# remote agent stages job files under this folder first. Over WinRM the JEA session runs as a
# virtual account whose only groups are VmbusOps.pssc's RunAsVirtualAccountGroups; over SSH it
# runs as its user. Both write through one local group, the only one besides SYSTEM and
# Administrators that this folder's ACL names: VmbusOps.pssc must list it (a test checks that).
$stagingGroup = 'vmbusops-staging'
$stagingDir = Join-Path $stateDir 'staging'

function Get-VmbusOpsStagingAccess {
    # Who may do what in the staging folder, as Set-Acl gets it below. SYSTEM and Administrators
    # by SID: their names are translated on localized Windows.
    param([Parameter(Mandatory)] [string] $Group)
    @(
        [pscustomobject]@{ Identity = 'S-1-5-18'; Rights = 'FullControl' }
        [pscustomobject]@{ Identity = 'S-1-5-32-544'; Rights = 'FullControl' }
        [pscustomobject]@{ Identity = $Group; Rights = 'Modify' }
    )
}

if ($PSCmdlet.ShouldProcess($stagingDir, "create the staging folder, writable through the local group $stagingGroup")) {
    if (-not (Get-LocalGroup -Name $stagingGroup -ErrorAction SilentlyContinue)) {
        $null = New-LocalGroup -Name $stagingGroup -Description 'vmbusops: writes job files to the staging folder (JEA virtual accounts, the SSH agent user)'
    }
    $null = New-Item -ItemType Directory -Force -Path $stagingDir
    $acl = New-Object System.Security.AccessControl.DirectorySecurity
    $acl.SetAccessRuleProtection($true, $false)
    foreach ($grant in Get-VmbusOpsStagingAccess -Group $stagingGroup) {
        $who = if ($grant.Identity -like 'S-1-*') { [System.Security.Principal.SecurityIdentifier]$grant.Identity } else { [System.Security.Principal.NTAccount]$grant.Identity }
        $rule = New-Object System.Security.AccessControl.FileSystemAccessRule($who, $grant.Rights, 'ContainerInherit,ObjectInherit', 'None', 'Allow')
        $acl.AddAccessRule($rule)
    }
    Set-Acl -Path $stagingDir -AclObject $acl
}

if ($PSCmdlet.ShouldProcess($InstallDir, 'create the virtual environment and install vmbusops')) {
    & $Python -3.11 -m venv (Join-Path $InstallDir 'venv')
    & (Join-Path $InstallDir 'venv\Scripts\python.exe') -m pip install --upgrade $Wheel
    if ($LASTEXITCODE -ne 0) { throw "pip install failed ($LASTEXITCODE)" }
}

$config = @("[host]", "default = `"local`"", "", "[agent]", "listen = `"$Listen`"")
if ($TlsCert) { $config += "tls_cert = `"$($TlsCert -replace '\\', '/')`"", "tls_key = `"$($TlsKey -replace '\\', '/')`"" }
if ($ClientCA) { $config += "client_ca = `"$($ClientCA -replace '\\', '/')`"" }
$configPath = Join-Path $stateDir 'config.toml'
if (-not (Test-Path $configPath)) { Set-Content -Path $configPath -Value $config -Encoding ascii }

Copy-Item -Path $WinSW -Destination (Join-Path $InstallDir 'vmbusops-agent.exe') -Force
Copy-Item -Path (Join-Path $PSScriptRoot 'vmbusops-agent.xml') -Destination (Join-Path $InstallDir 'vmbusops-agent.xml') -Force

if ($PSCmdlet.ShouldProcess('vmbusops-agent', 'register and start the service')) {
    & (Join-Path $InstallDir 'vmbusops-agent.exe') install
    if ($LASTEXITCODE -ne 0) { throw "service registration failed ($LASTEXITCODE)" }
    # Run as the service account: the password goes to the Service Control Manager through CIM,
    # never on a command line. The account needs "Log on as a service" (secpol.msc or a GPO).
    $result = Get-CimInstance -ClassName Win32_Service -Filter "Name='vmbusops-agent'" |
        Invoke-CimMethod -MethodName Change -Arguments @{
            StartName     = $ServiceAccount.UserName
            StartPassword = $ServiceAccount.GetNetworkCredential().Password
        }
    if ($result.ReturnValue -ne 0) { throw "setting the service account failed (Win32_Service.Change returned $($result.ReturnValue))" }
    Start-Service -Name 'vmbusops-agent'
    $deadline = (Get-Date).AddSeconds(60)
    $port = ($Listen -split ':')[-1]
    $scheme = if ($TlsCert) { 'https' } else { 'http' }
    do {
        Start-Sleep -Seconds 1
        try { $health = Invoke-RestMethod -Uri "${scheme}://127.0.0.1:${port}/v1/health" -TimeoutSec 2 } catch { $health = $null }
    } while (-not $health -and (Get-Date) -lt $deadline)
    if (-not $health) { throw "the agent did not report ready within 60 s; see $stateDir\logs" }
}

Write-Host "vmbusops-agent installed. Create a token for your runbooks with:"
Write-Host "  `$env:VMBUSOPS_HOME = '$stateDir'; & '$InstallDir\venv\Scripts\vmbusops.exe' agent token create --name runbooks --scope submit,read,cancel --vm 'tenant-a-*'"
