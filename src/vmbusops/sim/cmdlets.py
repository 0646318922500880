"""Every command the simulator answers, in one place: the host's and the guest's.

Two namespaces, as on a real Hyper-V host:

- :data:`HOST_CMDLETS`: what the simulated host runs when a PSRP client sends a command (Hyper-V's
  cmdlets, the staging helpers a JEA role defines, Get-FileHash and Get-Command). The guest
  invoker, the one script the host accepts, is not a cmdlet: ``vmbusops.sim.hyperv`` recognises it.
- :data:`GUEST`: what a script block can call inside a simulated guest (:class:`GuestCatalog`):
  its cmdlets and their aliases, the cmdlets a Windows guest has that the simulator does not run,
  the exact scripts it runs as simulated equivalents, and the scheduled-task scripts and built-in
  tasks its Task Scheduler knows.

Nothing registers itself: a command the simulator answers is listed here or it does not exist.
Names are written as PowerShell spells them and looked up case-insensitively.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from vmbusops.sim import (
    checkpoint_cmdlets,
    dsc,
    group_cmdlets,
    guest_cmdlets,
    guest_files,
    hostfiles,
    scheduled_tasks,
    vm_cmdlets,
    wua,
)
from vmbusops.sim.guest_stage import Stage
from vmbusops.sim.guest_values import Emit
from vmbusops.sim.host_command import HostCmdlet
from vmbusops.sim.scheduled_tasks import BuiltInTaskStart, SimTask, TaskScript

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession

#: A script the guest runs natively instead of interpreting it: (session, emit) -> exit code.
ScriptEquivalent = Callable[["GuestSession", Emit], Awaitable[int]]

V = TypeVar("V")


def _folded(table: Mapping[str, V]) -> Mapping[str, V]:
    return {name.casefold(): value for name, value in table.items()}


# ---- the host --------------------------------------------------------------------------------

HOST_CMDLETS: Final[Mapping[str, HostCmdlet]] = _folded(
    {
        # Hyper-V
        "Get-VM": vm_cmdlets.GET_VM,
        "Get-VMIntegrationService": vm_cmdlets.GET_VM_INTEGRATION_SERVICE,
        "Get-VMGroup": group_cmdlets.GET_VM_GROUP,
        "Enable-VMIntegrationService": vm_cmdlets.ENABLE_VM_INTEGRATION_SERVICE,
        "Disable-VMIntegrationService": vm_cmdlets.DISABLE_VM_INTEGRATION_SERVICE,
        "Copy-VMFile": vm_cmdlets.COPY_VM_FILE,
        "Restart-VM": vm_cmdlets.RESTART_VM,
        "Start-VM": vm_cmdlets.START_VM,
        "Stop-VM": vm_cmdlets.STOP_VM,
        # Microsoft.PowerShell.Core
        "Invoke-Command": vm_cmdlets.INVOKE_COMMAND,
        "Checkpoint-VM": checkpoint_cmdlets.CHECKPOINT_VM,
        "Get-VMSnapshot": checkpoint_cmdlets.GET_VM_SNAPSHOT,
        "Restore-VMSnapshot": checkpoint_cmdlets.RESTORE_VM_SNAPSHOT,
        "Remove-VMSnapshot": checkpoint_cmdlets.REMOVE_VM_SNAPSHOT,
        "Get-VMHardDiskDrive": checkpoint_cmdlets.GET_VM_HARD_DISK_DRIVE,
        "Get-Volume": checkpoint_cmdlets.GET_VOLUME,
        "Get-Command": hostfiles.GET_COMMAND,
        # Microsoft.PowerShell.Utility
        "Get-FileHash": hostfiles.GET_FILE_HASH,
        # functions of the endpoint's JEA role, for WinRM staging
        "Write-VmbusOpsStagedFile": hostfiles.WRITE_STAGED_FILE,
        "Remove-VmbusOpsStagingFolder": hostfiles.REMOVE_STAGING_FOLDER,
    }
)



# ---- the guest -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuestCatalog:
    """What a guest session can run, every table keyed by folded name or by SHA-256 of a text."""

    #: Cmdlets and aliases -> the stage that runs them.
    cmdlets: Mapping[str, type[Stage]]
    #: Cmdlets every Windows guest has that the simulated guest does not run: refused as
    #: unsupported, never reported as unknown.
    not_simulated: frozenset[str]
    #: Exact scripts run as a simulated equivalent instead of interpreted, by the SHA-256 of their
    #: UTF-8 text.
    scripts: Mapping[str, ScriptEquivalent]
    #: Scripts a scheduled task can run (``powershell.exe -File``), by the SHA-256 of their text as
    #: ``Set-Content -Encoding UTF8`` leaves it (``vmbusops.sim.scheduled_tasks.script_text``).
    task_scripts: Mapping[str, TaskScript]
    #: Tasks Windows ships, present in every guest from the start, by folded path + name.
    built_in_tasks: Mapping[str, tuple[SimTask, BuiltInTaskStart]]


GUEST_CMDLETS: Final[Mapping[str, type[Stage]]] = _folded(
    {
        # Microsoft.PowerShell.Utility and Core
        "Write-Output": guest_cmdlets.WriteOutput,
        "Write-Verbose": guest_cmdlets.WriteVerbose,
        "Write-Warning": guest_cmdlets.WriteWarning,
        "Write-Debug": guest_cmdlets.WriteDebug,
        "Write-Error": guest_cmdlets.WriteError,
        "Write-Information": guest_cmdlets.WriteInformation,
        "Write-Host": guest_cmdlets.WriteHost,
        "Write-Progress": guest_cmdlets.WriteProgress,
        "Start-Sleep": guest_cmdlets.StartSleep,
        "Get-Date": guest_cmdlets.GetDate,
        "ForEach-Object": guest_cmdlets.ForEachObject,
        # Microsoft.PowerShell.Management and Security
        "Get-Service": guest_cmdlets.GetService,
        "Get-Process": guest_cmdlets.GetProcess,
        "Get-HotFix": guest_cmdlets.GetHotFix,
        "Restart-Computer": guest_cmdlets.RestartComputer,
        "Set-ExecutionPolicy": guest_cmdlets.SetExecutionPolicy,
        "Test-Path": guest_files.TestPath,
        "Get-Content": guest_files.GetContent,
        "Set-Content": guest_files.SetContent,
        "Get-FileHash": guest_files.GetFileHash,
        "Get-ChildItem": guest_files.GetChildItem,
        # native commands
        "hostname": guest_cmdlets.Hostname,
        "hostname.exe": guest_cmdlets.Hostname,
        "cmd.exe": guest_cmdlets.CmdExe,
        "cmd": guest_cmdlets.CmdExe,
        # PSDesiredStateConfiguration (the LCM's cmdlets)
        "Start-DscConfiguration": dsc.StartDscConfiguration,
        "Test-DscConfiguration": dsc.TestDscConfiguration,
        "Get-DscConfigurationStatus": dsc.GetDscConfigurationStatus,
        "Set-DscLocalConfigurationManager": dsc.SetDscLocalConfigurationManager,
        "Get-DscLocalConfigurationManager": dsc.GetDscLocalConfigurationManager,
        # ScheduledTasks
        "New-ScheduledTaskAction": scheduled_tasks.NewScheduledTaskAction,
        "New-ScheduledTaskPrincipal": scheduled_tasks.NewScheduledTaskPrincipal,
        "Register-ScheduledTask": scheduled_tasks.RegisterScheduledTask,
        "Get-ScheduledTask": scheduled_tasks.GetScheduledTask,
        "Get-ScheduledTaskInfo": scheduled_tasks.GetScheduledTaskInfo,
        "Start-ScheduledTask": scheduled_tasks.StartScheduledTask,
        "Unregister-ScheduledTask": scheduled_tasks.UnregisterScheduledTask,
        # aliases
        "%": guest_cmdlets.ForEachObject,
        "foreach": guest_cmdlets.ForEachObject,
        "echo": guest_cmdlets.WriteOutput,
        "write": guest_cmdlets.WriteOutput,
        "sleep": guest_cmdlets.StartSleep,
        "gsv": guest_cmdlets.GetService,
        "gps": guest_cmdlets.GetProcess,
        "ps": guest_cmdlets.GetProcess,
        "gc": guest_files.GetContent,
        "cat": guest_files.GetContent,
        "type": guest_files.GetContent,
        "gci": guest_files.GetChildItem,
        "dir": guest_files.GetChildItem,
        "ls": guest_files.GetChildItem,
    }
)

# Read-Host and Get-Credential would prompt; the agent answers any prompt with an error, which only
# a real host or pwsh-lab can show. New-Object stays unknown: the Windows Update scripts' COM
# objects are what the simulator recognises instead (GUEST_SCRIPTS).
GUEST_CMDLETS_NOT_SIMULATED: Final = frozenset(
    name.casefold()
    for name in (
        "Read-Host", "Get-Credential", "Get-Item", "Get-ItemProperty", "Set-ItemProperty", "New-Item",
        "Remove-Item", "Copy-Item", "Move-Item", "Rename-Item", "Select-Object", "Where-Object",
        "Sort-Object", "Measure-Object", "Out-File", "Out-Null", "Out-String", "Add-Content", "Get-Command",
        "Get-Module", "Import-Module", "Invoke-WebRequest", "Invoke-RestMethod", "Start-Process",
        "Stop-Process", "Start-Service", "Stop-Service", "Restart-Service", "Set-Service", "Get-WmiObject",
        "Get-CimInstance", "Get-NetIPAddress", "Get-WindowsFeature", "Install-WindowsFeature",
        "ConvertTo-Json", "ConvertFrom-Json", "Test-Connection", "Get-EventLog",
        "Get-WinEvent", "Get-Acl", "Set-Acl", "Get-Member", "Format-Table", "Format-List",
    )
)  # fmt: skip

#: The patch step's Windows Update scripts (``vmbusops.sim.wua``), run in a PowerShell Direct session.
GUEST_SCRIPTS: Final[Mapping[str, ScriptEquivalent]] = {
    wua.PATCH_SCRIPT_SHA256: wua.run_patch_script,
    wua.INSTALL_SCRIPT_SHA256: wua.run_install_in_session,
}

#: The patch step's install script, run by the SYSTEM task the patch script registers.
TASK_SCRIPTS: Final[Mapping[str, TaskScript]] = {
    wua.INSTALL_SCRIPT_SHA256: wua.run_install_as_task,
}

#: DSC's Consistency task, which starts an LCM consistency check.
BUILT_IN_TASKS: Final[Mapping[str, tuple[SimTask, BuiltInTaskStart]]] = {
    dsc.CONSISTENCY_TASK.key: (dsc.CONSISTENCY_TASK, dsc.start_consistency_check),
}

#: Everything a simulated guest session runs (``GuestSession``'s default catalog).
GUEST: Final = GuestCatalog(
    cmdlets=GUEST_CMDLETS,
    not_simulated=GUEST_CMDLETS_NOT_SIMULATED,
    scripts=GUEST_SCRIPTS,
    task_scripts=TASK_SCRIPTS,
    built_in_tasks=BUILT_IN_TASKS,
)

__all__ = [
    "BUILT_IN_TASKS",
    "GUEST",
    "GUEST_CMDLETS",
    "GUEST_CMDLETS_NOT_SIMULATED",
    "GUEST_SCRIPTS",
    "HOST_CMDLETS",
    "TASK_SCRIPTS",
    "GuestCatalog",
    "ScriptEquivalent",
]
