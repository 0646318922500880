"""The error records a real Hyper-V host and Windows PowerShell 5.1 produce, as the simulator sends them.

Sources, so the texts can be checked and kept honest:

- PowerShell's ``RemotingErrorIdStrings.resx`` and ``InvokeCommandCommand`` (PowerShell Direct):
  ``InvalidVMNameNotSingle`` "The input VMName {0} does not resolve to a single virtual machine."
  and ``InvalidVMIdNotSingle`` are what ``Invoke-Command -VMName/-VMId`` writes (category
  InvalidArgument, ArgumentException). ``Enter-PSSession`` words the same case as "The input VMName
  parameter does not resolve to any virtual machine." (``InvalidVMNameNoVM``).
  ``InvalidVMState`` "The virtual machine {0} is not in running state." and
  ``InvalidCredential`` "The credential is invalid." come from the same file.
- Microsoft's PowerShell Direct troubleshooting page: "An error has occurred which Windows
  PowerShell cannot handle. A remote session might have ended." when the guest is not booted or
  the session dies.
- ``Microsoft.HyperV.PowerShell`` cmdlets: "Hyper-V was unable to find a virtual machine with
  name "X"." (``InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM``, InvalidArgument,
  VirtualizationException) and Copy-VMFile's "Failed to initiate copying files to the guest: ..."
  followed by the Win32 message and HRESULT (``OperationFailed,...CopyVMFile``). Hyper-V reports a
  disabled Guest Service Interface with the same 0x80070050 "The file exists." text as a real
  existing file, so a client must ask Get-VMIntegrationService to tell the two apart.
- Windows PowerShell 5.1's CommandNotFoundException and ParameterBindingException texts.
- PowerShell's ``RemotingErrorIdStrings`` (in the 7.6.9 ``System.Management.Automation.dll``):
  "A failure occurred while attempting to connect to the target virtual machine." and
  ``HyperVSocketTransportProcessEnded`` inside ``IPCServerProcessReportedError``.

Where the exact FullyQualifiedErrorId of a remote-session failure could not be confirmed from
source, the simulator uses ``PSSessionStateBroken`` (what Invoke-Command reports for sessions that
fail to open or break), category OpenError.
"""

from __future__ import annotations

import dataclasses
import hashlib

from vmbusops.sim.streams import SimError

HYPERV_EXCEPTION = "Microsoft.HyperV.PowerShell.VirtualizationException"
HYPERV_COMMANDS = "Microsoft.HyperV.PowerShell.Commands"
INVOKE_COMMAND_FQ = "Microsoft.PowerShell.Commands.InvokeCommandCommand"

REMOTE_SESSION_ENDED = (
    "An error has occurred which Windows PowerShell cannot handle. A remote session might have ended."
)
CREDENTIAL_INVALID = "The credential is invalid."
COPY_FAILED_PREFIX = "Failed to initiate copying files to the guest"


def _cmdlet_class(cmdlet: str) -> str:
    """``Copy-VMFile`` -> ``CopyVMFile``: how Hyper-V names its cmdlet classes in FQIDs."""
    return cmdlet.replace("-", "")


def vm_not_found(cmdlet: str, name: str) -> SimError:
    return SimError(
        message=f'Hyper-V was unable to find a virtual machine with name "{name}".',
        fqid=f"InvalidParameter,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="InvalidArgument",
        exception_type=HYPERV_EXCEPTION,
        target_name=name,
        target_object=name,
        activity=cmdlet,
    )


def vm_id_not_found(cmdlet: str, vm_id: str) -> SimError:
    return SimError(
        message=f'Hyper-V was unable to find a virtual machine with id "{vm_id}".',
        fqid=f"InvalidParameter,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="InvalidArgument",
        exception_type=HYPERV_EXCEPTION,
        target_name=vm_id,
        target_object=vm_id,
        activity=cmdlet,
    )


def vm_state_change_failed(cmdlet: str, name: str) -> SimError:
    return SimError(
        message=(
            f"'{name}' failed to change state.\n"
            "The operation cannot be performed while the object is in its current state."
        ),
        fqid=f"InvalidState,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="InvalidOperation",
        exception_type=HYPERV_EXCEPTION,
        target_name=name,
        activity=cmdlet,
    )


def integration_service_not_found(cmdlet: str, vm: str, service: str) -> SimError:
    return SimError(
        message=f"The integration service with name '{service}' was not found on virtual machine '{vm}'.",
        fqid=f"InvalidParameter,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="InvalidArgument",
        exception_type=HYPERV_EXCEPTION,
        target_name=service,
        activity=cmdlet,
    )


# Win32 texts for the HRESULTs Copy-VMFile reports.
FILE_EXISTS = "The file exists. (0x80070050)"
PATH_NOT_FOUND = "The system cannot find the path specified. (0x80070003)"
FILE_NOT_FOUND = "The system cannot find the file specified. (0x80070002)"
INVALID_STATE = (
    "The group or resource is not in the correct state to perform the requested operation. (0x8007139F)"
)


def copy_failed(vm: str, detail: str) -> SimError:
    return SimError(
        message=f"{COPY_FAILED_PREFIX}: {detail}",
        fqid=f"OperationFailed,{HYPERV_COMMANDS}.CopyVMFile",
        category="NotSpecified",
        exception_type=HYPERV_EXCEPTION,
        target_name=vm,
        activity="Copy-VMFile",
    )


def invoke_vm_name_not_found(name: str) -> SimError:
    return SimError(
        message=f"The input VMName {name} does not resolve to a single virtual machine.",
        fqid=f"InvalidVMNameNotSingle,{INVOKE_COMMAND_FQ}",
        category="InvalidArgument",
        exception_type="System.ArgumentException",
        activity="Invoke-Command",
    )


def invoke_vm_id_not_found(vm_id: str) -> SimError:
    return SimError(
        message=f"The input VMId {vm_id} does not resolve to a single virtual machine.",
        fqid=f"InvalidVMIdNotSingle,{INVOKE_COMMAND_FQ}",
        category="InvalidArgument",
        exception_type="System.ArgumentException",
        activity="Invoke-Command",
    )


def invoke_vm_not_running(name: str) -> SimError:
    return SimError(
        message=f"The virtual machine {name} is not in running state.",
        fqid=f"InvalidVMState,{INVOKE_COMMAND_FQ}",
        category="InvalidArgument",
        exception_type="System.ArgumentException",
        activity="Invoke-Command",
    )


def credential_invalid(vm: str) -> SimError:
    return SimError(
        message=CREDENTIAL_INVALID,
        fqid="PSSessionStateBroken",
        category="OpenError",
        exception_type="System.Management.Automation.Remoting.PSDirectException",
        target_name=vm,
        target_object=vm,
    )


def remote_session_ended(vm: str) -> SimError:
    """The guest is not booted yet, or the session broke under a running command (transient)."""
    return SimError(
        message=REMOTE_SESSION_ENDED,
        fqid="PSSessionStateBroken",
        category="OpenError",
        exception_type="System.Management.Automation.Remoting.PSRemotingTransportException",
        target_name=vm,
        target_object=vm,
    )


# PowerShell's RemotingErrorIdStrings: HyperVSocketTransportProcessEnded (its text carries the
# quotes) wrapped in IPCServerProcessReportedError, what the client side of a PowerShell Direct
# session raises when the guest's end of the Hyper-V socket goes away under a running command.
CONNECT_FAILED = "A failure occurred while attempting to connect to the target virtual machine."
SOCKET_PROCESS_ENDED = (
    'The background process reported an error with the following message: '
    '"The Hyper-V socket target process has ended.".'
)


def session_connect_failed(vm: str) -> SimError:
    """The PowerShell Direct session could not be opened (transient on a real host)."""
    return SimError(
        message=CONNECT_FAILED,
        fqid="PSSessionStateBroken",
        category="OpenError",
        exception_type="System.Management.Automation.Remoting.PSRemotingTransportException",
        target_name=vm,
        target_object=vm,
    )


def socket_process_ended(vm: str) -> SimError:
    """The Hyper-V socket's far end ended under a running command (transient)."""
    return SimError(
        message=SOCKET_PROCESS_ENDED,
        fqid="PSSessionStateBroken",
        category="OpenError",
        exception_type="System.Management.Automation.Remoting.PSRemotingTransportException",
        target_name=vm,
        target_object=vm,
    )


def host_down(host: str) -> SimError:
    """A command reached a fleet host the lab has failed (its process is about to exit)."""
    return SimError(
        message=f"The simulated Hyper-V host {host} is down (vmbusops lab fail-host).",
        fqid="HostDown",
        category="ResourceUnavailable",
        exception_type="System.Management.Automation.Remoting.PSRemotingTransportException",
        target_name=host,
    )


def command_not_found(name: str) -> SimError:
    return SimError(
        message=(
            f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, "
            "or operable program. Check the spelling of the name, or if a path was included, "
            "verify that the path is correct and try again."
        ),
        fqid="CommandNotFoundException",
        category="ObjectNotFound",
        exception_type="System.Management.Automation.CommandNotFoundException",
        target_name=name,
        target_object=name,
        hresult=-2146233087,
    )


def parameter_not_found(cmdlet_fq: str, name: str) -> SimError:
    return SimError(
        message=f"A parameter cannot be found that matches parameter name '{name}'.",
        fqid=f"NamedParameterNotFound,{cmdlet_fq}",
        category="InvalidArgument",
        exception_type="System.Management.Automation.ParameterBindingException",
    )


def with_activity(error: SimError, command: str) -> SimError:
    """The record as PowerShell completes it when ``command`` wrote it: the command is its activity."""
    if error.activity or not command:
        return error
    return dataclasses.replace(error, activity=command)


def missing_mandatory(cmdlet_fq: str, names: list[str]) -> SimError:
    return SimError(
        message="Cannot process command because of one or more missing mandatory parameters: "
        f"{' '.join(names)}.",
        fqid=f"MissingMandatoryParameter,{cmdlet_fq}",
        category="InvalidArgument",
        exception_type="System.Management.Automation.ParameterBindingException",
    )


def script_not_allowed(text: str) -> SimError:
    """A script command other than the guest invoker: the simulated host does not run it."""
    # The script's text is not echoed (it may hold anything); its digest tells a stale invoker
    # copy from a different script.
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return SimError(
        message=(
            "The vmbusops simulator does not support this script command on the host: it runs "
            "structured Hyper-V cmdlet commands and, as its only script, vmbusops' guest invoker "
            "(Invoke-VmbusOpsGuest.ps1, recognised by the SHA-256 of its exact text). "
            f"This script's SHA-256 is {digest}."
        ),
        fqid="ScriptNotSupportedBySimulator",
        category="NotImplemented",
        exception_type="System.NotSupportedException",
    )


def not_supported_in_guest(what: str) -> SimError:
    """Something outside the simulated guest's PowerShell subset: say so, never pretend."""
    return SimError(
        message=(
            f"The vmbusops simulator does not support {what} in guest script blocks; "
            "see the vmbusops.sim documentation for the supported PowerShell subset."
        ),
        fqid="NotSupportedBySimulator",
        category="NotImplemented",
        exception_type="System.NotSupportedException",
        target_name=what,
    )


# Checkpoints. Sources: Microsoft's Hyper-V module reference (parameter sets, aliases), and error
# records real hosts printed in public logs: Checkpoint-VM's "Hyper-V was unable to find a virtual
# machine with name ..." as ObjectNotFound,...CheckpointVM; Get-VMCheckpoint's "Unable to find a
# snapshot matching the given criteria." (ObjectNotFound, [Get-VMSnapshot]); "Checkpoint operation
# failed." followed by "Checkpoints have been disabled." and the per-VM lines, and by "Production
# checkpoints cannot be created." The not-enough-space and ambiguous-name texts are the
# simulator's (the Win32 text and HRESULT of ERROR_DISK_FULL are real): docs/checkpoints.md lists
# what a real host still has to confirm.
CHECKPOINT_FAILED = "Checkpoint operation failed."
SNAPSHOT_NOT_FOUND = "Unable to find a snapshot matching the given criteria."
DISK_FULL = "There is not enough space on the disk. (0x80070070)"


def checkpoint_vm_not_found(name: str) -> SimError:
    return SimError(
        message=f'Hyper-V was unable to find a virtual machine with name "{name}".',
        fqid=f"ObjectNotFound,{HYPERV_COMMANDS}.CheckpointVM",
        category="ObjectNotFound",
        exception_type=HYPERV_EXCEPTION,
        activity="Checkpoint-VM",
    )


def snapshot_not_found(cmdlet: str, name: str) -> SimError:
    return SimError(
        message=SNAPSHOT_NOT_FOUND,
        fqid=f"ObjectNotFound,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="ObjectNotFound",
        exception_type=HYPERV_EXCEPTION,
        target_name=name,
        activity=cmdlet,
    )


def _checkpoint_failed(vm: str, vm_id: str, summary: str, detail: str) -> SimError:
    return SimError(
        message=(
            f"{CHECKPOINT_FAILED}\n{summary}\n"
            f"Checkpoint operation for '{vm}' failed. (Virtual machine ID {vm_id.upper()})\n{detail}"
        ),
        fqid=f"OperationFailed,{HYPERV_COMMANDS}.CheckpointVM",
        category="NotSpecified",
        exception_type=HYPERV_EXCEPTION,
        target_name=vm,
        activity="Checkpoint-VM",
    )


def checkpoints_disabled(vm: str, vm_id: str) -> SimError:
    return _checkpoint_failed(
        vm, vm_id, "Checkpoints have been disabled.",
        f"Checkpoints have been disabled for '{vm}'. (Virtual machine ID {vm_id.upper()}).",
    )


def production_unavailable(vm: str, vm_id: str) -> SimError:
    return _checkpoint_failed(
        vm, vm_id, "Production checkpoints cannot be created.",
        f"Production checkpoints cannot be created for '{vm}'. (Virtual machine ID {vm_id.upper()})\n"
        "The operating system in the virtual machine is not running, or the Backup (volume shadow copy) "
        "integration service is not available.",
    )


def not_enough_space(vm: str, vm_id: str) -> SimError:
    return _checkpoint_failed(
        vm, vm_id, DISK_FULL,
        f"Could not create checkpoint for '{vm}': {DISK_FULL}. (Virtual machine ID {vm_id.upper()})",
    )


def snapshot_ambiguous(cmdlet: str, vm: str, name: str) -> SimError:
    return SimError(
        message=f'The name "{name}" matches more than one checkpoint of virtual machine "{vm}".',
        fqid=f"InvalidParameter,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="InvalidArgument",
        exception_type=HYPERV_EXCEPTION,
        target_name=name,
        activity=cmdlet,
    )


def confirmation_needed(cmdlet: str, what: str) -> SimError:
    """ShouldProcess asked the client's host to confirm; a client without a host UI cannot."""
    return SimError(
        message=(
            "A command that prompts the user failed because the host program or the command type does not "
            "support user interaction. The host was attempting to request confirmation with the following "
            f"message: Are you sure you want to perform this action?\n{what}"
        ),
        fqid=f"HostException,{HYPERV_COMMANDS}.{_cmdlet_class(cmdlet)}",
        category="NotSpecified",
        exception_type="System.Management.Automation.Host.HostException",
        activity=cmdlet,
    )


def volume_not_found(path: str) -> SimError:
    """Get-Volume -FilePath of a path on no volume the host has (CDXML's not-found text)."""
    return SimError(
        message=f"No MSFT_Volume objects found with property 'FilePath' equal to '{path}'.  "
        "Verify the value of the property and retry.",
        fqid="CmdletizationQuery_NotFound_FilePath,Get-Volume",
        category="ObjectNotFound",
        exception_type="Microsoft.PowerShell.Cmdletization.Cim.CimJobException",
        target_name=path,
        activity="Get-Volume",
    )
