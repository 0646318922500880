"""The simulated LCM and Windows Update Agent, driven through the host operations (simulator in this process: tests.simhost)."""

from __future__ import annotations

import time
from pathlib import Path

import trio
from tests.builders import VM, lab_text
from tests.simhost import open_sim_host

from vmbusops.credentials import GuestCredential, Secret
from vmbusops.dsc.lcm import LcmParser, OperationEnded, OperationSkipped, RebootRequired
from vmbusops.guestops.host import HyperVHost
from vmbusops.guestops.patch_script import (
    INSTALL_SCRIPT,
    INSTALL_SCRIPT_SHA256,
    PATCH_SCRIPT,
    PATCH_SCRIPT_SHA256,
)
from vmbusops.records import (
    ErrorRecord,
    OutputRecord,
    ProgressRecord,
    PSObjectValue,
    VerboseRecord,
    WarningRecord,
)
from vmbusops.sim.lab import load_lab
from vmbusops.sim.wua import INSTALL_SCRIPT_SHA256 as SIM_INSTALL_SHA256
from vmbusops.sim.wua import PATCH_SCRIPT_SHA256 as SIM_PATCH_SHA256

LAB = lab_text(
    [VM("web01", more={
        "services": [{"name": "W3SVC", "display_name": "WWW", "status": "Stopped"}],
        "features": [{"name": "Web-Server", "restart": True}],
        "updates": [
            {"kb": "KB5034441", "title": "Security update", "categories": ["Security Updates"], "restart": True},
            {"kb": "KB2267602", "title": "Defender definitions", "categories": ["Definition Updates"]},
        ],
    })],
    name="HV-DSC",
    boot_seconds=0.2,
    password_seed="dsc-tests",
)  # fmt: skip

MOF = (Path(__file__).parent / "mofs" / "webserver_compiled.mof").read_text(encoding="utf-8")
CUSTOM_MOF = """
instance of Demo_Motd as $Demo_Motd1ref
{
ResourceID = "[DemoMotd]Motd";
 Path = "C:\\\\ProgramData\\\\motd.txt";
 Contents = "hello";
 ModuleName = "DemoRes";
 ModuleVersion = "2.0.0";
 ConfigurationName = "C";
};
"""
SCHEMA = '[ClassVersion("1.0.0"), FriendlyName("DemoMotd")] class Demo_Motd : OMI_BaseResource { [Key] String Path; [Write] String Contents; };'


async def _host(tmp_path: Path) -> tuple[object, GuestCredential]:
    lab = tmp_path / "lab.toml"
    lab.write_text(LAB)
    user, password = load_lab(lab).credential("web01")
    return open_sim_host(lab), GuestCredential(user, Secret(password), reference="t")


async def _copy_text(host: HyperVHost, tmp_path: Path, text: str, guest: str) -> None:
    src = tmp_path / f"f{abs(hash(guest))}"
    src.write_text(text, encoding="utf-8")
    await host.copy_to_guest("web01", str(src), guest)


def _events(records: list[object]) -> list[object]:
    parser = LcmParser()
    for rec in records:
        r = rec.record  # type: ignore[attr-defined]
        if isinstance(r, VerboseRecord | WarningRecord | ErrorRecord):
            parser.receive_record(r.stream.value, r.message)
    return list(parser.events())


META_STOP = (Path(__file__).parent / "mofs" / "metaconfig.meta.mof").read_text(encoding="utf-8").replace(
    '"ContinueConfiguration"', '"StopConfiguration"'
)
META_REBOOTS = META_STOP.replace("RebootNodeIfNeeded = False", "RebootNodeIfNeeded = True").replace(
    '"StopConfiguration"', '"ContinueConfiguration"'
)


async def _first_output(host: HyperVHost, script: str, cred: GuestCredential) -> PSObjectValue:
    recs, outcome = await host.run_in_guest("web01", script, cred)
    assert outcome.ok, outcome.error_messages
    value = next(r.record.value for r in recs if isinstance(r.record, OutputRecord))
    assert isinstance(value, PSObjectValue)
    return value


async def _lcm_state(host: HyperVHost, cred: GuestCredential) -> str:
    return str((await _first_output(host, "Get-DscLocalConfigurationManager", cred)).get("LCMState"))


async def _apply_until_reboot(host: HyperVHost, tmp_path: Path, cred: GuestCredential) -> None:
    await _copy_text(host, tmp_path, MOF, "C:\\Stage\\localhost.mof")
    recs, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -Path C:\\Stage -Wait -Verbose -Force", cred)
    assert outcome.ok, outcome.error_messages
    events = _events(recs)
    # The feature asks for a restart: the LCM stops after it, the File resource waits.
    assert any(isinstance(e, RebootRequired) for e in events)
    sets = [e.resource for e in events if isinstance(e, OperationEnded) and e.resource and e.operation.value == "Set"]
    assert sets == ["[WindowsFeature]IIS"]
    status = await _first_output(host, "Get-DscConfigurationStatus", cred)
    assert status.get("LCMState") == "PendingReboot" and status.get("RebootRequested") is True


async def test_after_a_reboot_the_lcm_resumes_by_itself_and_is_busy_meanwhile(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        assert (await _first_output(host, "Get-DscLocalConfigurationManager", cred)).get("ActionAfterReboot") == (
            "ContinueConfiguration"
        )
        await _apply_until_reboot(host, tmp_path, cred)
        await host.restart_vm("web01")
        await host.wait_guest_ready("web01", cred, timeout=10, poll_interval=0.05)
        # ActionAfterReboot = ContinueConfiguration: the LCM carries on by itself, and refuses
        # another operation until it is done.
        assert await _lcm_state(host, cred) == "Busy"
        _, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -UseExisting -Wait -Verbose", cred)
        assert any(
            "Cannot invoke the ApplyConfiguration method. The PerformRequiredConfigurationChecks method is in progress"
            in m
            for m in outcome.error_messages
        ), outcome.error_messages
        _, outcome = await host.run_in_guest("web01", "Test-DscConfiguration", cred)
        assert any("must return before TestConfiguration can be invoked" in m for m in outcome.error_messages)
        deadline = time.monotonic() + 10
        while (state := await _lcm_state(host, cred)) == "Busy":
            assert time.monotonic() < deadline
            await trio.sleep(0.1)
        assert state == "Idle"
        status = await _first_output(host, "Get-DscConfigurationStatus", cred)
        assert (status.get("Status"), status.get("Type"), status.get("RebootRequested")) == ("Success", "Reboot", False)
        recs, _ = await host.run_in_guest("web01", "Get-Content C:\\inetpub\\wwwroot\\index.html -Raw", cred)
        assert any(isinstance(r.record, OutputRecord) and "from DSC" in str(r.record.value) for r in recs)
        detail = await _first_output(host, "Test-DscConfiguration -Detailed", cred)
        assert detail.get("InDesiredState") is True


async def test_a_meta_configuration_that_stops_after_a_reboot_leaves_the_run_to_use_existing(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _copy_text(host, tmp_path, META_STOP, "C:\\Stage\\localhost.meta.mof")
        recs, outcome = await host.run_in_guest("web01", "Set-DscLocalConfigurationManager -Path C:\\Stage -Verbose", cred)
        assert outcome.ok, outcome.error_messages
        verbose = [r.record.message for r in recs if isinstance(r.record, VerboseRecord)]
        assert any("methodName' = SendMetaConfigurationApply" in v for v in verbose)
        lcm = await _first_output(host, "Get-DscLocalConfigurationManager", cred)
        assert (lcm.get("ActionAfterReboot"), lcm.get("RebootNodeIfNeeded"), lcm.get("RefreshMode")) == (
            "StopConfiguration",
            False,
            "PUSH",
        )
        recs, _ = await host.run_in_guest("web01", "Test-Path C:\\Windows\\System32\\Configuration\\MetaConfig.mof", cred)
        assert [r.record.value for r in recs if isinstance(r.record, OutputRecord)] == [True]

        await _apply_until_reboot(host, tmp_path, cred)
        await host.restart_vm("web01")
        await host.wait_guest_ready("web01", cred, timeout=10, poll_interval=0.1)
        assert await _lcm_state(host, cred) == "PendingConfiguration"
        recs, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -UseExisting -Wait -Verbose", cred)
        assert outcome.ok, outcome.error_messages
        events = _events(recs)
        assert [e.resource for e in events if isinstance(e, OperationSkipped)] == ["[WindowsFeature]IIS"]
        assert not any(isinstance(e, RebootRequired) for e in events)
        assert await _lcm_state(host, cred) == "Idle"
        detail = await _first_output(host, "Test-DscConfiguration -Detailed", cred)
        assert detail.get("InDesiredState") is True


async def test_reboot_node_if_needed_makes_the_lcm_restart_the_guest(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _copy_text(host, tmp_path, META_REBOOTS, "C:\\Stage\\localhost.meta.mof")
        _, outcome = await host.run_in_guest("web01", "Set-DscLocalConfigurationManager -Path C:\\Stage", cred)
        assert outcome.ok, outcome.error_messages
        await _copy_text(host, tmp_path, MOF, "C:\\Stage\\localhost.mof")
        _, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -Path C:\\Stage -Wait -Force", cred)
        assert outcome.ok, outcome.error_messages
        # No Restart-VM from the host: the LCM restarted the guest, which resumed the run by itself.
        await host.wait_guest_ready("web01", cred, timeout=10, poll_interval=0.05)
        deadline = time.monotonic() + 10
        while await _lcm_state(host, cred) == "Busy":
            assert time.monotonic() < deadline
            await trio.sleep(0.1)
        recs, _ = await host.run_in_guest("web01", "Get-DscConfigurationStatus -All", cred)
        runs = [r.record.value for r in recs if isinstance(r.record, OutputRecord)]
        assert [(v.get("Type"), v.get("Status")) for v in runs] == [("Reboot", "Success"), ("Initial", "Success")]  # type: ignore[union-attr]


FILE_MOF = """
instance of MSFT_FileDirectoryConfiguration as $MSFT_FileDirectoryConfiguration1ref
{
ResourceID = "[File]Motd";
 DestinationPath = "C:\\\\ProgramData\\\\motd.txt";
 Contents = "hello";
 ModuleName = "PSDesiredStateConfiguration";
 ModuleVersion = "1.0";
 ConfigurationName = "C";
};
"""
CONSISTENCY = "\\Microsoft\\Windows\\Desired State Configuration\\"


async def test_the_consistency_task_makes_the_lcm_busy_and_checks_without_setting(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _copy_text(host, tmp_path, FILE_MOF, "C:\\Stage\\localhost.mof")
        _, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -Path C:\\Stage -Wait -Force", cred)
        assert outcome.ok, outcome.error_messages
        # Drift, then the built-in task Windows ships starts a consistency check.
        await _copy_text(host, tmp_path, "changed", "C:\\ProgramData\\motd.txt")
        (task,) = await _outputs(host, f"Get-ScheduledTask -TaskName Consistency -TaskPath '{CONSISTENCY}'", cred)
        assert isinstance(task, PSObjectValue) and task.get("State") == "Ready"
        _, outcome = await host.run_in_guest("web01", f"Start-ScheduledTask -TaskName Consistency -TaskPath '{CONSISTENCY}'", cred)
        assert outcome.ok, outcome.error_messages
        assert await _lcm_state(host, cred) == "Busy"
        _, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -UseExisting -Wait", cred)
        assert any("must return before ApplyConfiguration can be invoked" in m for m in outcome.error_messages)
        deadline = time.monotonic() + 10
        while await _lcm_state(host, cred) == "Busy":
            assert time.monotonic() < deadline
            await trio.sleep(0.1)
        status = await _first_output(host, "Get-DscConfigurationStatus", cred)
        assert status.get("Type") == "Consistency"
        not_in = status.get("ResourcesNotInDesiredState")
        assert isinstance(not_in, tuple) and [r.get("ResourceId") for r in not_in] == ["[File]Motd"]  # type: ignore[union-attr]
        # ApplyAndMonitor (the default) reports drift and corrects nothing.
        assert await _outputs(host, "Get-Content C:\\ProgramData\\motd.txt", cred) == ["changed"]


async def test_meta_configuration_values_outside_the_lcm_are_refused(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        pull = META_STOP.replace('"Push"', '"Pull"')
        await _copy_text(host, tmp_path, pull, "C:\\Stage\\localhost.meta.mof")
        _, outcome = await host.run_in_guest("web01", "Set-DscLocalConfigurationManager -Path C:\\Stage", cred)
        assert any("Push mode only" in m for m in outcome.error_messages), outcome.error_messages
        lcm = await _first_output(host, "Get-DscLocalConfigurationManager", cred)
        assert lcm.get("ActionAfterReboot") == "ContinueConfiguration"  # nothing was applied


async def test_custom_resource_needs_its_module(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _copy_text(host, tmp_path, CUSTOM_MOF, "C:\\Stage\\localhost.mof")
        recs, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -Path C:\\Stage -Wait -Verbose -Force", cred)
        assert any("does not exist at the PowerShell module path" in m for m in outcome.error_messages)
        base = "C:\\Program Files\\WindowsPowerShell\\Modules\\DemoRes\\2.0.0"
        await _copy_text(host, tmp_path, "@{ ModuleVersion = '2.0.0' }", f"{base}\\DemoRes.psd1")
        await _copy_text(host, tmp_path, SCHEMA, f"{base}\\DSCResources\\Demo_Motd\\Demo_Motd.schema.mof")
        recs, outcome = await host.run_in_guest("web01", "Start-DscConfiguration -Path C:\\Stage -Wait -Verbose -Force", cred)
        assert outcome.ok, outcome.error_messages
        recs, _ = await host.run_in_guest("web01", "Get-Content C:\\ProgramData\\motd.txt", cred)
        assert [r.record.value for r in recs if isinstance(r.record, OutputRecord)] == ["hello"]


def test_the_simulator_recognises_exactly_the_shipped_patch_scripts() -> None:
    assert (SIM_PATCH_SHA256, SIM_INSTALL_SHA256) == (PATCH_SCRIPT_SHA256, INSTALL_SCRIPT_SHA256)


def _patch_args(mode: str, categories: str = "") -> list[object]:
    return [mode, categories, "", 600, INSTALL_SCRIPT]


async def _outputs(host: HyperVHost, script: str, cred: GuestCredential) -> list[object]:
    recs, _ = await host.run_in_guest("web01", script, cred)
    return [r.record.value for r in recs if isinstance(r.record, OutputRecord)]


async def test_patch_script_checks_in_the_session_and_installs_through_a_system_task(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        recs, outcome = await host.run_in_guest("web01", PATCH_SCRIPT, cred, arguments=_patch_args("check", "Security Updates"))
        assert outcome.ok
        values = [r.record.value for r in recs if isinstance(r.record, OutputRecord)]
        assert [(v.get("KB"), v.get("Result")) for v in values[:-1]] == [("KB5034441", "Pending")]  # type: ignore[union-attr]
        recs, outcome = await host.run_in_guest("web01", PATCH_SCRIPT, cred, arguments=_patch_args("install"))
        assert outcome.ok, outcome.error_messages
        values = [r.record.value for r in recs if isinstance(r.record, OutputRecord)]
        summary = values[-1]
        assert isinstance(summary, PSObjectValue)
        assert (summary.get("Installed"), summary.get("RebootRequired")) == (2, True)
        statuses = [r.record.status_description for r in recs if isinstance(r.record, ProgressRecord)]
        assert any(s.startswith("Installing as SYSTEM (scheduled task \\vmbusops\\vmbusops-wua-") for s in statuses), statuses
        assert any(s == "2 of 2: installing" for s in statuses), statuses
        # The task and its folder are gone afterwards.
        assert await _outputs(host, "Get-ScheduledTask -TaskPath '\\vmbusops\\'", cred) == []
        assert await _outputs(host, "Get-ChildItem C:\\ProgramData\\vmbusops\\wua", cred) == []
        # Installed updates are no longer offered.
        recs, _ = await host.run_in_guest("web01", PATCH_SCRIPT, cred, arguments=_patch_args("check"))
        summary = [r.record.value for r in recs if isinstance(r.record, OutputRecord)][-1]
        assert isinstance(summary, PSObjectValue) and summary.get("Found") == 0
        # Any other COM script is refused by the subset, never pretended.
        _, outcome = await host.run_in_guest("web01", "New-Object -ComObject Microsoft.Update.Session", cred)
        assert outcome.error_messages and "not recognized" in outcome.error_messages[0]


async def _stage_install(host: HyperVHost, tmp_path: Path) -> None:
    # As Set-Content -Encoding UTF8 leaves them: a BOM, the text, a newline.
    src = tmp_path / "install.ps1"
    src.write_bytes(b"\xef\xbb\xbf" + (INSTALL_SCRIPT + "\r\n").encode("utf-8"))
    await host.copy_to_guest("web01", str(src), "C:\\Stage\\install.ps1")
    await _copy_text(host, tmp_path, '{"Categories": "", "KBs": ""}', "C:\\Stage\\request.json")


async def test_windows_update_refuses_to_download_for_the_remote_session(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _stage_install(host, tmp_path)
        # The install script run straight over PowerShell Direct, as the patch step once did.
        _, outcome = await host.run_in_guest("web01", INSTALL_SCRIPT, cred, arguments=["C:\\Stage"])
        assert not outcome.ok
        assert any(
            'Exception calling "Download" with "0" argument(s): "Exception from HRESULT: 0x80070005 (E_ACCESSDENIED)"' in m
            for m in outcome.error_messages
        ), outcome.error_messages
        lines = await _outputs(host, "Get-Content C:\\Stage\\results.jsonl", cred)
        assert '"Kind":"error"' in str(lines[-1]) and "0x80070005" in str(lines[-1])
        recs, _ = await host.run_in_guest("web01", PATCH_SCRIPT, cred, arguments=_patch_args("check"))
        summary = [r.record.value for r in recs if isinstance(r.record, OutputRecord)][-1]
        assert isinstance(summary, PSObjectValue) and summary.get("Found") == 2  # nothing was installed


TASK_SETUP = """
$action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument '-NoProfile -File "C:\\Stage\\{file}" -Folder "C:\\Stage"'
$principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\\SYSTEM' -LogonType ServiceAccount -RunLevel Highest
Register-ScheduledTask -TaskName {name} -TaskPath '\\ops\\' -Action $action -Principal $principal
Start-ScheduledTask -TaskName {name} -TaskPath '\\ops\\'
"""


async def test_scheduled_task_cmdlets_run_the_install_script_as_system_and_nothing_else(tmp_path: Path) -> None:
    cm, cred = await _host(tmp_path)
    async with cm as host:  # type: ignore[attr-defined]
        await _stage_install(host, tmp_path)
        _, outcome = await host.run_in_guest("web01", TASK_SETUP.format(file="install.ps1", name="wu"), cred)
        assert outcome.ok, outcome.error_messages
        (task,) = await _outputs(host, "Get-ScheduledTask -TaskName wu", cred)
        assert isinstance(task, PSObjectValue) and task.get("TaskPath") == "\\ops\\"
        (info,) = await _outputs(host, "Get-ScheduledTaskInfo -TaskName wu -TaskPath '\\ops\\'", cred)
        assert isinstance(info, PSObjectValue) and info.get("LastTaskResult") == 0
        lines = await _outputs(host, "Get-Content C:\\Stage\\results.jsonl", cred)
        assert '"Kind":"summary"' in str(lines[-1]) and '"Installed":2' in str(lines[-1])

        # A task whose script the simulator does not know does not pretend to run.
        await _copy_text(host, tmp_path, "Write-Output 'something else'", "C:\\Stage\\other.ps1")
        _, outcome = await host.run_in_guest("web01", TASK_SETUP.format(file="other.ps1", name="other"), cred)
        assert any("does not support running the scheduled task action" in m for m in outcome.error_messages)
        (info,) = await _outputs(host, "Get-ScheduledTaskInfo -TaskName other -TaskPath '\\ops\\'", cred)
        assert isinstance(info, PSObjectValue) and info.get("LastTaskResult") == 1

        _, outcome = await host.run_in_guest(
            "web01", "Unregister-ScheduledTask -TaskName wu -Confirm:$false; Unregister-ScheduledTask -TaskName other -Confirm:$false", cred
        )
        assert outcome.ok, outcome.error_messages
        assert await _outputs(host, "Get-ScheduledTask -TaskPath '\\ops\\'", cred) == []
