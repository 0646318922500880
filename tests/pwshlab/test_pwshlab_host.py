"""HyperVHost's host operations on the pwsh-lab host: real PowerShell binds every command.

Each test opens one pwsh-lab host (a real ``pwsh -s`` with the lab module) and does as much as
it can on it: starting PowerShell costs seconds, a command a tenth of one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from pwshlab_support import PwshLab

from vmbusops.errors import (
    GuestFileExistsError,
    GuestServicesDisabledError,
    VMNotFoundError,
    VMNotRunningError,
)
from vmbusops.psrp.client import Command
from vmbusops.records import ErrorRecord, OutputRecord, PipelineState, PipelineStateRecord, PSObjectValue

pytestmark = pytest.mark.pwsh


async def test_vms_services_copies_and_power_through_real_powershell(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    source = tmp_path / "payload.txt"
    source.write_text("payload from the host\n", encoding="utf-8")
    async with pwsh_lab.open() as host:
        vms = {vm.name: vm for vm in await host.list_vms()}
        assert list(vms) == ["web01", "web02", "legacy01", "app01"]
        assert (vms["web01"].state, vms["web01"].heartbeat, vms["web01"].guest_services) == (
            "Running", "OkApplicationsHealthy", True,
        )
        assert (vms["legacy01"].state, vms["legacy01"].heartbeat) == ("Off", None)
        assert vms["app01"].guest_services is False
        assert vms["web01"].id == pwsh_lab.lab.find("web01").id  # type: ignore[union-attr]
        # Uptime is a TimeSpan on the wire, as Get-VM's is.
        assert vms["web01"].uptime is not None and vms["web01"].uptime.count(":") == 2

        assert (await host.get_vm("WEB02")).name == "web02"
        with pytest.raises(VMNotFoundError, match="unable to find a virtual machine"):
            await host.get_vm("nosuchvm")

        # Copy-VMFile: into the guest's C: folder of the lab state; a clash without -Force.
        await host.copy_to_guest("web01", str(source), "C:\\Deploy\\Sub\\payload.txt")
        landed = pwsh_lab.guest_file("web01", "Deploy", "Sub", "payload.txt")
        assert landed.read_text(encoding="utf-8") == "payload from the host\n"
        with pytest.raises(GuestFileExistsError, match=r"The file exists\. \(0x80070050\)"):
            await host.copy_to_guest("web01", str(source), "C:\\Deploy\\Sub\\payload.txt", force=False)
        # The Guest Service Interface is off on app01: the same HRESULT, told apart by the host.
        with pytest.raises(GuestServicesDisabledError):
            await host.copy_to_guest("app01", str(source), "C:\\payload.txt")
        await host.enable_guest_services("app01")
        assert (await host.get_vm("app01")).guest_services is True
        await host.copy_to_guest("app01", str(source), "C:\\payload.txt")
        assert pwsh_lab.guest_file("app01", "payload.txt").is_file()
        with pytest.raises(VMNotRunningError):
            await host.copy_to_guest("legacy01", str(source), "C:\\payload.txt")

        # Power: Stop-VM, Start-VM, Restart-VM change the lab state; a started guest boots first.
        await host.stop_vm("web02")
        assert (await host.get_vm("web02")).state == "Off"
        await host.start_vm("web02")
        started = await host.get_vm("web02")
        assert (started.state, started.heartbeat) == ("Running", "NoContact")
        await host.restart_vm("web01")
        assert (await host.get_vm("web01")).heartbeat == "NoContact"

        # The Hyper-V cmdlets' own binder: FileSource is the Hyper-V enum.
        records = await host.pool.run(
            [[Command("Copy-VMFile", {"Name": "web01", "SourcePath": str(source),
                                      "DestinationPath": "C:\\x.txt", "FileSource": "Guest"})]]
        )
    final = records[-1]
    assert isinstance(final, PipelineStateRecord) and final.state is PipelineState.FAILED
    assert final.error is not None
    assert 'Cannot convert value "Guest" to type "Microsoft.HyperV.PowerShell.CopyFileSourceType"' in final.error.message


async def test_one_lab_state_for_the_simulator_and_pwsh_lab(pwsh_lab: PwshLab, tmp_path: Path) -> None:
    source = tmp_path / "from-sim.txt"
    source.write_text("copied by the simulator\n", encoding="utf-8")
    async with pwsh_lab.open("sim") as sim:
        await sim.stop_vm("web02")
        await sim.enable_guest_services("app01")
        await sim.copy_to_guest("web01", str(source), "C:\\Shared\\from-sim.txt")
    async with pwsh_lab.open() as lab:
        vms = {vm.name: vm for vm in await lab.list_vms()}
        assert vms["web02"].state == "Off"
        assert vms["app01"].guest_services is True
        # The simulator's copy is a file in the guest PowerShell sees.
        records, outcome = await lab.run_in_guest(
            "web01", "Get-Content -LiteralPath 'C:\\Shared\\from-sim.txt'", pwsh_lab.credential()
        )
        assert outcome.ok, outcome.error_messages
        assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["copied by the simulator"]
        await lab.start_vm("legacy01")
        await lab.copy_to_guest("web01", str(source), "C:\\Shared\\from-lab.txt")
    async with pwsh_lab.open("sim") as sim:
        assert (await sim.get_vm("legacy01")).state == "Running"
        records, outcome = await sim.run_in_guest(
            "web01", "Get-Content 'C:\\Shared\\from-lab.txt'", pwsh_lab.credential()
        )
        assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["copied by the simulator"]


async def test_every_runspace_of_the_pool_has_the_lab_module(pwsh_lab: PwshLab) -> None:
    probe = (
        "Start-Sleep -Milliseconds 300; [runspace]::DefaultRunspace.InstanceId.ToString(); "
        "(Get-Command Get-VM, Copy-VMFile, Invoke-Command | ForEach-Object CommandType) -join ','"
    )
    answers: list[list[str]] = []
    async with pwsh_lab.open() as host:

        async def one() -> None:
            records = await host.pool.run([[Command(probe, {}, is_script=True)]])
            answers.append([str(r.value) for r in records if isinstance(r, OutputRecord)])

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
    assert len({runspace for runspace, _ in answers}) > 1, "the pipelines shared one runspace"
    assert {kinds for _, kinds in answers} == {"Function,Function,Function"}


async def test_a_string_script_block_is_refused_by_the_binder(pwsh_lab: PwshLab) -> None:
    async with pwsh_lab.open() as host:
        records = await host.pool.run(
            [[Command("Invoke-Command", {"VMName": "web01", "Credential": pwsh_lab.credential(),
                                         "ScriptBlock": "Write-Output 'never runs'"})]]
        )
        # The real cmdlet's parameter sets, from its own metadata.
        syntax = await host.pool.run(
            [[Command("(Get-Command Invoke-Command).ParameterSets.Name -join ','", {}, is_script=True)]]
        )
    final = records[-1]
    assert isinstance(final, PipelineStateRecord) and final.state is PipelineState.FAILED
    assert final.error is not None
    assert final.error.message == (
        "Cannot bind parameter 'ScriptBlock'. Cannot convert the \"Write-Output 'never runs'\" value of type "
        '"System.String" to type "System.Management.Automation.ScriptBlock".'
    )
    assert final.error.fqid.startswith("CannotConvertArgumentNoMessage,")
    assert not [r for r in records if isinstance(r, OutputRecord | ErrorRecord)]
    sets = str(syntax[0].value).split(",")  # type: ignore[union-attr]
    assert {"VMName", "VMId", "FilePathVMName", "FilePathVMId", "Session", "ComputerName"} <= set(sets)


async def test_lab_errors_are_the_simulators(pwsh_lab: PwshLab) -> None:
    async with pwsh_lab.open() as host:
        records = await host.pool.run([[Command("Get-VM", {"Name": ["web01", "ghost"]})]])
    vms = [r.value for r in records if isinstance(r, OutputRecord)]
    assert len(vms) == 1 and isinstance(vms[0], PSObjectValue)
    assert vms[0].type_names[0] == "Microsoft.HyperV.PowerShell.VirtualMachine"
    assert vms[0].get("State") == "Running"
    [error] = [r for r in records if isinstance(r, ErrorRecord)]
    assert error.message == 'Hyper-V was unable to find a virtual machine with name "ghost".'
    assert error.fqid == "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM,Get-VM"
    assert (error.category, error.exception_type) == ("InvalidArgument", "Microsoft.HyperV.PowerShell.VirtualizationException")
