"""The dsc and patch steps through the engine, against the simulator (in this process: tests.simhost)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.builders import VM, manifest, write_files, write_lab
from tests.engine.conftest import credential_for
from tests.simhost import open_sim_host

from vmbusops.bundle.scaffold import EXAMPLE_FILES
from vmbusops.credentials import GuestCredential, Secret
from vmbusops.engine import EngineOptions, JobSource, Journal, RunChanged, State, open_engine
from vmbusops.records import OutputRecord
from vmbusops.sim.lab import load_lab

FEATURE_MOF = """
instance of MSFT_RoleResource as $MSFT_RoleResource1ref
{
ResourceID = "[WindowsFeature]Web";
 Ensure = "Present";
 Name = "Web-Server";
 ModuleName = "PsDesiredStateConfiguration";
ModuleVersion = "1.0";
 ConfigurationName = "Demo";
};
"""


def lab(tmp_path: Path, *vms: VM) -> Path:
    return write_lab(tmp_path, vms, name="HV-DSC", boot_seconds=0.2)


WEB_SERVER = {"name": "Web-Server", "restart": True}


def source(tmp_path: Path, steps: list[dict[str, Any]], files: dict[str, str], vms: list[str], *, gsi: bool = False) -> JobSource:
    root = tmp_path / f"bundle-{uuid.uuid4().hex[:6]}"
    job = manifest(
        vms, steps, name="dsc-test", files=write_files(root, files), execution={"max_concurrency": 8, "max_errors": 8}
    )
    return JobSource(manifest=job, directory=root, source="test", enable_guest_services=gsi)


SCAFFOLD = {k: v for k, v in EXAMPLE_FILES.items() if k.startswith("dsc/")}


async def run_job(lab_path: Path, src: JobSource, tmp_path: Path, **options: Any) -> tuple[Any, list[Any], Journal]:
    events: list[Any] = []
    journal = Journal(tmp_path / f"j-{uuid.uuid4().hex[:6]}.sqlite")
    opts = EngineOptions(heartbeat_interval=0.1, wait_ready_poll=0.1, **options)
    async with (
        open_sim_host(lab_path, max_runspaces=64) as host,
        open_engine(host, journal, credential_for=credential_for, options=opts, on_event=events.append) as engine,
    ):
        result = await engine.run_job(src)
    return result, events, journal


def dsc_step(**extra: Any) -> dict[str, Any]:
    return {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"], "modules": ["dsc/modules/VmbusOpsDemo"], **extra}


async def test_module_and_mof_in_reboot_mid_way_converges_and_second_run_copies_nothing(tmp_path: Path) -> None:
    files = dict(SCAFFOLD)
    files["dsc/localhost.mof"] = FEATURE_MOF + SCAFFOLD["dsc/localhost.mof"]
    path = lab(
        tmp_path,
        VM("web01", more={"features": [WEB_SERVER]}),
        VM("web02", more={"features": [{"name": "Web-Server", "installed": True}]}),
    )
    src = source(tmp_path, [dsc_step(allow_reboot=True, max_reboots=2)], files, ["web01", "web02"])
    result, events, journal = await run_job(path, src, tmp_path)
    assert result.state is State.SUCCESS, result.errors
    web01 = result.details["web01"]["configure"]
    # The LCM finished the Banner by itself after the reboot (ActionAfterReboot defaults to
    # ContinueConfiguration): the step saw it in desired state, not the Set that did it.
    assert web01["changed"] == ["[WindowsFeature]Web"]
    assert web01["in_desired_state"] == 1
    assert (web01["reboots"], web01["reboot_pending"], web01["files_copied"]) == (1, False, 4)
    assert result.details["web02"]["configure"]["reboots"] == 0
    progress = [e.step for e in events if isinstance(e, RunChanged) and e.vm == "web01" and e.step]
    assert any("0/2 [WindowsFeature]Web" in p for p in progress), progress
    assert any(p.endswith("2/2: 1 changed, 1 in desired state") for p in progress), progress
    # One continuous record story: the LCM before the reboot, the restart, the LCM busy resuming
    # by itself (waited for, not sent the configuration again), its outcome.
    run_id = next(r.id for r in journal.runs(result.job_id) if r.vm == "web01")
    texts = [str(r.content.get("message") or r.content.get("message_data")) for r in journal.records(result.job_id, vm="web01")]
    first_reboot = next(i for i, t in enumerate(texts) if "A reboot is required" in t)
    restart = next(i for i, t in enumerate(texts) if "restarting web01 from the host" in t)
    resumed = next(i for i, t in enumerate(texts) if "the LCM on web01 finished the configuration by itself" in t)
    assert first_reboot < restart < resumed and run_id
    assert not any("methodName' = ApplyConfiguration" in t for t in texts)
    assert not any("must return before" in t for t in texts)
    assert restart < next(i for i, t in enumerate(texts) if "the LCM on web01 is Busy; waiting" in t) < resumed
    # The agent's own checks (file hashes, the LCM's state, the final test) are not guest output:
    # a note sums them up, and the run's records are numbered without a gap.
    records = journal.records(result.job_id, vm="web01")
    assert [r for r in records if r.stream == "output"] == []
    assert not any("SHA256" in t and "Hash=" in t for t in texts)
    assert any("SHA-256 verified" in t for t in texts)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))

    again, _, _ = await run_job(path, source(tmp_path, [dsc_step(allow_reboot=True)], files, ["web01"]), tmp_path)
    assert again.state is State.SUCCESS
    assert again.details["web01"]["configure"]["files_copied"] == 0
    assert again.details["web01"]["configure"]["files_skipped"] == 4
    assert again.details["web01"]["configure"]["changed"] == []


META = (Path(__file__).parent / "mofs" / "metaconfig.meta.mof").read_text(encoding="utf-8")
META_STOP = META.replace('"ContinueConfiguration"', '"StopConfiguration"')
META_REBOOTS = META.replace("RebootNodeIfNeeded = False", "RebootNodeIfNeeded = True")


def _texts(journal: Journal, job_id: int, vm: str) -> list[str]:
    return [str(r.content.get("message") or r.content.get("message_data")) for r in journal.records(job_id, vm=vm)]


async def _lcm_of(lab_path: Path, vm: str, script: str) -> list[Any]:
    """The output objects of ``script`` in ``vm``, run outside any job (what an operator would see)."""
    user, password = load_lab(lab_path).credential(vm)
    async with open_sim_host(lab_path) as host:
        recs, _ = await host.run_in_guest(vm, script, GuestCredential(user, Secret(password), reference="t"))
    return [r.record.value for r in recs if isinstance(r.record, OutputRecord)]


async def test_the_meta_configuration_is_applied_and_stop_configuration_is_resumed_by_the_step(tmp_path: Path) -> None:
    files = dict(SCAFFOLD)
    files["dsc/localhost.mof"] = FEATURE_MOF + SCAFFOLD["dsc/localhost.mof"]
    files["dsc/localhost.meta.mof"] = META_STOP
    path = lab(tmp_path, VM("web01", more={"features": [WEB_SERVER]}))
    step = dsc_step(allow_reboot=True, max_reboots=2, meta_config="dsc/localhost.meta.mof")
    result, _, journal = await run_job(path, source(tmp_path, [step], files, ["web01"]), tmp_path)
    assert result.state is State.SUCCESS, result.errors
    web01 = result.details["web01"]["configure"]
    # StopConfiguration: after the reboot the run waits for the step, which resumes it live.
    assert web01["changed"] == ["[WindowsFeature]Web", "[VmbusOpsDemoFile]Banner"]
    assert (web01["reboots"], web01["files_copied"]) == (1, 5)
    texts = _texts(journal, result.job_id, "web01")
    meta = next(i for i, t in enumerate(texts) if "methodName' = SendMetaConfigurationApply" in t)
    applied = next(i for i, t in enumerate(texts) if "methodName' = SendConfigurationApply" in t)
    restart = next(i for i, t in enumerate(texts) if "restarting web01 from the host" in t)
    resumed = next(i for i, t in enumerate(texts) if "methodName' = ApplyConfiguration" in t)
    assert meta < applied < restart < resumed
    assert any("the LCM on web01 is PendingConfiguration" in t or "ActionAfterReboot = StopConfiguration" in t for t in texts)
    (settings,) = await _lcm_of(path, "web01", "Get-DscLocalConfigurationManager")
    assert (settings.get("ActionAfterReboot"), settings.get("LCMState")) == ("StopConfiguration", "Idle")


async def test_reboot_node_if_needed_needs_a_step_that_allows_reboots_and_the_lcm_restarts_the_guest(tmp_path: Path) -> None:
    files = {"dsc/localhost.mof": FEATURE_MOF, "dsc/localhost.meta.mof": META_REBOOTS}
    path = lab(tmp_path, VM("web01", more={"features": [WEB_SERVER]}))
    base = {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"], "meta_config": "dsc/localhost.meta.mof"}
    refused, _, journal = await run_job(path, source(tmp_path, [base], files, ["web01"]), tmp_path)
    assert refused.state is State.FAILED
    assert "RebootNodeIfNeeded = $true" in refused.errors["web01"]
    assert refused.errors["web01"].count("step configure: ") == 1, refused.errors  # said once, not twice
    assert not any("copied into the guest" in t for t in _texts(journal, refused.job_id, "web01"))

    step = {**base, "allow_reboot": True, "max_reboots": 1}
    result, _, journal = await run_job(path, source(tmp_path, [step], files, ["web01"]), tmp_path)
    assert result.state is State.SUCCESS, result.errors
    assert (result.details["web01"]["configure"]["reboots"], result.details["web01"]["configure"]["changed"]) == (
        1,
        ["[WindowsFeature]Web"],
    )
    texts = _texts(journal, result.job_id, "web01")
    assert any("the LCM restarts web01 itself (RebootNodeIfNeeded)" in t for t in texts)
    assert not any("restarting web01 from the host" in t for t in texts)
    history = await _lcm_of(path, "web01", "Get-DscConfigurationStatus -All")
    assert [h.get("Type") for h in history] == ["Reboot", "Initial"]


async def test_a_step_that_finds_the_lcm_busy_waits_for_it_instead_of_cancelling_it(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("web01", more={"features": [WEB_SERVER]}))
    files = {"dsc/localhost.mof": FEATURE_MOF}
    plain = {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"]}
    first, _, _ = await run_job(path, source(tmp_path, [plain], files, ["web01"]), tmp_path)
    assert first.state is State.SUCCESS and first.details["web01"]["configure"]["reboot_pending"] is True
    # The next job restarts the VM first; the LCM resumes the stopped run as the guest comes up.
    steps = [{"kind": "reboot", "name": "restart"}, plain]
    again, _, journal = await run_job(path, source(tmp_path, steps, files, ["web01"]), tmp_path)
    assert again.state is State.SUCCESS, again.errors
    texts = _texts(journal, again.job_id, "web01")
    waited = next(i for i, t in enumerate(texts) if "the LCM on web01 is Busy; waiting" in t)
    applied = next(i for i, t in enumerate(texts) if "methodName' = SendConfigurationApply" in t)
    assert waited < applied
    # The LCM's own run was allowed to finish (Start-DscConfiguration -Force would have stopped it).
    history = await _lcm_of(path, "web01", "Get-DscConfigurationStatus -All")
    assert [h.get("Type") for h in history][:2] == ["Initial", "Reboot"]


START_CONSISTENCY = "Start-ScheduledTask -TaskName Consistency -TaskPath '\\Microsoft\\Windows\\Desired State Configuration\\'"


async def test_a_step_waits_for_a_consistency_check_the_lcm_is_running(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("web01"))
    first, _, _ = await run_job(path, source(tmp_path, [dsc_step()], SCAFFOLD, ["web01"]), tmp_path)
    assert first.state is State.SUCCESS, first.errors
    # DSC's own Consistency task starts a check (as the LCM's timer does); the dsc step comes next.
    steps = [{"kind": "script", "name": "check", "inline": START_CONSISTENCY}, dsc_step()]
    again, _, journal = await run_job(path, source(tmp_path, steps, SCAFFOLD, ["web01"]), tmp_path)
    assert again.state is State.SUCCESS, again.errors
    texts = _texts(journal, again.job_id, "web01")
    waited = next(i for i, t in enumerate(texts) if "the LCM on web01 is Busy; waiting" in t)
    applied = next(i for i, t in enumerate(texts) if "methodName' = SendConfigurationApply" in t)
    assert waited < applied
    history = await _lcm_of(path, "web01", "Get-DscConfigurationStatus -All")
    assert [h.get("Type") for h in history] == ["Initial", "Consistency", "Initial"]


async def test_guest_service_interface_disabled_without_and_with_permission(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("app01", guest_services=False))
    denied, _, _ = await run_job(path, source(tmp_path, [dsc_step()], SCAFFOLD, ["app01"]), tmp_path)
    assert denied.state is State.FAILED
    assert "Guest Service Interface is disabled" in denied.errors["app01"]
    assert "Enable-VMIntegrationService -VMName 'app01'" in denied.errors["app01"]
    allowed, _, _ = await run_job(path, source(tmp_path, [dsc_step()], SCAFFOLD, ["app01"], gsi=True), tmp_path)
    assert allowed.state is State.SUCCESS, allowed.errors
    assert allowed.details["app01"]["configure"]["changed"] == ["[VmbusOpsDemoFile]Banner"]


async def test_hash_mismatch_after_copy_fails_before_applying(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("web01", faults={"corrupt_copies": "*.psm1"}))
    result, _, journal = await run_job(path, source(tmp_path, [dsc_step()], SCAFFOLD, ["web01"]), tmp_path)
    assert result.state is State.FAILED
    assert "do not have the SHA-256 the bundle lists" in result.errors["web01"]
    assert "VmbusOpsDemo_File.psm1" in result.errors["web01"]
    texts = [str(r.content.get("message")) for r in journal.records(result.job_id)]
    assert not any("Start  Set" in t for t in texts)  # nothing was applied


async def test_reboot_loop_beyond_the_budget_fails(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("web01", more={"features": [{"name": "Web-Server", "restart": "always"}]}))
    files = {"dsc/localhost.mof": FEATURE_MOF}
    step = {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"], "allow_reboot": True, "max_reboots": 2}
    result, _, _ = await run_job(path, source(tmp_path, [step], files, ["web01"]), tmp_path)
    assert result.state is State.FAILED
    assert "still asks for a reboot after 2 reboot(s)" in result.errors["web01"]
    assert result.details["web01"]["configure"]["reboot_pending"] is True


async def test_a_guest_that_never_returns_fails_its_run_and_the_others_go_on(tmp_path: Path) -> None:
    path = lab(
        tmp_path,
        VM("web01", more={"features": [WEB_SERVER]}, faults={"hang_on_restart": True}),
        VM("web02", more={"features": [WEB_SERVER]}),
    )
    files = {"dsc/localhost.mof": FEATURE_MOF}
    step = {"kind": "dsc", "name": "configure", "mofs": ["dsc/localhost.mof"], "allow_reboot": True}
    result, _, _ = await run_job(path, source(tmp_path, [step], files, ["web01", "web02"]), tmp_path, wait_ready_timeout=1.5)
    assert result.runs == {"web01": State.FAILED, "web02": State.SUCCESS}
    assert "did not become ready within 1.5s" in result.errors["web01"]


async def test_drift_is_reported_without_changing_anything(tmp_path: Path) -> None:
    path = lab(tmp_path, VM("web01", more={"features": [{"name": "Web-Server"}]}))
    files = dict(SCAFFOLD)
    files["dsc/localhost.mof"] = FEATURE_MOF + SCAFFOLD["dsc/localhost.mof"]
    result, _, journal = await run_job(path, source(tmp_path, [dsc_step(mode="test")], files, ["web01"]), tmp_path)
    assert result.state is State.SUCCESS, result.errors
    assert result.details["web01"]["configure"]["drifted"] == ["[VmbusOpsDemoFile]Banner", "[WindowsFeature]Web"]
    texts = [str(r.content.get("message")) for r in journal.records(result.job_id)]
    assert not any("Start  Set" in t for t in texts)
    # Still drifted: the check changed nothing.
    again, _, _ = await run_job(path, source(tmp_path, [dsc_step(mode="test")], files, ["web01"]), tmp_path)
    assert len(again.details["web01"]["configure"]["drifted"]) == 2


async def test_patch_check_then_install_with_a_reboot(tmp_path: Path) -> None:
    path = lab(
        tmp_path,
        VM("web01", more={"updates": [
            {"kb": "KB5034441", "title": "Security", "categories": ["Security Updates"], "restart": True},
            {"kb": "KB1", "title": "Other", "categories": ["Updates"]},
        ]}),
    )
    check = {"kind": "patch", "name": "patch", "check_only": True, "categories": ["Security Updates"]}
    result, _, _ = await run_job(path, source(tmp_path, [check], {}, ["web01"]), tmp_path)
    assert result.state is State.SUCCESS
    assert result.details["web01"]["patch"]["updates"] == ["KB5034441 Pending"]
    install = {"kind": "patch", "name": "patch", "allow_reboot": True}
    result, _, journal = await run_job(path, source(tmp_path, [install], {}, ["web01"]), tmp_path)
    assert result.state is State.SUCCESS, result.errors
    patched = result.details["web01"]["patch"]
    assert (patched["reboots"], patched["reboot_pending"]) == (1, False)
    assert sorted(patched["updates"]) == ["KB1 Succeeded", "KB5034441 Succeeded"]
    progress = [r for r in journal.records(result.job_id) if r.stream == "progress"]
    assert any(r.content.get("current_operation") == "KB5034441" for r in progress)
    # Installed by a SYSTEM scheduled task (the WUA refuses PowerShell Direct), removed afterwards.
    statuses = [str(r.content.get("status_description")) for r in progress]
    assert any(t.startswith("Installing as SYSTEM (scheduled task \\vmbusops\\") for t in statuses), statuses
    assert await _lcm_of(path, "web01", "Get-ScheduledTask -TaskPath '\\vmbusops\\'") == []
    assert await _lcm_of(path, "web01", "Get-ChildItem C:\\ProgramData\\vmbusops\\wua") == []
