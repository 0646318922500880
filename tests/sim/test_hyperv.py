"""Host cmdlets: their output and their real error records, driven over PSRP in memory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from psrpcore.types import PSInvocationState
from sim_testclient import (
    INVOKER_SCRIPT,
    PSRPTestClient,
    admin,
    credential,
    in_memory_client,
    invoker_params,
    run_in_guest,
    step_markers,
)

from vmbusops.errors import ConfigError
from vmbusops.sim.lab import Lab, parse_lab
from vmbusops.sim.state import HostStore, guest_path_to_host


async def test_get_vm_lists_lab_vms_with_state_and_heartbeat(client: PSRPTestClient) -> None:
    result = await client.run("Get-VM")
    by_name = {o.Name: o for o in result.output}
    assert list(by_name) == ["web01", "db01", "legacy01", "app01", "flaky01"]
    assert by_name["web01"].State == "Running"
    assert by_name["web01"].Heartbeat == "OkApplicationsHealthy"
    assert by_name["legacy01"].State == "Off"
    assert by_name["legacy01"].Heartbeat is None
    assert "Deserialized.Microsoft.HyperV.PowerShell.VirtualMachine" in by_name["web01"].PSTypeNames
    assert str(by_name["web01"]) == f"VirtualMachine (Name = 'web01') [Id = '{by_name['web01'].Id}']"


async def test_get_vm_wildcards_ids_and_not_found(client: PSRPTestClient, lab: Lab) -> None:
    wild = await client.run("Get-VM", Name="*01")
    assert len(wild.output) == 5
    assert wild.errors == []
    nothing = await client.run("Get-VM", Name="zz*")
    assert nothing.output == [] and nothing.errors == []
    by_id = await client.run("Get-VM", Id=lab.vms[1].id)
    assert [o.Name for o in by_id.output] == ["db01"]
    missing = await client.run("Get-VM", Name=["web01", "nosuch"])
    assert [o.Name for o in missing.output] == ["web01"]
    assert missing.state == PSInvocationState.Completed
    assert missing.error_messages == ['Hyper-V was unable to find a virtual machine with name "nosuch".']
    assert missing.error_ids == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"]
    record = missing.errors[0]
    assert str(record.CategoryInfo.Reason) == "VirtualizationException"
    assert str(record.CategoryInfo.TargetName) == "nosuch"


async def test_integration_services_enable_and_disable(client: PSRPTestClient) -> None:
    result = await client.run("Get-VMIntegrationService", VMName="app01")
    services = {o.Name: o for o in result.output}
    assert services["Guest Service Interface"].Enabled is False
    assert services["Guest Service Interface"].PrimaryStatusDescription is None
    assert services["Heartbeat"].PrimaryStatusDescription == "OK"
    await client.run("Enable-VMIntegrationService", Name="Guest Service Interface", VMName="app01")
    after = await client.run("Get-VMIntegrationService", VMName="app01", Name="Guest Service Interface")
    assert [(o.Name, o.Enabled) for o in after.output] == [("Guest Service Interface", True)]
    await client.run("Disable-VMIntegrationService", Name="Guest Service Interface", VMName="app01")
    again = await client.run("Get-VMIntegrationService", VMName="app01", Name="Guest*")
    assert [o.Enabled for o in again.output] == [False]
    bad = await client.run("Enable-VMIntegrationService", Name="Nope", VMName="app01")
    assert bad.error_ids == [
        "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.EnableVMIntegrationService"
    ]
    none = await client.run("Get-VMIntegrationService", VMName="nosuch")
    assert none.error_messages == ['Hyper-V was unable to find a virtual machine with name "nosuch".']


def _guest_file(store: HostStore, vm: str, path: str) -> Path:
    spec = store.lab.find(vm)
    assert spec is not None
    host = guest_path_to_host(store.guest_root(spec), path)
    assert host is not None
    return host


async def test_copy_vm_file_copies_and_enforces_force_and_full_path(
    client: PSRPTestClient, store: HostStore, tmp_path: Path
) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(b"\x00\x01payload" * 1000)
    args = {"Name": "web01", "SourcePath": str(source), "FileSource": "Host"}

    missing_dir = await client.run("Copy-VMFile", DestinationPath="C:\\Deploy\\app\\payload.bin", **args)
    assert missing_dir.error_messages == [
        "Failed to initiate copying files to the guest: The system cannot find the path specified. (0x80070003)"
    ]
    assert missing_dir.error_ids == ["OperationFailed,Microsoft.HyperV.PowerShell.Commands.CopyVMFile"]

    ok = await client.run(
        "Copy-VMFile", DestinationPath="C:\\Deploy\\app\\payload.bin", CreateFullPath=True, **args
    )
    assert ok.errors == [] and ok.state == PSInvocationState.Completed
    assert _guest_file(store, "web01", "C:\\deploy\\APP\\payload.bin").read_bytes() == source.read_bytes()

    exists = await client.run("Copy-VMFile", DestinationPath="C:\\Deploy\\app\\payload.bin", **args)
    assert exists.error_messages == [
        "Failed to initiate copying files to the guest: The file exists. (0x80070050)"
    ]

    source.write_bytes(b"new")
    forced = await client.run(
        "Copy-VMFile", DestinationPath="C:\\Deploy\\app\\payload.bin", Force=True, **args
    )
    assert forced.errors == []
    assert _guest_file(store, "web01", "C:\\Deploy\\app\\payload.bin").read_bytes() == b"new"

    into_dir = await client.run("Copy-VMFile", DestinationPath="C:\\Deploy", **args)
    assert into_dir.errors == []
    assert _guest_file(store, "web01", "C:\\Deploy\\payload.bin").read_bytes() == b"new"


async def test_copy_vm_file_errors_for_vm_state_and_guest_services(
    client: PSRPTestClient, tmp_path: Path
) -> None:
    source = tmp_path / "f.txt"
    source.write_text("x")
    common = {"SourcePath": str(source), "DestinationPath": "C:\\f.txt", "FileSource": "Host"}
    disabled = await client.run("Copy-VMFile", Name="app01", **common)
    # Hyper-V's real report for a disabled Guest Service Interface.
    assert disabled.error_messages == [
        "Failed to initiate copying files to the guest: The file exists. (0x80070050)"
    ]
    off = await client.run("Copy-VMFile", Name="legacy01", **common)
    assert off.error_messages[0].startswith("Failed to initiate copying files to the guest: ")
    assert "0x8007139F" in off.error_messages[0]
    nosuch = await client.run("Copy-VMFile", Name="nosuch", **common)
    assert nosuch.error_ids == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.CopyVMFile"]
    no_source = await client.run(
        "Copy-VMFile", Name="web01", **{**common, "SourcePath": str(tmp_path / "nope")}
    )
    assert "(0x80070002)" in no_source.error_messages[0]
    guest_source = await client.run("Copy-VMFile", Name="web01", **{**common, "FileSource": "Guest"})
    assert guest_source.state == PSInvocationState.Failed
    assert "CopyFileSourceType" in str(guest_source.state_event.reason.Exception.Message)


async def test_invoke_command_errors(client: PSRPTestClient, lab: Lab) -> None:
    good = admin(lab, "web01")
    missing = await run_in_guest(client, lab, "nosuch", "1", credential=good)
    assert missing.error_messages == ["The input VMName nosuch does not resolve to a single virtual machine."]
    assert missing.error_ids == ["InvalidVMNameNotSingle,Microsoft.PowerShell.Commands.InvokeCommandCommand"]
    assert missing.state == PSInvocationState.Completed

    by_id = await run_in_guest(
        client, lab, "web01", "1", vm_id="00000000-0000-0000-0000-0000000000ff", credential=good
    )
    assert by_id.error_ids == ["InvalidVMIdNotSingle,Microsoft.PowerShell.Commands.InvokeCommandCommand"]

    off = await run_in_guest(client, lab, "legacy01", "1", credential=good)
    assert off.error_messages == ["The virtual machine legacy01 is not in running state."]

    wrong = await run_in_guest(client, lab, "web01", "1", credential=credential("Administrator", "wrong"))
    assert wrong.error_messages == ["The credential is invalid."]
    assert wrong.output == []
    assert "wrong" not in repr(wrong.errors[0].Exception.Message)

    other_vm_password = await run_in_guest(client, lab, "db01", "1", credential=admin(lab, "web01"))
    assert other_vm_password.error_messages == ["The credential is invalid."]

    without = invoker_params(lab, "web01", "1")
    del without["Credential"]
    no_cred = await client.run(INVOKER_SCRIPT, script=True, **without)
    assert no_cred.state == PSInvocationState.Failed
    assert "missing mandatory parameters: Credential" in str(no_cred.state_event.reason.Exception.Message)


async def test_invoke_command_by_id_with_domain_forms_and_arguments(client: PSRPTestClient, lab: Lab) -> None:
    spec = lab.vms[1]
    password = lab.credential("db01")[1]
    assert password == "Explicit-Pa55"
    for user in ("Administrator", ".\\Administrator", "DB01\\administrator"):
        result = await run_in_guest(
            client,
            lab,
            "db01",
            '"$args"; $args[1]',
            vm_id=spec.id,
            credential=credential(user, password),
            arguments=["a", "b"],
        )
        assert result.output == ["a b", "b"], user


async def test_invoke_command_honours_latency(client: PSRPTestClient, lab: Lab) -> None:
    start = trio.current_time()
    await run_in_guest(client, lab, "db01", "1")
    assert trio.current_time() - start >= 0.05


async def test_the_invoker_reaches_one_vm(client: PSRPTestClient, lab: Lab) -> None:
    # The invoker's -VMName is a [string]: a list of VMs is refused as PowerShell refuses it.
    params = invoker_params(lab, "web01", "$env:COMPUTERNAME")
    params["VMName"] = ["web01", "db01"]
    result = await client.run(INVOKER_SCRIPT, script=True, **params)
    assert result.state == PSInvocationState.Failed
    assert str(result.state_event.reason.Exception.Message) == (
        "Cannot process argument transformation on parameter 'VMName'. Cannot convert value to type System.String."
    )
    one = await run_in_guest(client, lab, "web01", "$env:COMPUTERNAME")
    assert one.output == ["WEB01"]


async def test_session_drop_fault_after_n_records(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "flaky01", "1..20")
    # The invoker's markers do not count: the script's five records cross, then the session breaks.
    assert step_markers(result) == ["vmbusops-step begin 0"]
    assert result.output == [1, 2, 3, 4, 5]
    assert result.error_messages == [
        "An error has occurred which Windows PowerShell cannot handle. A remote session might have ended."
    ]
    assert result.error_ids == ["PSSessionStateBroken"]


async def test_restart_vm_reboots_with_no_contact_until_booted(client: PSRPTestClient, lab: Lab) -> None:
    await client.run("Restart-VM", Name="web01", Force=True)
    during = await client.run("Get-VM", Name="web01")
    assert during.output[0].Heartbeat == "NoContact"
    direct = await run_in_guest(client, lab, "web01", "1")
    assert direct.error_messages == [
        "An error has occurred which Windows PowerShell cannot handle. A remote session might have ended."
    ]
    await trio.sleep(lab.host.boot_seconds + 0.05)
    after = await client.run("Get-VM", Name="web01")
    assert after.output[0].Heartbeat == "OkApplicationsHealthy"
    ok = await run_in_guest(client, lab, "web01", "1")
    assert ok.output == [1]

    off = await client.run("Restart-VM", Name="legacy01", Force=True)
    assert off.error_ids == ["InvalidState,Microsoft.HyperV.PowerShell.Commands.RestartVM"]


async def test_restart_vm_wait_returns_after_boot(client: PSRPTestClient, lab: Lab) -> None:
    start = time.monotonic()
    await client.run("Restart-VM", Name="web01", Force=True, Wait=True)
    assert time.monotonic() - start >= lab.host.boot_seconds
    after = await client.run("Get-VM", Name="web01")
    assert after.output[0].Heartbeat == "OkApplicationsHealthy"


async def test_start_and_stop_vm(client: PSRPTestClient) -> None:
    started = await client.run("Start-VM", Name="legacy01")
    assert started.errors == []
    state = await client.run("Get-VM", Name="legacy01")
    assert state.output[0].State == "Running"
    assert state.output[0].Heartbeat == "NoContact"
    again = await client.run("Start-VM", Name="legacy01")
    assert [str(w.record.Message) for w in again.of(__import__("psrpcore").WarningRecordEvent)] == [
        "The virtual machine 'legacy01' is already in the specified state."
    ]
    await client.run("Stop-VM", Name="legacy01", TurnOff=True)
    stopped = await client.run("Get-VM", Name="legacy01")
    assert stopped.output[0].State == "Off"
    await client.run("Start-VM", Name="legacy01")
    await client.run("Stop-VM", Name="legacy01", Save=True)
    saved = await client.run("Get-VM", Name="legacy01")
    assert saved.output[0].State == "Saved"
    nosuch = await client.run("Stop-VM", Name="nosuch")
    assert nosuch.error_ids == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.StopVM"]


FAULT_LAB = r"""
[host]
name = "HV-FAULTS"
boot_seconds = 0.1
password_seed = "fault-seed"

[[vm]]
name = "noconnect01"
state = "Running"
[vm.faults]
connect_fails = true

[[vm]]
name = "socket01"
state = "Running"
[vm.faults]
socket_ends_after_records = 2
"""


async def test_lab_faults_break_powershell_direct_as_hyperv_does(tmp_path: Path) -> None:
    lab = parse_lab(FAULT_LAB, source="<fault lab>")
    store = HostStore(lab, tmp_path / "state")
    async with in_memory_client(store) as client:
        refused = await run_in_guest(client, lab, "noconnect01", "Write-Output never")
        ended = await run_in_guest(client, lab, "socket01", "1..5 | ForEach-Object { $_ }")
    assert refused.output == []
    assert refused.error_messages == [
        "A failure occurred while attempting to connect to the target virtual machine."
    ]
    assert step_markers(ended) == ["vmbusops-step begin 0"]
    assert ended.output == [1, 2]
    assert ended.error_messages == [
        "The background process reported an error with the following message: "
        '"The Hyper-V socket target process has ended.".'
    ]
    for result in (refused, ended):
        assert result.state == PSInvocationState.Completed
        (record,) = result.errors
        assert str(record.FullyQualifiedErrorId) == "PSSessionStateBroken"
        assert str(record.Exception.PSTypeNames[0]) == (
            "Deserialized.System.Management.Automation.Remoting.PSRemotingTransportException"
        )


def test_unknown_fault_keys_are_refused() -> None:
    with pytest.raises(ConfigError, match="faults"):
        parse_lab(FAULT_LAB.replace("connect_fails", "connect_flakes"), source="<fault lab>")
