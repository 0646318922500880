"""DSC on pwsh-lab: the guest's DSC cmdlets are functions over the simulator's LCM, streamed live.

What is real here: the dsc step and its engine, the agent's PSRP client, the lab's PowerShell 7
server and its Hyper-V functions, the guest's remote session to a child pwsh, the guest invoker,
and the DSC cmdlets' parameter binding (functions with PSDesiredStateConfiguration's parameter
sets). What is simulated: the LCM itself (``vmbusops.sim.dsc``, reached through labctl's ``dsc``
operation), which Linux does not have.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import trio
from pwshlab_support import PwshLab
from tests.dsc.test_dsc_step import FEATURE_MOF, META_STOP, SCAFFOLD, dsc_step, source

from vmbusops.engine import EngineOptions, Journal, RunChanged, State, open_engine
from vmbusops.records import ErrorRecord, OutputRecord, PSObjectValue, VerboseRecord, WarningRecord

pytestmark = pytest.mark.pwsh

# web01 gets features: one whose install asks for a reboot, one that takes a while to install,
# one that takes longer than any test waits.
FEATURES = (
    'computer_name = "WEB01-LAB"\n'
    'features = [{ name = "Web-Server", restart = true }, { name = "Web-Mgmt-Tools", install_seconds = 3.0 },'
    ' { name = "Web-Slow", install_seconds = 600.0 }]'
)
SLOW_MOF = FEATURE_MOF.replace("[WindowsFeature]Web", "[WindowsFeature]Tools").replace('"Web-Server"', '"Web-Mgmt-Tools"')
ENDLESS_MOF = FEATURE_MOF.replace("[WindowsFeature]Web", "[WindowsFeature]Slow").replace('"Web-Server"', '"Web-Slow"')
DEMO_MOF = SCAFFOLD["dsc/localhost.mof"]


@pytest.fixture
def dsc_lab(pwsh_lab: PwshLab) -> PwshLab:
    text = pwsh_lab.path.read_text(encoding="utf-8")
    assert 'computer_name = "WEB01-LAB"' in text
    pwsh_lab.path.write_text(text.replace('computer_name = "WEB01-LAB"', FEATURES), encoding="utf-8")
    return PwshLab(pwsh_lab.path, pwsh_lab.home)


def stage_in_guest(lab: PwshLab, folder: str, mof: str) -> None:
    """Put a MOF (and the demo's resource module) in the guest as the dsc step would, by hand."""
    target = lab.guest_file("web01", folder)
    target.mkdir(parents=True, exist_ok=True)
    (target / "localhost.mof").write_text(mof, encoding="utf-8")
    for rel, text in SCAFFOLD.items():
        if rel.startswith("dsc/modules/"):
            inner = rel.removeprefix("dsc/modules/VmbusOpsDemo/").split("/")
            path = lab.guest_file("web01", "Program Files", "WindowsPowerShell", "Modules", "VmbusOpsDemo", "1.0.0", *inner)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")


async def test_the_dsc_step_converges_through_a_reboot_with_per_resource_progress(dsc_lab: PwshLab, tmp_path: Path) -> None:
    # StopConfiguration: after the reboot the LCM waits for the step, which resumes with -UseExisting.
    files = dict(SCAFFOLD)
    files["dsc/localhost.mof"] = FEATURE_MOF + DEMO_MOF
    files["dsc/localhost.meta.mof"] = META_STOP
    step = dsc_step(allow_reboot=True, max_reboots=2, meta_config="dsc/localhost.meta.mof")
    src = source(tmp_path, [step], files, ["web01"])
    events: list[Any] = []
    journal = Journal(tmp_path / "journal.sqlite")
    options = EngineOptions(heartbeat_interval=0.2, wait_ready_poll=0.3)
    async with (
        dsc_lab.open() as host,
        open_engine(host, journal, credential_for=lambda _: dsc_lab.credential(), host_name="pwsh-lab",
                    options=options, on_event=events.append) as engine,
    ):  # fmt: skip
        result = await engine.run_job(src)
        records, _ = await host.run_in_guest("web01", "Get-DscLocalConfigurationManager", dsc_lab.credential())
    assert result.state is State.SUCCESS, result.errors
    detail = result.details["web01"]["configure"]
    assert detail["changed"] == ["[WindowsFeature]Web", "[VmbusOpsDemoFile]Banner"]
    assert (detail["reboots"], detail["reboot_pending"], detail["files_copied"]) == (1, False, 5)
    progress = [e.step for e in events if isinstance(e, RunChanged) and e.step]
    assert any("[WindowsFeature]Web" in p for p in progress), progress
    assert any(p.endswith("2/2: 2 changed") for p in progress), progress
    # The custom resource wrote its file into the guest's C: drive (the lab folder).
    banner = dsc_lab.guest_file("web01", "ProgramData", "vmbusops", "banner.txt")
    assert banner.read_text(encoding="utf-8") == "Configured by vmbusops"
    # One record story, as on the simulator: the meta-configuration, the LCM asks for a reboot,
    # the host restarts the VM, -UseExisting resumes.
    texts = [str(r.content.get("message") or r.content.get("message_data")) for r in journal.records(result.job_id, vm="web01")]
    meta = next(i for i, t in enumerate(texts) if "methodName' = SendMetaConfigurationApply" in t)
    applied = next(i for i, t in enumerate(texts) if "methodName' = SendConfigurationApply" in t)
    asked = next(i for i, t in enumerate(texts) if "A reboot is required" in t)
    restart = next(i for i, t in enumerate(texts) if "restarting web01 from the host" in t)
    resumed = next(i for i, t in enumerate(texts) if "methodName' = ApplyConfiguration" in t)
    assert meta < applied < asked < restart < resumed
    assert dsc_lab.credential().password.reveal() not in "\n".join(texts)
    [settings] = [r.record.value for r in records if isinstance(r.record, OutputRecord)]
    assert isinstance(settings, PSObjectValue)
    assert settings.type_names[0].endswith("/MSFT_DSCMetaConfiguration")
    assert (settings.get("ActionAfterReboot"), settings.get("LCMState")) == ("StopConfiguration", "Idle")


async def test_lcm_verbose_records_arrive_while_the_lcm_is_still_working(dsc_lab: PwshLab) -> None:
    stage_in_guest(dsc_lab, "stage", SLOW_MOF)
    arrivals: list[tuple[float, str]] = []
    status: object = None
    async with dsc_lab.open() as host:
        async with host.invoke_in_guest(
            "web01", "Start-DscConfiguration -Path 'C:\\stage' -Wait -Verbose -Force; Get-DscConfigurationStatus",
            dsc_lab.credential(),
        ) as inv:
            async for rec in inv:
                if isinstance(rec.record, VerboseRecord):
                    arrivals.append((time.time(), rec.record.message))
                elif isinstance(rec.record, OutputRecord):
                    status = rec.record.value
        assert inv.outcome.ok, inv.outcome.error_messages
    assert isinstance(status, PSObjectValue)
    started = datetime.fromisoformat(str(status.get("StartDate"))).timestamp()
    duration = status.get("DurationInSeconds")
    assert isinstance(duration, float) and duration >= 3.0
    lcm_finished = started + duration

    def arrived(fragment: str) -> float:
        return next(t for t, m in arrivals if fragment in m)

    first = arrivals[0][0]
    assert "methodName' = SendConfigurationApply" in arrivals[0][1]
    # The LCM's first line reached the client while the slow resource was still installing,
    # seconds before the LCM finished; a batch at the end would have arrived after it.
    assert first < lcm_finished - 1.5, (first, lcm_finished)
    before_install = arrived("[ Start  Set      ]  [[WindowsFeature]Tools]")
    after_install = arrived("Installation started...")
    assert after_install - before_install > 1.5, arrivals
    # Record by record: the lines keep their order, none lost.
    assert [m for _, m in arrivals][-1].startswith("Time taken for configuration job to complete")


def _lab_processes(state_dir: str) -> list[int]:
    """Processes of this test's lab (the server, guests, labctl): its state directory is in their environment."""
    marker = f"VMBUSOPS_PWSHLAB_STATE={state_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_stopping_a_dsc_run_stops_the_lcm(dsc_lab: PwshLab) -> None:
    stage_in_guest(dsc_lab, "stage", ENDLESS_MOF)
    state_dir = str(dsc_lab.home / "sim")
    async with dsc_lab.open() as host:
        [server] = _lab_processes(state_dir)
        with trio.move_on_after(60) as scope:
            async with host.invoke_in_guest(
                "web01", "Start-DscConfiguration -Path 'C:\\stage' -Wait -Verbose -Force", dsc_lab.credential()
            ) as invocation:
                async for rec in invocation:
                    if isinstance(rec.record, VerboseRecord) and "[ Start  Set      ]  [[WindowsFeature]Slow]" in rec.record.message:
                        break
        assert not scope.cancelled_caught
        # Leaving the block stopped the pipeline: the guest function killed labctl, mid-install.
        for _ in range(150):
            if _lab_processes(state_dir) == [server]:
                break
            await trio.sleep(0.2)
        assert _lab_processes(state_dir) == [server]
    system = dsc_lab.guest_file("web01").parent / "system.json"
    assert not system.exists() or '"web-slow": true' not in system.read_text(encoding="utf-8")


def _lcm_view(records: list[Any]) -> list[tuple[str, str]]:
    """The LCM's records with its timings (which differ from run to run) left out."""
    view = []
    for rec in records:
        record = rec.record
        if isinstance(record, VerboseRecord | WarningRecord):
            text = re.sub(r"\d+\.\d+ seconds", "N seconds", record.message)
            view.append((type(record).__name__, text))
        elif isinstance(record, ErrorRecord):
            fqid = record.fqid.removesuffix(f",{record.activity}") if record.activity else record.fqid
            view.append(("error", f"{record.message} [{fqid}] {record.category} {record.exception_type}"))
    return view


UNSUPPORTED_MOF = """
instance of MSFT_ScriptResource as $MSFT_ScriptResource1ref
{
ResourceID = "[Script]Custom";
 GetScript = "@{}";
 TestScript = "$false";
 SetScript = "";
 ModuleName = "PSDesiredStateConfiguration";
 ModuleVersion = "1.0";
 ConfigurationName = "Demo";
};
"""


async def test_the_same_configuration_gives_the_same_lcm_lines_on_both_lanes(dsc_lab: PwshLab) -> None:
    script = (
        "Start-DscConfiguration -Path 'C:\\stage' -Wait -Verbose -Force; "
        "Start-DscConfiguration -Path 'C:\\unsupported' -Wait -Verbose -Force; "
        "Start-DscConfiguration -Path 'C:\\stage' -Wait -Verbose -Force"
    )
    views: dict[str, list[tuple[str, str]]] = {}
    for kind in ("sim", "pwsh-lab"):
        # A fresh guest each time: the same LCM decisions from the same starting point.
        shutil.rmtree(dsc_lab.guest_file("web01").parent, ignore_errors=True)  # C: and system.json
        stage_in_guest(dsc_lab, "stage", FEATURE_MOF.replace('"Web-Server"', '"Web-Mgmt-Tools"') + DEMO_MOF)
        stage_in_guest(dsc_lab, "unsupported", UNSUPPORTED_MOF)
        async with dsc_lab.open(kind) as host:
            records, _ = await host.run_in_guest("web01", script, dsc_lab.credential())
        views[kind] = _lcm_view(records)
    assert any("[ Start  Set      ]  [[VmbusOpsDemoFile]Banner]" in t for _, t in views["sim"])
    assert any(kind == "error" and "MSFT_ScriptResource" in t for kind, t in views["sim"])
    assert any("[ Skip   Set      ]  [[VmbusOpsDemoFile]Banner]" in t for _, t in views["sim"])
    assert views["pwsh-lab"] == views["sim"]


async def test_an_unmodelled_dsc_use_is_refused_by_name(dsc_lab: PwshLab) -> None:
    async with dsc_lab.open() as host:
        records, outcome = await host.run_in_guest(
            "web01", "Start-DscConfiguration -Path 'C:\\stage' -Verbose; Get-DscConfiguration", dsc_lab.credential()
        )
    errors = [r.record for r in records if isinstance(r.record, ErrorRecord)]
    assert [e.fqid.split(",")[0] for e in errors] == ["NotSupportedBySimulator"] * 2, errors
    assert "Start-DscConfiguration without -Wait" in errors[0].message
    assert "Get-DscConfiguration" in errors[1].message
    assert outcome.script_errors == 2
