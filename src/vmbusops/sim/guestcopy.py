"""Copy-VMFile's rules, in one place for both hosts that run them: the simulator and pwsh-lab.

:func:`copy_target` decides, from the VM's state and the guest's file system, where a host file
lands in the guest or which Hyper-V error text refuses it; :func:`write_copy` then writes it (with
the lab's ``corrupt_copies`` fault). The two are split so the simulator can do the write in a worker
thread while the decision stays with the store's owner.
"""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

from vmbusops.sim import pserrors
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.state import GUEST_SERVICE_INTERFACE, HostStore, guest_path_to_host, split_guest_path


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
