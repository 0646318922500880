"""Hyper-V's rules, in one place for both hosts that run them: the simulator and pwsh-lab.

:func:`resolve_vms` finds the VMs a cmdlet's ``-Name`` means; :func:`vm_facts` is what Get-VM
reports of one. :func:`copy_target` decides, from the VM's state and the guest's file system, where a host file
lands in the guest or which Hyper-V error text refuses it; :func:`write_copy` then writes it (with
the lab's ``corrupt_copies`` fault). The two are split so the simulator can do the write in a worker
thread while the decision stays with the store's owner.
"""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vmbusops.sim import pserrors
from vmbusops.sim.lab import Lab, VMSpec, VMState
from vmbusops.sim.state import (
    GUEST_SERVICE_INTERFACE,
    HostStore,
    VMRuntime,
    guest_path_to_host,
    split_guest_path,
)
from vmbusops.sim.streams import SimError


def wildcard_match(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name.casefold(), pattern.casefold())


def has_wildcard(text: str) -> bool:
    return any(c in text for c in "*?[")


def resolve_vms(
    lab: Lab,
    cmdlet: str,
    names: list[str],
    error: Callable[[SimError], None],
    *,
    vms: Sequence[VMSpec] | None = None,
) -> list[VMSpec]:
    """VMs matching names or wildcards, in lab order; an error for a plain name that matches none.

    ``vms`` are the VMs the host has (default: every VM of the lab); a simulator serving one host
    of a fleet passes the ones that host owns now, so a VM elsewhere is as unknown as no VM."""
    candidates = lab.vms if vms is None else vms
    if not names:
        return list(candidates)
    found: list[VMSpec] = []
    # By identity: comparing specs field by field made ``-VMName *`` quadratic in the lab's size.
    seen: set[int] = set()
    for pattern in names:
        hits = [vm for vm in candidates if wildcard_match(vm.name, pattern)]
        if not hits and not has_wildcard(pattern):
            error(pserrors.vm_not_found(cmdlet, pattern))
        for vm in hits:
            if id(vm) not in seen:
                seen.add(id(vm))
                found.append(vm)
    return found


def vm_facts(lab: Lab, spec: VMSpec, rt: VMRuntime, now: float) -> dict[str, Any]:
    """What Get-VM reports of one VM, before either host shapes it into its own object."""
    uptime = now - rt.running_since if rt.state is VMState.RUNNING and rt.running_since else 0.0
    return {
        "Name": spec.name,
        "Id": spec.id,
        "State": rt.state.value,
        "Status": "Operating normally",
        "Heartbeat": rt.heartbeat(spec, now),
        "UptimeSeconds": int(max(0.0, uptime)),
        "Notes": spec.notes,
        "ComputerName": rt.host or lab.host.name,
        "Generation": 2,
        "Version": "9.0",
        "ProcessorCount": 2,
        "GuestServiceInterfaceEnabled": bool(rt.service_enabled(GUEST_SERVICE_INTERFACE)),
    }


def copy_target(
    store: HostStore, spec: VMSpec, now: float, source: Path, destination: str, *, full_path: bool, force: bool
) -> Path | str:
    """Where ``source`` lands in the guest (its folder made when ``full_path``), or the error detail."""
    rt = store.runtime(spec)
    if not rt.booted(now):
        return pserrors.INVALID_STATE
    if not rt.service_enabled(GUEST_SERVICE_INTERFACE):
        # What Hyper-V really reports when the Guest Service Interface is off.
        return pserrors.FILE_EXISTS
    if not source.is_file():
        return pserrors.FILE_NOT_FOUND
    split = split_guest_path(destination)
    if split is None or split[0] != "C":
        return pserrors.PATH_NOT_FOUND
    target = guest_path_to_host(store.guest_root(spec), destination)
    assert target is not None
    if target.is_dir():
        target = target / source.name
    if target.exists() and not force:
        return pserrors.FILE_EXISTS
    if not target.parent.is_dir():
        if not full_path:
            return pserrors.PATH_NOT_FOUND
        target.parent.mkdir(parents=True, exist_ok=True)
    return target


def write_copy(spec: VMSpec, source: Path, target: Path, destination: str) -> None:
    shutil.copyfile(source, target)
    corrupt = spec.faults.corrupt_copies
    if corrupt is not None and fnmatch.fnmatchcase(destination.casefold(), corrupt.casefold()):
        # Lab fault: the bytes arrive damaged (a flaky VMBus channel, a filter driver).
        with target.open("ab") as fh:
            fh.write(b"\x00corrupted")
