"""Host operations against the simulated Hyper-V host: results and every classified error.

The simulator runs in this process (tests.simhost): these tests are about the host operations.
tests/remote/test_foundation_over_ssh.py runs the same functions again with ``open_host``
swapped for a real sshd in front of the simulator.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.simhost import open_sim_host

from vmbusops.config import Config
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.errors import (
    CredentialInvalidError,
    GuestFileExistsError,
    GuestNotReadyError,
    GuestServicesDisabledError,
    SessionLostError,
    VMNotFoundError,
    VMNotRunningError,
)
from vmbusops.guestops.host import HOST_CMDLETS, HyperVHost
from vmbusops.records import OutputRecord


def open_host(kind: str, *, config: Config, max_runspaces: int | None = None) -> AbstractAsyncContextManager[HyperVHost]:
    """The host these tests run on (``kind`` is always "sim"); the SSH copy of this module replaces it."""
    assert kind == "sim" and config.lab is not None
    return open_sim_host(config.lab, max_runspaces=max_runspaces or config.max_runspaces)


async def guest_text(host: HyperVHost, vm: str, path: str, cred: GuestCredential) -> list[object]:
    records, outcome = await host.run_in_guest(vm, f"Get-Content -Path '{path}'", cred)
    assert outcome.ok, outcome
    return [r.record.value for r in records if isinstance(r.record, OutputRecord)]


async def test_list_vms_reports_state_heartbeat_and_guest_services(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_host("sim", config=lab.config) as host:
        vms = {vm.name: vm for vm in await host.list_vms()}
    assert set(vms) == {"web01", "web02", "legacy01", "app01", "flaky01"}
    assert vms["web01"].running and vms["web01"].heartbeat_ok and vms["web01"].guest_services is True
    assert vms["legacy01"].state == "Off" and not vms["legacy01"].heartbeat_ok
    assert vms["app01"].guest_services is False
    assert len({vm.id for vm in vms.values()}) == 5


async def test_copy_in_then_read_back_in_the_guest(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    lab = make_lab()
    src = tmp_path / "settings.ini"
    src.write_text("mode=maintenance\n", encoding="utf-8")
    async with open_host("sim", config=lab.config) as host:
        await host.copy_to_guest("web01", str(src), "C:\\Deep\\New\\Folder\\settings.ini")
        assert await guest_text(host, "web01", "C:\\Deep\\New\\Folder\\settings.ini", lab.credential()) == [
            "mode=maintenance"
        ]
        src.write_text("mode=normal\n", encoding="utf-8")
        with pytest.raises(GuestFileExistsError, match="0x80070050") as exists:
            await host.copy_to_guest("web01", str(src), "C:\\Deep\\New\\Folder\\settings.ini", force=False)
        assert exists.value.hint and "without --no-force" in exists.value.hint  # the README: every class says what to do
        await host.copy_to_guest("web01", str(src), "C:\\Deep\\New\\Folder\\settings.ini")
        assert await guest_text(host, "web01", "C:\\Deep\\New\\Folder\\settings.ini", lab.credential()) == [
            "mode=normal"
        ]


async def test_disabled_guest_services_is_named_with_the_fix(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    lab = make_lab()
    src = tmp_path / "a.txt"
    src.write_text("x", encoding="utf-8")
    async with open_host("sim", config=lab.config) as host:
        with pytest.raises(GuestServicesDisabledError) as info:
            await host.copy_to_guest("app01", str(src), "C:\\a.txt")
        assert info.value.vm == "app01"
        assert "Enable-VMIntegrationService" in str(info.value)
        await host.enable_guest_services("app01")
        await host.copy_to_guest("app01", str(src), "C:\\a.txt")
        assert (await host.get_vm("app01")).guest_services is True


async def test_classified_errors(make_lab: Callable[..., Any], tmp_path: Path) -> None:
    lab = make_lab()
    cred = lab.credential()
    src = tmp_path / "a.txt"
    src.write_text("x", encoding="utf-8")
    async with open_host("sim", config=lab.config) as host:
        _, outcome = await host.run_in_guest("nosuchvm", "hostname", cred)
        assert isinstance(outcome.failure, VMNotFoundError)
        assert not outcome.failure.transient
        with pytest.raises(VMNotFoundError):
            await host.get_vm("nosuchvm")
        with pytest.raises(VMNotFoundError):
            await host.copy_to_guest("nosuchvm", str(src), "C:\\a.txt")

        _, outcome = await host.run_in_guest("legacy01", "hostname", cred)
        assert isinstance(outcome.failure, VMNotRunningError)
        with pytest.raises(VMNotRunningError):
            await host.copy_to_guest("legacy01", str(src), "C:\\a.txt")

        wrong = GuestCredential(cred.username, Secret("Wr0ng-Passw0rd"))
        _, outcome = await host.run_in_guest("web01", "hostname", wrong)
        assert isinstance(outcome.failure, CredentialInvalidError)
        assert "The credential is invalid." in str(outcome.failure)
        assert "Wr0ng-Passw0rd" not in str(outcome.failure)

        records, outcome = await host.run_in_guest(
            "flaky01", "1..10 | ForEach-Object { Write-Output $_ }", lab.credential("flaky01")
        )
        assert isinstance(outcome.failure, SessionLostError)
        assert outcome.failure.transient
        assert sum(1 for r in records if isinstance(r.record, OutputRecord)) == 3


async def test_restart_then_wait_guest_ready(make_lab: Callable[..., Any]) -> None:
    # Long enough a boot that the command right after the restart still finds it booting on a
    # loaded machine (over SSH too: tests/remote runs this test again there).
    lab = make_lab(boot_seconds=2)
    cred = lab.credential()
    async with open_host("sim", config=lab.config) as host:
        await host.restart_vm("web02")
        _, outcome = await host.run_in_guest("web02", "hostname", cred)
        assert outcome.failure is not None and outcome.failure.transient, outcome
        with pytest.raises(GuestNotReadyError, match="did not become ready"):
            await host.wait_guest_ready("web02", cred, timeout=0.05, poll_interval=0.01)
        with trio.fail_after(15):
            await host.wait_guest_ready("web02", cred, timeout=10, poll_interval=0.1)
        _, outcome = await host.run_in_guest("web02", "hostname", cred)
        assert outcome.ok
        with pytest.raises(VMNotRunningError):
            await host.wait_guest_ready("legacy01", cred, timeout=5)


async def test_start_and_stop_vm(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_host("sim", config=lab.config) as host:
        await host.start_vm("legacy01")
        assert (await host.get_vm("legacy01")).running
        await host.stop_vm("legacy01")
        assert (await host.get_vm("legacy01")).state == "Off"


def test_the_host_cmdlet_list_is_the_architecture_list() -> None:
    assert {
        "Get-VM", "Get-VMIntegrationService", "Get-VMGroup", "Enable-VMIntegrationService", "Copy-VMFile",
        "Invoke-Command", "Restart-VM", "Start-VM", "Stop-VM",
        # Checkpoint-guarded steps (guestops.checkpoints); Get-Volume is the Storage module's.
        "Checkpoint-VM", "Get-VMSnapshot", "Restore-VMSnapshot", "Remove-VMSnapshot", "Get-VMHardDiskDrive",
        "Get-Volume",
    } == HOST_CMDLETS
