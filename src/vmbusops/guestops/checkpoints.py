"""Hyper-V checkpoints from the host: take, list, restore, remove, and the room to take one.

The commands are the real cmdlets (a JEA endpoint allows cmdlets, not aliases) with parameters by
name, as the role capability allows them (``host_agent/VmbusOpsHost``)::

    Checkpoint-VM -Name VM -SnapshotName NAME -Passthru
    Get-VMSnapshot -VMName VM [-Name NAME]
    Restore-VMSnapshot -VMName VM -Name NAME -Confirm:$false
    Remove-VMSnapshot -VMName VM -Name NAME -Confirm:$false
    Get-VM -Name VM; Get-VMHardDiskDrive -VMName VM; Get-Volume -FilePath PATH

Restore-VMSnapshot asks for confirmation unless told not to, and a remote client cannot answer, so
``-Confirm:$false`` is always sent (to Remove-VMSnapshot too, which costs nothing). Names given
to ``-Name`` are wildcard patterns and Hyper-V allows two checkpoints of one VM to share a name,
so a checkpoint name must be plain (:data:`CHECKPOINT_NAME`) and unique: list before taking.

Whether Hyper-V fell back from a production to a standard checkpoint is in the checkpoint it
returns: a production checkpoint holds no memory, so its ``State`` is Off, where a standard
checkpoint of a running VM holds the VM Running (:attr:`CheckpointInfo.production`). After a
restore the VM is Off (production) or Saved (standard): either way it must be started.
docs/checkpoints.md has the errors and what only a real host can confirm.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

from vmbusops.errors import HostCommandError, VmbusOpsError
from vmbusops.psrp.client import Command
from vmbusops.records import PSObjectValue, Value

#: What a checkpoint name the agent makes may be: no wildcard characters, nothing to quote.
CHECKPOINT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

RunHost = Callable[..., Awaitable[list[Value]]]


class CheckpointFailure(enum.StrEnum):
    """Why a checkpoint operation failed, for programs (the message keeps Hyper-V's text)."""

    DISABLED = "CheckpointsDisabled"
    PRODUCTION_UNAVAILABLE = "ProductionCheckpointUnavailable"
    NO_SPACE = "NotEnoughSpace"
    NOT_FOUND = "CheckpointNotFound"
    AMBIGUOUS = "CheckpointNameAmbiguous"
    OTHER = "CheckpointFailed"


class CheckpointError(HostCommandError):
    """A checkpoint cmdlet failed; :attr:`reason` says why. The message is Hyper-V's (hostile text)."""

    def __init__(self, message: str, reason: CheckpointFailure, *, fqid: str | None = None) -> None:
        super().__init__(message, fqid=fqid)
        self.reason = reason


def _reason(message: str) -> CheckpointFailure:
    text = message.casefold()
    if "checkpoints have been disabled" in text:
        return CheckpointFailure.DISABLED
    if "production checkpoints cannot be created" in text:
        return CheckpointFailure.PRODUCTION_UNAVAILABLE
    if "0x80070070" in text or "not enough space" in text:
        return CheckpointFailure.NO_SPACE
    if "unable to find a snapshot" in text:
        return CheckpointFailure.NOT_FOUND
    if "more than one checkpoint" in text:
        return CheckpointFailure.AMBIGUOUS
    return CheckpointFailure.OTHER


def _reclassified(exc: VmbusOpsError) -> VmbusOpsError:
    """A checkpoint cmdlet's failure as a CheckpointError; anything else (VM not found, host
    unreachable...) as it was. The generic classifier may take Hyper-V's "...is not running, or
    the Backup (volume shadow copy) integration service..." for a VM that is not running: its
    hint ("start it first") is dropped with the class."""
    message = exc.message
    reason = _reason(message)
    if reason is not CheckpointFailure.OTHER or "checkpoint operation failed" in message.casefold():
        return CheckpointError(message, reason, fqid=getattr(exc, "fqid", None))
    if type(exc) is HostCommandError:
        return CheckpointError(message, reason, fqid=exc.fqid)
    return exc


def _text(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, PSObjectValue):
        return value.to_string
    return str(value)


def _int(value: Value) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One VMSnapshot as Get-VMSnapshot or Checkpoint-VM -Passthru returns it."""

    name: str
    vm_name: str
    vm_id: str
    id: str
    snapshot_type: str
    #: The power state the checkpoint holds: "Off" when it holds no memory.
    state: str
    creation_time: str
    parent_name: str | None

    @property
    def production(self) -> bool:
        """A production checkpoint (no memory held) rather than a standard one."""
        return self.state == "Off"

    @classmethod
    def parse(cls, value: PSObjectValue) -> CheckpointInfo:
        return cls(
            name=_text(value.get("Name")) or "",
            vm_name=_text(value.get("VMName")) or "",
            vm_id=_text(value.get("VMId")) or "",
            id=_text(value.get("Id")) or "",
            snapshot_type=_text(value.get("SnapshotType")) or "",
            state=_text(value.get("State")) or "",
            creation_time=_text(value.get("CreationTime")) or "",
            parent_name=_text(value.get("ParentSnapshotName")),
        )


@dataclass(frozen=True, slots=True)
class VolumeRoom:
    path: str
    free_bytes: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class CheckpointRoom:
    """What taking a checkpoint of one VM needs to know about it and its storage."""

    checkpoint_type: str
    memory_bytes: int
    #: Each volume holding the VM's disks or its checkpoint folder, once.
    volumes: tuple[VolumeRoom, ...]

    @property
    def free_bytes(self) -> int:
        return min((v.free_bytes for v in self.volumes), default=0)

    def enough(self, needed_bytes: int) -> bool:
        return bool(self.volumes) and self.free_bytes >= needed_bytes


def _objects(values: Sequence[Value]) -> list[PSObjectValue]:
    return [v for v in values if isinstance(v, PSObjectValue)]


async def checkpoint_vm(run: RunHost, vm: str, name: str) -> CheckpointInfo:
    """Take a checkpoint named ``name`` (:data:`CHECKPOINT_NAME`); Hyper-V decides its kind."""
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f"checkpoint name {name!r} must match {CHECKPOINT_NAME.pattern}")
    try:
        values = await run(vm, [Command("Checkpoint-VM", {"Name": vm, "SnapshotName": name, "Passthru": True})])
    except VmbusOpsError as exc:
        raise _reclassified(exc) from None
    found = _objects(values)
    if not found:
        raise CheckpointError(f"{vm}: Checkpoint-VM returned no checkpoint", CheckpointFailure.OTHER)
    return CheckpointInfo.parse(found[0])


async def get_checkpoints(run: RunHost, vm: str, name: str | None = None) -> list[CheckpointInfo]:
    """The VM's checkpoints (by name: those so named), oldest first; [] when there are none."""
    params: dict[str, Value] = {"VMName": vm}
    if name is not None:
        params["Name"] = name
    try:
        values = await run(vm, [Command("Get-VMSnapshot", params)])
    except VmbusOpsError as exc:
        failure = _reclassified(exc)
        if isinstance(failure, CheckpointError) and failure.reason is CheckpointFailure.NOT_FOUND:
            return []
        raise failure from None
    return [CheckpointInfo.parse(v) for v in _objects(values)]


async def restore_checkpoint(run: RunHost, vm: str, name: str) -> None:
    """Restore the VM to checkpoint ``name``; the VM is then Off or Saved: start it."""
    params: dict[str, Value] = {"VMName": vm, "Name": name, "Confirm": False}
    try:
        await run(vm, [Command("Restore-VMSnapshot", params)])
    except VmbusOpsError as exc:
        raise _reclassified(exc) from None


async def remove_checkpoint(run: RunHost, vm: str, name: str, *, missing_ok: bool = True) -> bool:
    """Remove checkpoint ``name`` (never its children); False when it was already gone."""
    try:
        await run(vm, [Command("Remove-VMSnapshot", {"VMName": vm, "Name": name, "Confirm": False})])
    except VmbusOpsError as exc:
        failure = _reclassified(exc)
        if missing_ok and isinstance(failure, CheckpointError) and failure.reason is CheckpointFailure.NOT_FOUND:
            return False
        raise failure from None
    return True


async def checkpoint_room(run: RunHost, vm: str) -> CheckpointRoom:
    """The VM's checkpoint type and memory, and the free space of every volume its files are on."""
    values = await run(vm, [Command("Get-VM", {"Name": vm})], [Command("Get-VMHardDiskDrive", {"VMName": vm})])
    checkpoint_type, memory = "", 0
    paths: list[str] = []
    for value in _objects(values):
        if any("HardDiskDrive" in t for t in value.type_names):
            path = _text(value.get("Path"))
            if path:
                paths.append(path)
        else:
            checkpoint_type = _text(value.get("CheckpointType")) or ""
            memory = _int(value.get("MemoryStartup"))
            location = _text(value.get("SnapshotFileLocation"))
            if location:
                paths.insert(0, location)
    volumes: dict[str, VolumeRoom] = {}
    for path in paths:
        for volume in _objects(await run(vm, [Command("Get-Volume", {"FilePath": path})])):
            key = _text(volume.get("Path")) or _text(volume.get("UniqueId")) or path
            volumes.setdefault(
                key, VolumeRoom(path=key, free_bytes=_int(volume.get("SizeRemaining")), size_bytes=_int(volume.get("Size")))
            )
    return CheckpointRoom(checkpoint_type=checkpoint_type, memory_bytes=memory, volumes=tuple(volumes.values()))
