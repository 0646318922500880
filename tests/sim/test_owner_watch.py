"""A fleet host's open PowerShell Direct sessions share one watch (``sim.hyperv.OwnerWatch``): one
task looks at every open session's VM, and a migration breaks only the session of the VM that
moved, under its running command, while the others go on."""

from __future__ import annotations

from pathlib import Path

import trio
from tests.fleet.fleetprocs import lab_text
from tests.simhost import open_sim_host

from vmbusops.credentials import GuestCredential, Secret
from vmbusops.guestops.host import GuestInvocation
from vmbusops.records import ErrorRecord, OutputRecord
from vmbusops.sim import default_state_dir
from vmbusops.sim.cluster import migrate_vm
from vmbusops.sim.lab import load_lab
from vmbusops.sim.pserrors import SOCKET_PROCESS_ENDED
from vmbusops.sim.state import HostStore

VMS = ("web01", "web02", "web03")

TICKS = 'foreach ($i in 1..100000) { Write-Output "tick $i"; Start-Sleep -Milliseconds 20 }'


def watches() -> int:
    """The tasks watching owners running now in this trio run, system tasks included (by name:
    a watch task of its own per session was ``HyperVHost._watched.<locals>.watch``)."""
    found = 0
    todo = [trio.lowlevel.current_root_task()]
    while todo:
        task = todo.pop()
        found += task.name.endswith("watch")
        todo += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return found


async def test_sessions_share_one_watch_and_a_migration_breaks_only_the_moved_vms(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text(lab_text(dict.fromkeys(VMS, "HV-A")), encoding="utf-8")  # HV-A and HV-B: nodes of CL1
    lab = load_lab(path)
    store = HostStore(lab, default_state_dir())
    credential = {}
    for vm in VMS:
        user, password = lab.credential(vm)
        credential[vm] = GuestCredential(user, Secret(password), reference="lab")
    ticks: dict[str, int] = {}
    errors: dict[str, list[str]] = {}
    started = {vm: trio.Event() for vm in credential}
    moved = trio.Event()

    async def follow(run: GuestInvocation, vm: str) -> None:
        async for rec in run:
            if isinstance(rec.record, OutputRecord):
                ticks[vm] = ticks.get(vm, 0) + 1
                started[vm].set()
                if moved.is_set() and vm != "web01" and ticks[vm] >= 3 + moved_at[vm]:
                    return  # it went on after the move: enough
            elif isinstance(rec.record, ErrorRecord):
                errors.setdefault(vm, []).append(rec.record.message)

    moved_at: dict[str, int] = {}
    async with open_sim_host(path, identity="HV-A") as a:
        assert watches() == 0  # no session open: nothing polls
        with trio.fail_after(60):
            async with (
                a.invoke_in_guest("web01", TICKS, credential["web01"]) as r1,
                a.invoke_in_guest("web02", TICKS, credential["web02"]) as r2,
                a.invoke_in_guest("web03", TICKS, credential["web03"]) as r3,
                trio.open_nursery() as nursery,
            ):
                for vm, run in (("web01", r1), ("web02", r2), ("web03", r3)):
                    nursery.start_soon(follow, run, vm)
                for event in started.values():
                    await event.wait()
                assert watches() == 1  # three sessions, one watch
                moved_at.update(ticks)
                migrate_vm(store, "web01", "HV-B")
                moved.set()
        assert errors == {"web01": [SOCKET_PROCESS_ENDED]}
        assert r1.outcome.failure is not None and r2.outcome.failure is None
        assert ticks["web02"] >= moved_at["web02"] + 3 and ticks["web03"] >= moved_at["web03"] + 3
        # Every session closed: the watch ends at its next look.
        with trio.fail_after(5):
            while watches():  # noqa: ASYNC110 - the task's end is seen by looking, not by an event
                await trio.sleep(0.05)
