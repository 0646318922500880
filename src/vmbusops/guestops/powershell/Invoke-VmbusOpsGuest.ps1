# vmbusops' guest invoker: runs one run's steps in one guest through PowerShell Direct.
#
# The agent sends this file's text unchanged as a PSRP script command, or, on a JEA endpoint,
# calls the role capability's function Invoke-VmbusOpsGuest whose body is this text. Everything a
# bundle author or an operator wrote arrives as a parameter value (-Script, -ArgumentList), never
# as script text: the script block given to Invoke-Command is created here, on the host, from the
# fixed guest wrapper below, because PowerShell never binds a string to a [scriptblock] parameter
# and deserializes a sent ScriptBlock as a string.
#
# In the guest, the wrapper writes each step to its own .ps1 file under $env:TEMP\vmbusops and
# calls it with `&`: only a script file makes `exit N` end the step and set $LASTEXITCODE (in a
# script block, `exit` closes the whole PowerShell Direct session and the code is lost). Around
# each step it writes an information record tagged 'vmbusops.step':
#     vmbusops-step begin <index>
#     vmbusops-step end <index> exit=<code> errors=<count>
# <code> is the step's `exit N`, else its last native command's exit code, else 0; a terminating
# error (a throw, or an error under the step's own $ErrorActionPreference = 'Stop') is reported as
# an error record and exit code 1, as `powershell.exe -File` reports it. <count> is how many
# PowerShell error records the step wrote (what $Error gained), not counting native commands'
# stderr lines (NativeCommandError*): the wrapper never sets $ErrorActionPreference, so on Windows
# PowerShell 5.1, where remoting turns stderr lines into error records, a tool that writes to
# stderr and exits 0 does not fail its step. A step fails when its code is not 0 or its count is
# not 0; a failed step ends the batch and the next step does not start. Step files are removed
# when their step ends, stopped or not.
[CmdletBinding(DefaultParameterSetName = 'VMName')]
param(
    [Parameter(Mandatory = $true, ParameterSetName = 'VMName')]
    [string] $VMName,

    [Parameter(Mandatory = $true, ParameterSetName = 'VMId')]
    [guid] $VMId,

    [Parameter(Mandatory = $true)]
    [pscredential] $Credential,

    [Parameter(Mandatory = $true)]
    [AllowEmptyString()]
    [string[]] $Script,

    [Parameter(Mandatory = $true)]
    [int[]] $StepIndex,

    [Parameter(Mandatory = $true)]
    [ValidatePattern('^[A-Za-z0-9-]{1,64}$')]
    [string] $RunId,

    [object[]] $ArgumentList = @()
)

if (@($Script).Count -ne @($StepIndex).Count) {
    throw "vmbusops: -Script has $(@($Script).Count) steps but -StepIndex $(@($StepIndex).Count)"
}

$guest = @'
param([string] $RunId, $StepIndex, $Script, $StepArguments)
try {
    Set-ExecutionPolicy -Scope Process -ExecutionPolicy Bypass -Force -ErrorAction Stop
} catch {
    # Group Policy overrides the process scope: its policy decides whether step files may run.
}
$folder = Join-Path $env:TEMP 'vmbusops'
$null = New-Item -ItemType Directory -Path $folder -Force
$arguments = @($StepArguments)
$indices = @($StepIndex)
$texts = @($Script)
for ($i = 0; $i -lt $texts.Count; $i++) {
    $index = $indices[$i]
    $path = Join-Path $folder ('{0}-{1}.ps1' -f $RunId, $index)
    Write-Information -MessageData "vmbusops-step begin $index" -Tags 'vmbusops.step'
    $code = 0
    $thrown = $null
    $Error.Clear()
    try {
        Set-Content -LiteralPath $path -Value $texts[$i] -Encoding UTF8 -ErrorAction Stop
        $global:LASTEXITCODE = 0
        # A loop of one: a stray `break` or `continue` in the step ends the step, not this loop.
        do { & $path @arguments } while ($false)
        $code = $global:LASTEXITCODE
    } catch {
        $code = 1
        $thrown = $_
    } finally {
        Remove-Item -LiteralPath $path -Force -ErrorAction Ignore
    }
    if ($null -eq $code) { $code = 0 }
    $written = @($Error | Where-Object {
        $_ -is [System.Management.Automation.ErrorRecord] -and
        $_.FullyQualifiedErrorId -notlike 'NativeCommandError*'
    }).Count
    if ($null -ne $thrown) {
        # Reported, not rethrown: Invoke-Command makes an error thrown by `throw` terminating on
        # the host's side, which would end the whole invocation instead of this step.
        if ($thrown.Exception -is [System.Management.Automation.RuntimeException]) {
            $thrown.Exception.WasThrownFromThrowStatement = $false
        }
        Write-Error -ErrorRecord $thrown
    }
    Write-Information -MessageData "vmbusops-step end $index exit=$code errors=$written" -Tags 'vmbusops.step'
    if ($code -ne 0 -or $written -ne 0) { break }
}
'@

$target = @{}
if ($PSCmdlet.ParameterSetName -eq 'VMId') { $target['VMId'] = $VMId } else { $target['VMName'] = $VMName }
Invoke-Command @target -Credential $Credential -ScriptBlock ([scriptblock]::Create($guest)) `
    -ArgumentList $RunId, $StepIndex, $Script, $ArgumentList
