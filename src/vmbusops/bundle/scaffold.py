"""``vmbusops bundle init``: a ready-to-build example bundle source.

It copies a file into each guest, runs a script that reports on it, and applies a DSC
configuration (one MOF document using a tiny custom resource module shipped in the bundle) on the
simulated lab's VMs web01, web02 and db01 with the credential reference ``lab-admin``.
"""

from __future__ import annotations

from pathlib import Path

from vmbusops.bundle.errors import BundleSourceError

BUNDLE_TOML = """\
# A vmbusops job bundle source. Build it, sign it, verify it:
#   vmbusops bundle build . -o demo.vmb
#   vmbusops bundle sign demo.vmb --key ~/.../keys/NAME.key
#   vmbusops bundle verify demo.vmb
name = "lab-demo"
version = 1                      # only goes up for a given name
expires = "7d"                   # from build time, or an RFC 3339 date-time
credential = "lab-admin"         # a name in the host's credential store, never a secret

[targets]
vms = ["web01", "web02", "db01"] # names or globs ("web*"); optional when groups or tags are given
# groups = ["frontend"]          # optional: narrow to VMs in these Hyper-V VM groups (Get-VMGroup)
# tags = ["patch-tuesday"]       # optional: narrow to VMs whose Notes have a line "tags: patch-tuesday"

[execution]
max_concurrency = "50%"          # a count or a percentage of targets
max_errors = 1                   # stop starting new targets after this many failed
target_timeout = "30m"
delivery_timeout = "2h"
resume = "resume"                # resume | restart | abandon

# [guard]                        # optional: steps that say guard = "checkpoint" run under a checkpoint
# all_steps = false              # true: the whole run is one guarded span
# checkpoint = "production"      # production | production-or-standard
# min_free_gb = 10               # free space the VM's disk and checkpoint volumes must have first
# health = { inline = "Get-Service W3SVC | Out-Null", timeout = "5m" }  # or { dsc = true }
#                                # (the signer's trust scope needs checkpoints = true)

# [schedule]                     # optional: run again under a maintenance window
# cron = "0 2 * * 6"
# window = "4h"
# cutoff = "30m"
# jitter = "5m"
# missed = "skip"                # skip | run-once

[[steps]]
name = "copy-motd"
kind = "copy"
source = "files/motd.txt"
destination = 'C:\\ProgramData\\vmbusops\\motd.txt'
overwrite = true
idempotent = true

[[steps]]
name = "report"
kind = "script"
file = "scripts/report.ps1"
arguments = ['C:\\ProgramData\\vmbusops\\motd.txt']
timeout = "5m"
retry = { attempts = 3, backoff = "10s" }
idempotent = true

[[steps]]
name = "configure"
kind = "dsc"
# guard = "checkpoint"           # restore the VM if this step or the [guard] health check fails
mofs = ["dsc/localhost.mof"]
modules = ["dsc/modules/VmbusOpsDemo"]
mode = "apply"                   # apply | test
allow_reboot = false
timeout = "15m"
idempotent = true
"""

MOTD = "This machine is managed by vmbusops over the VMBus.\r\n"

# Plain statements only, so that the example runs unchanged on the simulated host, whose guests
# speak a documented subset of PowerShell (no param() attributes, no if/else); on a real guest it
# runs the same. The path arrives as the step's first argument.
REPORT_PS1 = """\
$Path = $args[0]
Write-Verbose "checking $Path"
Test-Path -Path $Path
Get-FileHash -Path $Path -Algorithm SHA256
Get-Content -Path $Path
"""

LOCALHOST_MOF = """\
/*
@TargetNode='localhost'
@GeneratedBy=vmbusops
*/

instance of VmbusOpsDemo_File as $VmbusOpsDemo_File1ref
{
ResourceID = "[VmbusOpsDemoFile]Banner";
 Path = "C:\\\\ProgramData\\\\vmbusops\\\\banner.txt";
 Contents = "Configured by vmbusops";
 Ensure = "Present";
 SourceInfo = "VmbusOpsDemo::4::5::VmbusOpsDemoFile";
 ModuleName = "VmbusOpsDemo";
 ModuleVersion = "1.0.0";
 ConfigurationName = "VmbusOpsDemo";
};

instance of OMI_ConfigurationDocument
{
 Version="2.0.0";
 MinimumCompatibleVersion = "1.0.0";
 CompatibleVersionAdditionalProperties= {"Omi_BaseResource:ConfigurationName"};
 Author="vmbusops";
 Name="VmbusOpsDemo";
};
"""

MODULE_PSD1 = """\
@{
    RootModule           = ''
    ModuleVersion        = '1.0.0'
    GUID                 = '6f0c2b8e-8d2a-4c55-9a39-3f0d5d2b7a11'
    Author               = 'vmbusops'
    Description          = 'A tiny DSC resource module shipped inside a vmbusops bundle.'
    PowerShellVersion    = '5.1'
    DscResourcesToExport = @('VmbusOpsDemoFile')
}
"""

RESOURCE_SCHEMA = """\
[ClassVersion("1.0.0"), FriendlyName("VmbusOpsDemoFile")]
class VmbusOpsDemo_File : OMI_BaseResource
{
    [Key] String Path;
    [Write] String Contents;
    [Write, ValueMap{"Present","Absent"}, Values{"Present","Absent"}] String Ensure;
};
"""

RESOURCE_PSM1 = """\
function Get-TargetResource {
    param([Parameter(Mandatory)][string]$Path)
    $present = Test-Path -Path $Path
    @{
        Path     = $Path
        Contents = if ($present) { Get-Content -Path $Path -Raw } else { $null }
        Ensure   = if ($present) { 'Present' } else { 'Absent' }
    }
}

function Test-TargetResource {
    param(
        [Parameter(Mandatory)][string]$Path,
        [string]$Contents,
        [ValidateSet('Present', 'Absent')][string]$Ensure = 'Present'
    )
    $present = Test-Path -Path $Path
    if ($Ensure -eq 'Absent') { return -not $present }
    $present -and ((Get-Content -Path $Path -Raw) -eq $Contents)
}

function Set-TargetResource {
    param(
        [Parameter(Mandatory)][string]$Path,
        [string]$Contents,
        [ValidateSet('Present', 'Absent')][string]$Ensure = 'Present'
    )
    if ($Ensure -eq 'Absent') {
        Remove-Item -Path $Path -Force
    } else {
        Write-Verbose "writing $Path"
        Set-Content -Path $Path -Value $Contents
    }
}

Export-ModuleMember -Function *-TargetResource
"""

EXAMPLE_FILES: dict[str, str] = {
    "bundle.toml": BUNDLE_TOML,
    "files/motd.txt": MOTD,
    "scripts/report.ps1": REPORT_PS1,
    "dsc/localhost.mof": LOCALHOST_MOF,
    "dsc/modules/VmbusOpsDemo/VmbusOpsDemo.psd1": MODULE_PSD1,
    "dsc/modules/VmbusOpsDemo/DSCResources/VmbusOpsDemo_File/VmbusOpsDemo_File.schema.mof": RESOURCE_SCHEMA,
    "dsc/modules/VmbusOpsDemo/DSCResources/VmbusOpsDemo_File/VmbusOpsDemo_File.psm1": RESOURCE_PSM1,
}


def write_example(directory: Path) -> list[Path]:
    """Write the example source into ``directory`` (new or empty); returns the files written."""
    if directory.exists() and any(directory.iterdir()):
        raise BundleSourceError(f"{directory} is not empty", hint="give a new or empty directory")
    written = []
    for rel, text in EXAMPLE_FILES.items():
        path = directory.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written
