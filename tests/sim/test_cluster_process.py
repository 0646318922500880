"""A simulated fleet as real simulator processes (``sim:HOST`` through ``open_host``): disjoint VMs,
a live migration under a running guest script, a node that dies and one that comes back."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from tests.simhost import open_sim_host

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.errors import (
    ConfigError,
    HostProcessExitedError,
    SessionLostError,
    VmbusOpsError,
    VMNotFoundError,
)
from vmbusops.guestops.connect import open_host
from vmbusops.records import ErrorRecord, OutputRecord
from vmbusops.sim import default_state_dir
from vmbusops.sim.cluster import fail_host, migrate_vm, restore_host
from vmbusops.sim.lab import load_lab
from vmbusops.sim.pserrors import SOCKET_PROCESS_ENDED
from vmbusops.sim.state import HostStore

FLEET = """
[host]
boot_seconds = 600.0
password_seed = "fleet-process-seed"

[[hosts]]
name = "HV-A"
cluster = "CL1"
[[hosts]]
name = "HV-B"
cluster = "CL1"
[[hosts]]
name = "HV-L"

[[vm]]
name = "web01"
guest_services = true
[[vm]]
name = "db01"
host = "HV-B"
[[vm]]
name = "lone01"
host = "HV-L"
"""

# A guest script far longer than any test waits for: it writes a file, then one record a tick.
LONG_SCRIPT = (
    "Set-Content -Path 'C:\\Windows\\Temp\\before-move.txt' -Value 'written on the first host'\n"
    "foreach ($i in 1..100000) { Write-Output \"tick $i\"; Start-Sleep -Milliseconds 50 }"
)


class Fleet:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lab = load_lab(path)
        self.config = Config(host="sim", lab=str(path))
        self.store = HostStore(self.lab, default_state_dir())
        user, password = self.lab.credential("web01")
        self.credential = GuestCredential(user, Secret(password), reference="lab")


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET, encoding="utf-8")
    return Fleet(path)


def outputs(records: list[object]) -> list[object]:
    return [r.record.value for r in records if isinstance(r.record, OutputRecord)]  # type: ignore[attr-defined]


async def test_each_host_sees_only_the_vms_it_owns(fleet: Fleet) -> None:
    async with open_host("sim:HV-A", config=fleet.config) as a, open_host("sim:HV-B", config=fleet.config) as b:
        assert [vm.name for vm in await a.list_vms()] == ["web01"]
        assert [vm.name for vm in await b.list_vms()] == ["db01"]
        # A VM of another host is unknown here, with Hyper-V's own errors.
        with pytest.raises(VMNotFoundError, match='unable to find a virtual machine with name "db01"'):
            await a.get_vm("db01")
        _, outcome = await a.run_in_guest("db01", "'x'", fleet.credential)
        assert isinstance(outcome.failure, VMNotFoundError)
        assert "The input VMName db01 does not resolve to a single virtual machine." in str(outcome.failure)
    async with open_host("sim", config=fleet.config) as everything:
        assert [vm.name for vm in await everything.list_vms()] == ["web01", "db01", "lone01"]


async def test_a_host_the_lab_does_not_have_is_refused(fleet: Fleet) -> None:
    with pytest.raises(ConfigError, match="has no host named 'HV-Z'"):
        async with open_host("sim:HV-Z", config=fleet.config):
            pass


async def test_migration_breaks_the_running_pipeline_and_the_guest_goes_on_on_the_new_host(fleet: Fleet) -> None:
    async with open_host("sim:HV-A", config=fleet.config) as a, open_host("sim:HV-B", config=fleet.config) as b:
        records = []
        with trio.fail_after(60):
            async with a.invoke_in_guest("web01", LONG_SCRIPT, fleet.credential) as run:
                async for rec in run:
                    records.append(rec)
                    if outputs(records) == ["tick 1"]:
                        move = migrate_vm(fleet.store, "web01", "HV-B")
                        assert (move.source, move.to) == ("HV-A", "HV-B")
        # The pipeline ended long before the script would have: with the broken session's error.
        ticks = outputs(records)
        assert 1 <= len(ticks) < 100000
        errors = [r.record for r in records if isinstance(r.record, ErrorRecord)]
        assert [e.message for e in errors] == [SOCKET_PROCESS_ENDED]
        assert errors[0].fqid == "PSSessionStateBroken"
        assert isinstance(run.outcome.failure, SessionLostError) and run.outcome.failure.transient
        # The old host no longer has the VM; the new one runs commands in the same guest, same files.
        assert [vm.name for vm in await a.list_vms()] == []
        assert [vm.name for vm in await b.list_vms()] == ["web01", "db01"]
        records, outcome = await b.run_in_guest("web01", "Get-Content -Path 'C:\\Windows\\Temp\\before-move.txt'", fleet.credential)
        assert outcome.ok, outcome
        assert outputs(records) == ["written on the first host"]
        info = await b.get_vm("web01")
        assert info.running and info.heartbeat_ok  # live: no reboot


async def fail_host_under_a_running_script(fleet: Fleet) -> None:
    async with open_host("sim:HV-A", config=fleet.config) as a:
        with trio.fail_after(60):
            async with a.invoke_in_guest("web01", LONG_SCRIPT, fleet.credential) as run:
                async for rec in run:
                    if outputs([rec]) == ["tick 1"]:
                        moves = fail_host(fleet.store, "HV-A")
                        assert [(m.vm, m.to, m.restarted) for m in moves] == [("web01", "HV-B", True)]


async def test_a_failed_node_dies_its_vms_restart_on_another_and_it_comes_back(fleet: Fleet) -> None:
    async with open_host("sim:HV-B", config=fleet.config) as b:
        # The node dies under the running script: its process is gone (a dead node answers nothing).
        with pytest.raises(HostProcessExitedError, match=r"exit code 69"):
            await fail_host_under_a_running_script(fleet)
        # Failed over and restarted: the other node has it, booting (NoContact) as after Start-VM.
        web = await b.get_vm("web01")
        assert web.running and web.heartbeat == "NoContact" and web.uptime in ("00:00:00", "00:00:01", "00:00:02")
        # The dead node serves nothing; a new process says why, as a host that cannot be reached.
        with pytest.raises(HostProcessExitedError, match=r"exit code 69.*HV-A is down .*restore-host HV-A"):
            async with open_host("sim:HV-A", config=fleet.config):
                pass
    restore_host(fleet.store, "HV-A")
    async with open_host("sim:HV-A", config=fleet.config) as a:
        assert [vm.name for vm in await a.list_vms()] == []  # no failback


async def test_a_lone_host_that_fails_keeps_its_vm_unreachable_until_it_is_back(fleet: Fleet) -> None:
    fail_host(fleet.store, "HV-L")
    async with open_host("sim", config=fleet.config) as everything:
        assert "lone01" in [vm.name for vm in await everything.list_vms()]
    with pytest.raises(HostProcessExitedError, match="HV-L is down"):
        async with open_host("sim:HV-L", config=fleet.config):
            pass
    restore_host(fleet.store, "HV-L")
    async with open_host("sim:HV-L", config=fleet.config) as lone:
        vm = await lone.get_vm("lone01")
        assert vm.running and vm.heartbeat == "NoContact"  # the node rebooted: so did its VMs


async def test_in_process_a_failed_host_refuses_every_command(fleet: Fleet) -> None:
    """tests.simhost's in-process simulator cannot exit as a dead node's process does: its
    commands fail instead, so an agent test over it still sees the host gone."""
    async with open_sim_host(fleet.path, identity="hv-b") as b:
        assert [vm.name for vm in await b.list_vms()] == ["db01"]
        fail_host(fleet.store, "HV-B")
        with pytest.raises(VmbusOpsError, match=r"The simulated Hyper-V host HV-B is down"):
            await b.list_vms()
