"""Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot, Get-VMHardDiskDrive and Get-Volume on the simulated host.

The parameters and parameter sets are the Hyper-V module's (Microsoft's reference for Windows
Server 2022): ``Checkpoint-VM -Name`` (alias VMName) with ``-SnapshotName`` (alias CheckpointName),
``Restore-VMSnapshot -Name -VMName`` as single strings, ``Remove-VMSnapshot -VMName -Name`` as
string arrays; the aliases Get-VMCheckpoint, Restore-VMCheckpoint and Remove-VMCheckpoint resolve to
these cmdlets. Restore-VMSnapshot asks for confirmation (ConfirmImpact High) unless
``-Confirm:$false``: the simulator cannot put the question to the client's host, and ends the
command as a cmdlet does whose host cannot answer (the message is the simulator's: a real client
that refuses prompts words its own). Objects sent by value (``-VM``, ``-VMSnapshot``) are refused by the binder, as no PSRP
client can send a live Hyper-V object. What each does is :mod:`vmbusops.sim.checkpoints`.
"""

from __future__ import annotations

from typing import Any

from vmbusops.sim import checkpoints, pserrors
from vmbusops.sim.binding import Param, ParamSet, choose_set
from vmbusops.sim.host_command import HostCmdlet, HostContext
from vmbusops.sim.hostrules import resolve_vms
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.streams import SimError, SimObject, Streams, TerminatingError
from vmbusops.sim.vm_cmdlets import names_of

SNAPSHOT_TYPES = (
    "Microsoft.HyperV.PowerShell.VMSnapshot",
    "Microsoft.HyperV.PowerShell.VirtualMachineBase",
    "Microsoft.HyperV.PowerShell.VirtualizationObject",
    "System.Object",
)
DRIVE_TYPES = (
    "Microsoft.HyperV.PowerShell.HardDiskDrive",
    "Microsoft.HyperV.PowerShell.Drive",
    "Microsoft.HyperV.PowerShell.VirtualizationObject",
    "System.Object",
)
VOLUME_TYPES = (
    "Microsoft.Management.Infrastructure.CimInstance#ROOT/Microsoft/Windows/Storage/MSFT_Volume",
    "Microsoft.Management.Infrastructure.CimInstance#MSFT_Volume",
    "Microsoft.Management.Infrastructure.CimInstance",
    "System.Object",
)


def _snapshot_object(facts: dict[str, Any]) -> SimObject:
    return SimObject(SNAPSHOT_TYPES, tuple(facts.items()), str(facts["Name"]))


def _vms(host: HostContext, cmdlet: str, names: list[str], streams: Streams) -> list[VMSpec]:
    return resolve_vms(host.lab, cmdlet, names, streams.error, vms=host.owned_vms())


def _no_objects(cmdlet: str, parameter: str) -> SimError:
    return SimError(
        message=f"The simulated host cannot receive a live object for -{parameter}: send the name instead.",
        fqid=f"NotSupportedBySimulator,{pserrors.HYPERV_COMMANDS}.{cmdlet.replace('-', '')}",
        category="NotImplemented",
        exception_type="System.NotSupportedException",
        activity=cmdlet,
    )


# Live Hyper-V objects: no PSRP client can send one (see binding's "live:" kind).
_VM = "live:Microsoft.HyperV.PowerShell.VirtualMachine"
_SNAPSHOT = "live:Microsoft.HyperV.PowerShell.VMSnapshot"
_SHOULD_PROCESS = (Param("Confirm", switch=True, kind="switch", aliases=("cf",)),
                   Param("WhatIf", switch=True, kind="switch", aliases=("wi",)))

CHECKPOINT_VM_SETS = (ParamSet("Name", ("Name",)), ParamSet("VMObject", ("VM",)))


async def checkpoint_vm(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    if choose_set(b, CHECKPOINT_VM.params, CHECKPOINT_VM_SETS, fq) == "VMObject":
        streams.error(_no_objects("Checkpoint-VM", "VM"))
        return
    if b.get("WhatIf"):
        return
    # Checkpoint-VM reports an unknown VM as ObjectNotFound (Get-VM: InvalidParameter).
    specs = resolve_vms(
        host.lab, "Checkpoint-VM", names_of(b["Name"]),
        lambda e: streams.error(pserrors.checkpoint_vm_not_found(e.target_name)), vms=host.owned_vms(),
    )
    checkpoints.checkpoint_vm(
        host.store, host.lab, specs, b.get("SnapshotName"), host.clock(), passthru=bool(b.get("Passthru")),
        output=lambda facts: streams.output(_snapshot_object(facts)), report=streams.error,
    )


CHECKPOINT_VM = HostCmdlet(
    (
        Param("Name", 0, aliases=("VMName",), kind="strings", sets=("Name",)),
        Param("VM", kind=_VM, sets=("VMObject",)),
        Param("SnapshotName", 1, aliases=("CheckpointName",), kind="string"),
        Param("AsJob", switch=True, kind="switch"),
        Param("Passthru", switch=True, kind="switch"),
        *_SHOULD_PROCESS,
        Param("CimSession", sets=("Name",)),
        Param("ComputerName", kind="strings", sets=("Name",)),
        Param("Credential", sets=("Name",)),
    ),
    checkpoint_vm,
)

GET_SNAPSHOT_SETS = (
    ParamSet("VMName", ("VMName",)), ParamSet("VMObject", ("VM",)), ParamSet("Id", ("Id",)),
    ParamSet("Parent", ("ParentOf",)), ParamSet("Child", ("ChildOf",)),
)


async def get_vm_snapshot(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    chosen = choose_set(b, GET_VM_SNAPSHOT.params, GET_SNAPSHOT_SETS, fq)
    if chosen == "Id":
        for spec in host.owned_vms() or host.lab.vms:
            rt = host.store.runtime(spec)
            for c in rt.checkpoints:
                if c.id == b["Id"]:
                    streams.output(_snapshot_object(checkpoints.snapshot_facts(host.lab, spec, rt, c)))
                    return
        streams.error(pserrors.snapshot_not_found("Get-VMSnapshot", str(b["Id"])))
        return
    if chosen != "VMName":
        streams.error(_no_objects("Get-VMSnapshot", {"VMObject": "VM", "Parent": "ParentOf"}.get(chosen, "ChildOf")))
        return
    checkpoints.get_snapshots(
        host.store, host.lab, _vms(host, "Get-VMSnapshot", names_of(b["VMName"]), streams), b.get("Name"),
        b.get("SnapshotType"), output=lambda facts: streams.output(_snapshot_object(facts)), report=streams.error,
    )


GET_VM_SNAPSHOT = HostCmdlet(
    (
        Param("VMName", 0, kind="strings", sets=("VMName",)),
        Param("VM", kind=_VM, sets=("VMObject",)),
        Param("Id", kind="guid", sets=("Id",)),
        Param("ParentOf", kind="live:Microsoft.HyperV.PowerShell.VirtualMachineBase", sets=("Parent",)),
        Param("ChildOf", kind=_SNAPSHOT, sets=("Child",)),
        Param("Name", 1, kind="string", sets=("VMName", "VMObject", "Parent", "Child")),
        Param("SnapshotType", aliases=("VMRecoveryCheckpoint",), kind="string",
              sets=("VMName", "VMObject", "Parent", "Child")),
        Param("CimSession", sets=("VMName", "Id")),
        Param("ComputerName", kind="strings", sets=("VMName", "Id")),
        Param("Credential", sets=("VMName", "Id")),
    ),
    get_vm_snapshot,
)

RESTORE_SETS = (
    ParamSet("SnapshotName", ("Name", "VMName")), ParamSet("SnapshotObject", ("VMSnapshot",)),
    ParamSet("VM", ("VM", "Name")),
)


async def restore_vm_snapshot(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    chosen = choose_set(b, RESTORE_VM_SNAPSHOT.params, RESTORE_SETS, fq)
    if chosen != "SnapshotName":
        streams.error(_no_objects("Restore-VMSnapshot", "VMSnapshot" if chosen == "SnapshotObject" else "VM"))
        return
    specs = _vms(host, "Restore-VMSnapshot", [b["VMName"]], streams)
    for spec in specs:
        if b.get("WhatIf"):
            continue
        if b.get("Confirm") is not False:
            # ShouldProcess asks the client's host; when it cannot answer, the cmdlet ends there.
            raise TerminatingError(
                pserrors.confirmation_needed("Restore-VMSnapshot", f'Restore-VMSnapshot will restore checkpoint "{b["Name"]}".')
            )
        checkpoints.restore_snapshot(
            host.store, host.lab, spec, b["Name"], passthru=bool(b.get("Passthru")),
            output=lambda facts: streams.output(_snapshot_object(facts)), report=streams.error,
        )


RESTORE_VM_SNAPSHOT = HostCmdlet(
    (
        Param("Name", 0, kind="string", sets=("SnapshotName", "VM")),
        Param("VMName", 1, kind="string", sets=("SnapshotName",)),
        Param("VMSnapshot", aliases=("VMCheckpoint",), kind=_SNAPSHOT, sets=("SnapshotObject",)),
        Param("VM", kind=_VM, sets=("VM",)),
        Param("AsJob", switch=True, kind="switch"),
        Param("Passthru", switch=True, kind="switch"),
        *_SHOULD_PROCESS,
        Param("CimSession", sets=("SnapshotName",)),
        Param("ComputerName", kind="strings", sets=("SnapshotName",)),
        Param("Credential", sets=("SnapshotName",)),
    ),
    restore_vm_snapshot,
)

REMOVE_SETS = (ParamSet("SnapshotName", ("VMName",)), ParamSet("VMObject", ("VM",)), ParamSet("SnapshotObject", ("VMSnapshot",)))


async def remove_vm_snapshot(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    chosen = choose_set(b, REMOVE_VM_SNAPSHOT.params, REMOVE_SETS, fq)
    if chosen != "SnapshotName":
        streams.error(_no_objects("Remove-VMSnapshot", "VM" if chosen == "VMObject" else "VMSnapshot"))
        return
    if b.get("WhatIf"):
        return
    names = names_of(b.get("Name")) or None
    checkpoints.remove_snapshots(
        host.store, host.lab, _vms(host, "Remove-VMSnapshot", names_of(b["VMName"]), streams), names,
        children=bool(b.get("IncludeAllChildSnapshots")), passthru=bool(b.get("Passthru")),
        output=lambda facts: streams.output(SimObject(("Microsoft.HyperV.PowerShell.VirtualMachine",), tuple(facts.items()))),
        report=streams.error,
    )


REMOVE_VM_SNAPSHOT = HostCmdlet(
    (
        Param("VMName", 0, kind="strings", sets=("SnapshotName",)),
        Param("VM", kind=_VM, sets=("VMObject",)),
        Param("VMSnapshot", aliases=("VMCheckpoint",), kind=_SNAPSHOT, sets=("SnapshotObject",)),
        Param("Name", 1, kind="strings", sets=("SnapshotName", "VMObject")),
        Param("IncludeAllChildSnapshots", switch=True, kind="switch", aliases=("IncludeAllChildCheckpoints",)),
        Param("AsJob", switch=True, kind="switch"),
        Param("Passthru", switch=True, kind="switch"),
        *_SHOULD_PROCESS,
        Param("CimSession", sets=("SnapshotName",)),
        Param("ComputerName", kind="strings", sets=("SnapshotName",)),
        Param("Credential", sets=("SnapshotName",)),
    ),
    remove_vm_snapshot,
)


async def get_vm_hard_disk_drive(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    if choose_set(b, GET_VM_HARD_DISK_DRIVE.params, (ParamSet("VMName", ("VMName",)), ParamSet("VMObject", ("VM",))), fq) != "VMName":
        streams.error(_no_objects("Get-VMHardDiskDrive", "VM"))
        return
    for spec in _vms(host, "Get-VMHardDiskDrive", names_of(b["VMName"]), streams):
        drive = "Hard Drive on SCSI controller number 0 at location 0"
        facts: dict[str, Any] = {
            "VMName": spec.name, "VMId": spec.id, "Name": drive,
            "ControllerType": "SCSI", "ControllerNumber": 0, "ControllerLocation": 0,
            "Path": checkpoints.vhd_path(spec), "ComputerName": host.store.runtime(spec).host or host.lab.host.name,
        }
        streams.output(SimObject(DRIVE_TYPES, tuple(facts.items()), drive))


GET_VM_HARD_DISK_DRIVE = HostCmdlet(
    (
        Param("VMName", 0, kind="strings", sets=("VMName",)),
        Param("VM", kind=_VM, sets=("VMObject",)),
        Param("ControllerType"), Param("ControllerNumber", kind="int"), Param("ControllerLocation", kind="int"),
        Param("CimSession", sets=("VMName",)), Param("ComputerName", kind="strings", sets=("VMName",)),
        Param("Credential", sets=("VMName",)),
    ),
    get_vm_hard_disk_drive,
)


async def get_volume(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    if "FilePath" not in b:
        streams.error(
            SimError(
                message="The simulated host answers Get-Volume only with -FilePath.",
                fqid="NotSupportedBySimulator,Get-Volume", category="NotImplemented",
                exception_type="System.NotSupportedException", activity="Get-Volume",
            )
        )
        return
    path = b["FilePath"] or ""
    facts = checkpoints.volume_facts(host.lab, host.store, path)
    if facts is None:
        streams.error(pserrors.volume_not_found(path))
        return
    streams.output(SimObject(VOLUME_TYPES, tuple(facts.items()), f"MSFT_Volume (ObjectId = \"{facts['Path']}\")"))


GET_VOLUME = HostCmdlet(
    (
        Param("DriveLetter", 0),
        Param("FilePath", aliases=("FullName",), kind="string"),
        Param("Path", kind="strings"), Param("ObjectId", aliases=("Id",), kind="strings"),
        Param("FileSystemLabel", kind="strings"), Param("UniqueId", kind="strings"),
        Param("CimSession", aliases=("Session",)), Param("ThrottleLimit", kind="int"),
        Param("AsJob", switch=True, kind="switch"),
    ),
    get_volume,
)
