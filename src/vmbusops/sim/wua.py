"""The simulated Windows Update Agent, for the patch step's script.

The guest PowerShell subset has no COM, so ``New-Object -ComObject Microsoft.Update.Session`` cannot
run. Instead the simulator recognises the patch step's exact script by the SHA-256 of its text
(:data:`PATCH_SCRIPT_SHA256`, pinned by a test against ``vmbusops.guestops.patch_script``) and runs
this simulated equivalent: the same arguments (mode, categories, KB ids), the same progress
records and the same output objects, over the lab's pending ``updates`` minus those already
installed. Any other text goes through the ordinary interpreter, where ``New-Object`` is reported
as unsupported: the simulator never pretends to run a script it does not know.

An installed update that needs a restart makes the guest report a pending reboot until the VM has
been restarted (``vmbusops.sim.guest_system``).
"""

from __future__ import annotations

from typing import Any, Final

import trio
import trio.lowlevel

from vmbusops.sim.guest import RECOGNISED_SCRIPTS, Emit, GuestSession, to_text
from vmbusops.sim.guest_system import ask_for_reboot, load_system, save_system
from vmbusops.sim.streams import ProgressUpdate, SimObject

PATCH_SCRIPT_SHA256: Final = "4502981d6f31b3ac595d966a1cfa382679c5f4ed8b002609ed7cb82c20e4927a"
_CUSTOM = ("System.Management.Automation.PSCustomObject", "System.Object")


def _csv(value: Any) -> list[str]:
    return [p.strip() for p in to_text(value).split(",") if p.strip()]


async def run_patch_script(session: GuestSession, emit: Emit) -> int:
    args = list(session.variables.get("args") or [])
    mode = to_text(args[0]) if args else "install"
    categories = {c.casefold() for c in _csv(args[1] if len(args) > 1 else "")}
    kbs = {k.upper().removeprefix("KB") for k in _csv(args[2] if len(args) > 2 else "")}
    store, spec, streams = session.store, session.spec, session.streams
    system = load_system(store, spec)

    def progress(status: str, percent: int, current: str | None = None, completed: bool = False) -> None:
        streams.progress(
            ProgressUpdate(
                activity="Windows Update",
                status=status,
                percent_complete=percent,
                current_operation=current,
                completed=completed,
            )
        )

    progress("Searching for updates", 0)
    await streams.checkpoint()
    pending = [u for u in spec.updates if u.kb.upper() not in {k.upper() for k in system.updates_installed}]
    selected = [
        u
        for u in pending
        if (not categories or any(c.casefold() in categories for c in u.categories))
        and (not kbs or u.kb.upper().removeprefix("KB") in kbs)
    ]
    installed = failed = 0
    reboot = False
    for n, update in enumerate(selected, start=1):
        percent = int(100 * (n - 1) / len(selected))
        names = ", ".join(update.categories)
        if mode.casefold() == "check":
            progress(f"{n} of {len(selected)}: would install", percent, update.kb)
            await emit(_result(update.kb, update.title, names, "Pending", False))
            continue
        progress(f"{n} of {len(selected)}: downloading", percent, update.kb)
        await streams.checkpoint()
        await trio.lowlevel.checkpoint()
        progress(f"{n} of {len(selected)}: installing", percent, update.kb)
        system.updates_installed.append(update.kb)
        installed += 1
        reboot = reboot or update.restart
        await emit(_result(update.kb, update.title, names, "Succeeded", update.restart))
    if reboot:
        ask_for_reboot(store, spec, system)
    if mode.casefold() != "check":
        save_system(store, spec, system)
    progress("Completed", 100, completed=True)
    await emit(
        SimObject(
            _CUSTOM,
            (
                ("vmbusopsPatchSummary", True),
                ("Found", len(selected)),
                ("Installed", installed),
                ("Failed", failed),
                ("RebootRequired", reboot),
            ),
        )
    )
    return 0


def _result(kb: str, title: str, categories: str, result: str, reboot: bool) -> SimObject:
    return SimObject(
        _CUSTOM,
        (("KB", kb), ("Title", title), ("Categories", categories), ("Result", result), ("RebootRequired", reboot)),
    )


RECOGNISED_SCRIPTS[PATCH_SCRIPT_SHA256] = run_patch_script

__all__ = ["PATCH_SCRIPT_SHA256", "run_patch_script"]
