"""What a simulated guest's Windows remembers besides its files: features, services, registry,
environment, installed updates, the LCM's state and history, and a pending reboot.

It lives in ``<guest root>/system.json`` beside the ``C`` drive (so no guest script sees it), is
seeded from the lab on first use, and is read and written whole: one guest runs one DSC or
Windows Update operation at a time, as a real LCM and a real update session do.

A reboot is noticed, not announced: a pending reboot records the VM's ``running_since`` when it
was asked for; once the VM has been (re)started since, the reboot has happened.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmbusops.sim.lab import VMSpec
from vmbusops.sim.state import HostStore

SYSTEM_FILE = "system.json"


@dataclass
class GuestSystem:
    features: dict[str, bool] = field(default_factory=dict)
    services: dict[str, dict[str, str]] = field(default_factory=dict)
    registry: dict[str, dict[str, Any]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    custom: dict[str, dict[str, Any]] = field(default_factory=dict)
    updates_installed: list[str] = field(default_factory=list)
    lcm_state: str = "Idle"
    history: list[dict[str, Any]] = field(default_factory=list)
    #: ``running_since`` of the boot in which a reboot was asked for; None when none is pending.
    reboot_asked_in_boot: float | None = None

    @staticmethod
    def seeded(spec: VMSpec) -> GuestSystem:
        return GuestSystem(
            features={f.name.casefold(): f.installed for f in spec.features},
            services={
                s.name.casefold(): {"name": s.name, "state": s.status.value, "startup": "Automatic"}
                for s in spec.services
            },
        )


def _path(store: HostStore, spec: VMSpec) -> Path:
    return store.guest_root(spec) / SYSTEM_FILE


def load_system(store: HostStore, spec: VMSpec) -> GuestSystem:
    path = _path(store, spec)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return GuestSystem.seeded(spec)
    system = GuestSystem.seeded(spec)
    for key, value in raw.items():
        if hasattr(system, key):
            setattr(system, key, value)
    reboot_pending(store, spec, system)
    return system


def save_system(store: HostStore, spec: VMSpec, system: GuestSystem) -> None:
    path = _path(store, spec)
    body = json.dumps(system.__dict__, indent=1, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".system-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(body)
    os.replace(tmp, path)


def reboot_pending(store: HostStore, spec: VMSpec, system: GuestSystem) -> bool:
    """Whether a reboot asked for has not happened yet (clears the flag once it has)."""
    if system.reboot_asked_in_boot is None:
        return False
    if store.runtime(spec).running_since != system.reboot_asked_in_boot:
        system.reboot_asked_in_boot = None
        if system.lcm_state == "PendingReboot":
            system.lcm_state = "Idle"
        return False
    return True


def ask_for_reboot(store: HostStore, spec: VMSpec, system: GuestSystem) -> None:
    system.reboot_asked_in_boot = store.runtime(spec).running_since
