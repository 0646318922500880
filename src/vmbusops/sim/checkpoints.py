"""Hyper-V checkpoints on the simulated host, for both hosts that run them: the simulator and pwsh-lab.

A checkpoint keeps the whole guest: everything the simulator keeps of it lives under the guest's
root (the ``C`` drive's files, ``system.json`` with services and installed hotfixes, ``lcm.json``
with the DSC Local Configuration Manager's settings, status and documents, ``tasks.json`` with
scheduled tasks...), and :func:`take` copies that directory, byte for byte, to
``checkpoints/<vm>/<id>``; :func:`restore` puts a fresh copy of it back in place of the guest's
(never sharing a file with the checkpoint, which stays as it was). Its record (name, id, type,
parent, the power state it holds, the space it takes) is kept with the VM's runtime state in
``state.json``, so every process sharing the state directory sees it.

What kind of checkpoint a VM gets, as Hyper-V decides (Microsoft's "Choose between standard or
production checkpoints"): ``checkpoint_type`` Standard always takes a standard one (it holds the
running VM's memory); Production takes a production one (VSS inside the guest, no memory) when it
can and otherwise, silently, a standard one; ProductionOnly fails instead; Disabled always fails.
A production checkpoint is possible when the VM is off, or running with its guest booted, the
guest's Backup (volume shadow copy) working (the lab's ``vss``) and the VSS integration service on.

Restoring leaves the VM as its checkpoint holds it: Off for a production checkpoint or one of a VM
that was off (the guest boots on Start-VM), Saved for a standard checkpoint of a running VM
(Start-VM resumes it). Taking a checkpoint needs space on the VM's volume (the lab's
``storage_free_mb``): :data:`BASE_MB` for the configuration and differencing disks, plus the VM's
memory when it saves a running VM's memory.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from vmbusops.home import private_dir
from vmbusops.sim import pserrors
from vmbusops.sim.hostrules import has_wildcard, wildcard_match
from vmbusops.sim.lab import CheckpointType, Lab, VMSpec, VMState
from vmbusops.sim.state import CheckpointRecord, HostStore, VMRuntime
from vmbusops.sim.streams import SimError

#: What every checkpoint takes on the VM's volume (configuration, new differencing disks), in MiB.
BASE_MB = 64.0
VSS_SERVICE = "VSS"


def vm_path(spec: VMSpec) -> str:
    """The VM's folder (Get-VM's Path, ConfigurationLocation and SnapshotFileLocation).

    Each VM's files are on a volume of their own, mounted at this folder, so each VM has the
    free space its lab entry gives it."""
    return f"C:\\Hyper-V\\{spec.name}"


def vhd_path(spec: VMSpec) -> str:
    return f"{vm_path(spec)}\\Virtual Hard Disks\\{spec.name}.vhdx"


def volume_id(spec: VMSpec) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmbusops-sim-volume:{spec.name.casefold()}"))


def used_mb(rt: VMRuntime) -> float:
    return sum(c.size_mb for c in rt.checkpoints)


def free_mb(spec: VMSpec, rt: VMRuntime) -> float:
    """Free space on the VM's volume: what the lab gives it, less what its checkpoints take."""
    return max(0.0, spec.storage_free_mb - used_mb(rt))


def production_possible(spec: VMSpec, rt: VMRuntime, now: float) -> bool:
    if rt.state is VMState.OFF:
        return True
    return rt.booted(now) and spec.vss and bool(rt.service_enabled(VSS_SERVICE))


def matching(rt: VMRuntime, pattern: str | None) -> list[CheckpointRecord]:
    """The VM's checkpoints whose name matches ``pattern`` (a wildcard; None: every one), oldest first."""
    if pattern is None:
        return list(rt.checkpoints)
    return [c for c in rt.checkpoints if wildcard_match(c.name, pattern)]


def find(rt: VMRuntime, pattern: str, cmdlet: str, vm: str) -> CheckpointRecord | SimError:
    """Exactly one checkpoint by name, or the error Hyper-V gives for none (or the simulator's for several)."""
    hits = matching(rt, pattern)
    if not hits:
        return pserrors.snapshot_not_found(cmdlet, pattern)
    if len(hits) > 1:
        return pserrors.snapshot_ambiguous(cmdlet, vm, pattern)
    return hits[0]


def default_name(spec: VMSpec, now: float) -> str:
    """What Hyper-V names a checkpoint when no -SnapshotName is given: the VM's name and the time."""
    t = time.localtime(now)
    hour = t.tm_hour % 12 or 12
    return (
        f"{spec.name} - ({t.tm_mon}/{t.tm_mday}/{t.tm_year} - "
        f"{hour}:{t.tm_min:02d}:{t.tm_sec:02d} {'AM' if t.tm_hour < 12 else 'PM'})"
    )


def _copy_tree(source: Path, target: Path) -> None:
    """A full copy of ``source`` at ``target`` (made beside it, then renamed into place)."""
    private_dir(target.parent)  # owner-only, as everything under the home
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        shutil.copytree(source, tmp, symlinks=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def take(store: HostStore, spec: VMSpec, name: str | None, now: float) -> CheckpointRecord | SimError:
    """Checkpoint-VM: copy the guest, record the checkpoint; or the error Hyper-V gives."""
    rt = store.runtime(spec)
    kind = spec.checkpoint_type
    if kind is CheckpointType.DISABLED:
        return pserrors.checkpoints_disabled(spec.name, spec.id)
    production = kind is not CheckpointType.STANDARD and production_possible(spec, rt, now)
    if kind is CheckpointType.PRODUCTION_ONLY and not production:
        return pserrors.production_unavailable(spec.name, spec.id)
    held = "Off" if production or rt.state is VMState.OFF else rt.state.value
    size = BASE_MB + (0.0 if held == "Off" else spec.memory_mb)
    if free_mb(spec, rt) < size:
        return pserrors.not_enough_space(spec.name, spec.id)
    record = CheckpointRecord(
        id=str(uuid.uuid4()),
        name=name if name is not None else default_name(spec, now),
        created=now,
        production=production,
        state=held,
        parent=rt.current_checkpoint,
        size_mb=size,
    )
    _copy_tree(store.guest_root(spec), store.checkpoint_root(spec, record.id))

    def add(rt: VMRuntime) -> VMRuntime:
        return replace(rt, checkpoints=(*rt.checkpoints, record), current_checkpoint=record.id)

    store.update(spec, add)
    return record


def restore(store: HostStore, spec: VMSpec, record: CheckpointRecord) -> VMRuntime:
    """Restore-VMSnapshot: the guest becomes a fresh copy of the checkpoint's; the VM Off or Saved."""
    guest = store.guest_root(spec)
    incoming = guest.parent / f".{guest.name}.restore-{uuid.uuid4().hex}"
    shutil.copytree(store.checkpoint_root(spec, record.id), incoming, symlinks=True)
    outgoing = guest.parent / f".{guest.name}.old-{uuid.uuid4().hex}"
    # Under the store's lock: a process seeding the guest in between would see no guest at all.
    with store.locked():
        os.replace(guest, outgoing)
        os.replace(incoming, guest)
    shutil.rmtree(outgoing, ignore_errors=True)

    def apply(rt: VMRuntime) -> VMRuntime:
        base = rt.stopped() if record.state == "Off" else replace(
            rt, state=VMState.SAVED, running_since=None, boot_until=0.0
        )
        return replace(base, current_checkpoint=record.id)

    return store.update(spec, apply)


def remove(store: HostStore, spec: VMSpec, records: list[CheckpointRecord], *, children: bool) -> None:
    """Remove-VMSnapshot: forget the checkpoints (and, with ``children``, their descendants).

    A removed checkpoint's children take its parent as theirs, and the VM's current state, if it
    descended from it, now descends from that parent, as Hyper-V merges the differencing disks."""
    doomed = {c.id for c in records}
    if children:
        rt = store.runtime(spec)
        grew = True
        while grew:
            more = {c.id for c in rt.checkpoints if c.parent in doomed} - doomed
            grew = bool(more)
            doomed |= more

    def drop(rt: VMRuntime) -> VMRuntime:
        by_id = {c.id: c for c in rt.checkpoints}

        def surviving_parent(parent: str | None) -> str | None:
            while parent is not None and parent in doomed:
                parent = by_id[parent].parent if parent in by_id else None
            return parent

        kept = tuple(replace(c, parent=surviving_parent(c.parent)) for c in rt.checkpoints if c.id not in doomed)
        return replace(rt, checkpoints=kept, current_checkpoint=surviving_parent(rt.current_checkpoint))

    store.update(spec, drop)
    for checkpoint_id in doomed:
        shutil.rmtree(store.checkpoint_root(spec, checkpoint_id), ignore_errors=True)


def by_names(
    rt: VMRuntime, names: list[str] | None, cmdlet: str, error: Callable[[SimError], None]
) -> list[CheckpointRecord]:
    """The checkpoints ``names`` (wildcards) mean, oldest first; an error per plain name matching none."""
    if not names:
        return list(rt.checkpoints)
    found: dict[str, CheckpointRecord] = {}
    for pattern in names:
        hits = matching(rt, pattern)
        if not hits and not has_wildcard(pattern):
            error(pserrors.snapshot_not_found(cmdlet, pattern))
        for c in hits:
            found.setdefault(c.id, c)
    return [c for c in rt.checkpoints if c.id in found]


def parent_name(rt: VMRuntime, checkpoint_id: str | None) -> str | None:
    for c in rt.checkpoints:
        if c.id == checkpoint_id:
            return c.name
    return None


# ---- the cmdlets' behaviour, for both hosts: output as plain facts, errors as SimErrors -------

Output = Callable[[dict[str, Any]], None]
Report = Callable[[SimError], None]


def snapshot_facts(lab: Lab, spec: VMSpec, rt: VMRuntime, c: CheckpointRecord) -> dict[str, Any]:
    """What a VMSnapshot object reports (Get-VMSnapshot, Checkpoint-VM -Passthru).

    SnapshotType is "Standard" for production checkpoints too: the type's documented values have
    no Production member; ``State`` tells them apart ("Off": no memory held)."""
    parent = parent_name(rt, c.parent)
    return {
        "Name": c.name,
        "VMName": spec.name,
        "VMId": spec.id,
        "Id": c.id,
        "SnapshotType": "Standard",
        "State": c.state,
        "CreationTime": datetime.datetime.fromtimestamp(c.created, datetime.UTC),
        "ParentSnapshotId": c.parent,
        "ParentSnapshotName": parent,
        "ParentCheckpointId": c.parent,
        "ParentCheckpointName": parent,
        "IsAutomaticCheckpoint": False,
        "Path": f"{vm_path(spec)}\\Snapshots",
        "ComputerName": rt.host or lab.host.name,
        "Notes": "",
    }


def vm_checkpoint_facts(spec: VMSpec, rt: VMRuntime) -> dict[str, Any]:
    """What Get-VM adds about checkpoints and storage."""
    return {
        "CheckpointType": spec.checkpoint_type.value,
        "Path": vm_path(spec),
        "ConfigurationLocation": vm_path(spec),
        "SnapshotFileLocation": vm_path(spec),
        "CheckpointFileLocation": vm_path(spec),
        "MemoryStartup": int(spec.memory_mb * 1024 * 1024),
        "ParentSnapshotId": rt.current_checkpoint,
        "ParentSnapshotName": parent_name(rt, rt.current_checkpoint),
    }


def checkpoint_vm(
    store: HostStore, lab: Lab, specs: list[VMSpec], name: str | None, now: float,
    *, passthru: bool, output: Output, report: Report,
) -> None:
    for spec in specs:
        taken = take(store, spec, name, now)
        if isinstance(taken, SimError):
            report(taken)
        elif passthru:
            output(snapshot_facts(lab, spec, store.runtime(spec), taken))


def get_snapshots(
    store: HostStore, lab: Lab, specs: list[VMSpec], name: str | None, snapshot_type: str | None,
    *, output: Output, report: Report,
) -> None:
    for spec in specs:
        rt = store.runtime(spec)
        hits = matching(rt, name)
        if name is not None and not hits and not has_wildcard(name):
            report(pserrors.snapshot_not_found("Get-VMSnapshot", name))
            continue
        for c in hits:
            if snapshot_type is None or snapshot_type.casefold() == "standard":
                output(snapshot_facts(lab, spec, rt, c))


def restore_snapshot(
    store: HostStore, lab: Lab, spec: VMSpec, name: str, *, passthru: bool, output: Output, report: Report,
) -> None:
    rt = store.runtime(spec)
    found = find(rt, name, "Restore-VMSnapshot", spec.name)
    if isinstance(found, SimError):
        report(found)
        return
    after = restore(store, spec, found)
    if passthru:
        output(snapshot_facts(lab, spec, after, found))


def remove_snapshots(
    store: HostStore, lab: Lab, specs: list[VMSpec], names: list[str] | None, *, children: bool,
    passthru: bool, output: Output, report: Report,
) -> None:
    for spec in specs:
        rt = store.runtime(spec)
        doomed = by_names(rt, names, "Remove-VMSnapshot", report)
        if doomed:
            remove(store, spec, doomed, children=children)
        if passthru:
            output({"Name": spec.name, "Id": spec.id})


def volume_facts(lab: Lab, store: HostStore, path: str) -> dict[str, Any] | None:
    """Get-Volume -FilePath: the volume a VM's folder is mounted from, or None for another path."""
    folded = path.replace("/", "\\").casefold()
    for spec in lab.vms:
        root = vm_path(spec).casefold()
        if folded == root or folded.startswith(root + "\\"):
            rt = store.runtime(spec)
            size = int((spec.storage_free_mb + used_mb(rt) + 40960) * 1024 * 1024)
            return {
                "DriveLetter": None,
                "FileSystemLabel": spec.name,
                "FileSystem": "NTFS",
                "DriveType": "Fixed",
                "HealthStatus": "Healthy",
                "OperationalStatus": "OK",
                "Path": f"\\\\?\\Volume{{{volume_id(spec)}}}\\",
                "UniqueId": f"\\\\?\\Volume{{{volume_id(spec)}}}\\",
                "SizeRemaining": int(free_mb(spec, rt) * 1024 * 1024),
                "Size": size,
            }
    return None
