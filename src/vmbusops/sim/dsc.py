"""The simulated guest's DSC cmdlets: Start-DscConfiguration, Test-DscConfiguration,
Get-DscConfigurationStatus, and the LCM's own Set-/Get-DscLocalConfigurationManager.

Each runs one operation of the simulated Local Configuration Manager (``vmbusops.sim.dsc_lcm``:
it reads the real MOF documents, runs Test then Set for each resource of
``vmbusops.sim.dsc_resources`` and writes the LCM's verbose lines in WMF 5.1's format), so the
agent's LCM parser reads the simulator exactly as it reads a real guest. As in PowerShell, those
lines are written only when the cmdlet is called with ``-Verbose`` (or ``$VerbosePreference`` says
so); the product always passes it.

The LCM's own settings (the meta-configuration) are applied with ``Set-DscLocalConfigurationManager
-Path <folder>``, which reads ``<computer>.meta.mof`` or ``localhost.meta.mof`` there (an instance
of ``MSFT_DSCMetaConfiguration``), keeps it as ``MetaConfig.mof`` and reports it through
``Get-DscLocalConfigurationManager``. The settings it acts on:

- ``ActionAfterReboot``: when a run stopped for a reboot, the next boot either resumes it by itself
  (``ContinueConfiguration``, the default) or leaves it for ``Start-DscConfiguration -UseExisting``
  (``StopConfiguration``; LCMState ``PendingConfiguration``);
- ``RebootNodeIfNeeded``: when true, the LCM restarts the guest itself at the end of a run that asks
  for a reboot (default false: it only says so);
- ``RefreshMode``: only ``Push`` is simulated (there is no pull server); others are refused.

``ConfigurationMode`` and the frequencies are kept and reported, but the simulated LCM has no
timer: a consistency check runs when DSC's own scheduled task
``\\Microsoft\\Windows\\Desired State Configuration\\Consistency`` is started
(``vmbusops.sim.scheduled_tasks``), as it can be on Windows. It takes :data:`CONSISTENCY_SECONDS`,
then tests (ApplyAndMonitor: drift is reported in Get-DscConfigurationStatus, nothing is set) or
applies (ApplyAndAutoCorrect); ApplyOnly runs none. A resumed run takes
``vmbusops.sim.dsc_lcm.RESUME_SECONDS`` after the guest has booted. While either runs, LCMState is
``Busy`` and every method that would start another LCM operation fails with the LCM's "is in
progress and must return before" error, as a real LCM does; ``Start-DscConfiguration -Path -Force``
stops it, as documented. The resumed run's verbose lines go nowhere (no session is watching); its
outcome is in Get-DscConfigurationStatus. Its own state (settings, a run waiting for a reboot)
lives beside ``system.json`` in ``lcm.json``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from vmbusops.sim import pserrors
from vmbusops.sim.binding import Param
from vmbusops.sim.dsc_lcm import (
    CONFIG_DIR,
    LCM_NS,
    META_CHOICES,
    META_CLASS,
    META_DEFAULTS,
    SimLcm,
    busy_error,
    lcm_error,
    save_lcm,
)
from vmbusops.sim.dsc_resources import ResourceFailed
from vmbusops.sim.guest_stage import Stage
from vmbusops.sim.guest_system import reboot_pending
from vmbusops.sim.guest_values import StatementError, to_text
from vmbusops.sim.scheduled_tasks import SimTask
from vmbusops.sim.streams import SimObject

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession


def _resource_objects(ids: list[str], in_state: bool) -> list[SimObject]:
    return [
        SimObject(
            (f"Microsoft.Management.Infrastructure.CimInstance#{LCM_NS}/MSFT_ResourceInDesiredState", "System.Object"),
            (("ResourceId", rid), ("InDesiredState", in_state)),
            rid,
        )
        for rid in ids
    ]


# --- cmdlets ----------------------------------------------------------------------------------


class StartDscConfiguration(Stage):
    name = "Start-DscConfiguration"
    fq_name = "Start-DscConfiguration"
    params = (
        Param("Path", 0),
        Param("Wait", switch=True),
        Param("Force", switch=True),
        Param("UseExisting", switch=True),
        Param("ComputerName"),
    )

    async def process(self, item: Any) -> None:
        if not self.switch("Wait"):
            raise StatementError(pserrors.not_supported_in_guest("Start-DscConfiguration without -Wait (jobs)"))
        lcm = SimLcm(self)
        await lcm.settle()
        current = lcm.config_path("Current.mof")
        if self.switch("UseExisting"):
            lcm.refuse_if_busy("ApplyConfiguration")
            if not current.is_file():
                raise StatementError(
                    lcm_error(
                        "Current configuration does not exist. Execute Start-DscConfiguration command with -Path "
                        "parameter to specify a configuration file and create a current configuration first.",
                        "MI RESULT 1",
                    )
                )
            document = lcm.read_document(current, f"{CONFIG_DIR}\\Current.mof")
            if document is not None:
                await lcm.apply(document, "ApplyConfiguration", "Consistency")
            return
        self.require("Path")
        if lcm.state == "Busy":
            if not self.switch("Force"):
                raise StatementError(busy_error("SendConfigurationApply"))
            # -Force stops the operation in progress: the resumed run or the check is abandoned.
            lcm.settings.stopped_in_boot = None
            lcm.settings.consistency_until = None
        if lcm.system.lcm_state == "PendingConfiguration" and not self.switch("Force"):
            raise StatementError(
                lcm_error(
                    "Cannot invoke the SendConfigurationApply method. The SendConfigurationApply method is in "
                    "progress and must return before SendConfigurationApply can be invoked. Use -Force option "
                    "if that is available to cancel the current operation.",
                    "MI RESULT 1",
                )
            )
        folder = self.session.absolute(to_text(self.arg("Path")))
        host = self.session.host_path(folder)
        candidates = [f"{self.session.spec.guest_computer_name}.mof", "localhost.mof"]
        mof = next(
            (host / c for c in candidates if host is not None and (host / c).is_file()),
            None,
        )
        if mof is None:
            raise StatementError(
                lcm_error(
                    f"The computer-specific MOF file for computer localhost does not exist in the current "
                    f"directory. ({folder})",
                    "ConfigurationNotFound",
                    "ObjectNotFound",
                )
            )
        document = lcm.read_document(mof, f"{folder}\\{mof.name}")
        if document is None:
            return
        current.parent.mkdir(parents=True, exist_ok=True)
        if current.is_file():
            lcm.config_path("Previous.mof").write_bytes(current.read_bytes())
        await trio.to_thread.run_sync(current.write_bytes, mof.read_bytes())
        await lcm.apply(document, "SendConfigurationApply", "Initial")


class TestDscConfiguration(Stage):
    name = "Test-DscConfiguration"
    fq_name = "Test-DscConfiguration"
    params = (Param("Detailed", switch=True), Param("ReferenceConfiguration"), Param("ComputerName"))

    async def process(self, item: Any) -> None:
        lcm = SimLcm(self)
        await lcm.settle()
        lcm.refuse_if_busy("TestConfiguration")
        reference = self.arg("ReferenceConfiguration")
        if reference is not None:
            shown = self.session.absolute(to_text(reference))
            host = self.session.host_path(shown)
            if host is None or not host.is_file():
                raise StatementError(
                    lcm_error(f"Cannot find path '{shown}' because it does not exist.", "PathNotFound", "ObjectNotFound")
                )
        else:
            host = lcm.config_path("Current.mof")
            shown = f"{CONFIG_DIR}\\Current.mof"
            if not host.is_file():
                raise StatementError(
                    lcm_error(
                        "Current configuration does not exist. Execute Start-DscConfiguration command with -Path "
                        "parameter to specify a configuration file and create a current configuration first.",
                        "MI RESULT 1",
                    )
                )
        document = lcm.read_document(host, shown)
        if document is None:
            return
        in_state, not_in_state = await lcm.test(document)
        desired = not not_in_state
        if not self.switch("Detailed") and reference is None:
            await self.emit(desired)
            return
        await self.emit(
            SimObject(
                (f"Microsoft.Management.Infrastructure.CimInstance#{LCM_NS}/MSFT_DSCConfigurationStatus", "System.Object"),
                (
                    ("PSComputerName", "localhost"),
                    ("InDesiredState", desired),
                    ("ResourcesInDesiredState", _resource_objects(in_state, True)),
                    ("ResourcesNotInDesiredState", _resource_objects(not_in_state, False)),
                ),
            )
        )


class GetDscConfigurationStatus(Stage):
    name = "Get-DscConfigurationStatus"
    fq_name = "Get-DscConfigurationStatus"
    params = (Param("All", switch=True),)
    fields: ClassVar[tuple[str, ...]] = ()

    async def process(self, item: Any) -> None:
        lcm = SimLcm(self)
        await lcm.settle()
        system = lcm.system
        pending = reboot_pending(self.session.store, self.session.spec, system)
        history = system.history if self.switch("All") else system.history[:1]
        if not history:
            raise StatementError(
                lcm_error("Get-DscConfigurationStatus: no configuration status is available on this node.", "MI RESULT 1")
            )
        for entry in history:
            await self.emit(
                SimObject(
                    (f"Microsoft.Management.Infrastructure.CimInstance#{LCM_NS}/MSFT_DSCConfigurationStatus", "System.Object"),
                    (
                        ("Status", entry["status"]),
                        ("StartDate", entry["start"]),
                        ("Type", entry["type"]),
                        ("Mode", "PUSH"),
                        ("RebootRequested", bool(entry["reboot"]) and pending),
                        ("NumberOfResources", len(entry["in"]) + len(entry["not_in"])),
                        ("DurationInSeconds", entry["seconds"]),
                        ("LCMState", lcm.state),
                        ("Error", entry["error"]),
                        ("ResourcesInDesiredState", _resource_objects(list(entry["in"]), True)),
                        ("ResourcesNotInDesiredState", _resource_objects(list(entry["not_in"]), False)),
                    ),
                    f"{entry['status']} {entry['type']} PUSH",
                )
            )


#: How long a consistency check started by the ``Consistency`` task keeps the LCM busy.
CONSISTENCY_SECONDS = 3.0
CONSISTENCY_TASK = SimTask(
    name="Consistency",
    path="\\Microsoft\\Windows\\Desired State Configuration\\",
    execute="PowerShell.exe",
    arguments="-NonInteractive -Window Hidden -Command \"Invoke-CimMethod -Namespace "
    "root/Microsoft/Windows/DesiredStateConfiguration -ClassName MSFT_DSCLocalConfigurationManager "
    "-MethodName PerformRequiredConfigurationChecks -Arg @{Flags = [System.UInt32]1}\"",
    user_id="NT AUTHORITY\\SYSTEM",
)


async def start_consistency_check(session: GuestSession) -> tuple[int, int]:
    """What the built-in ``Consistency`` task does: the LCM starts a consistency check (busy for
    CONSISTENCY_SECONDS), unless it is busy already or ConfigurationMode is ApplyOnly."""
    stage = Stage(session, {}, _no_output)
    lcm = SimLcm(stage)
    await lcm.settle()
    mode = str(lcm.settings.setting("ConfigurationMode")).casefold()
    if lcm.state == "Busy" or mode == "applyonly" or not lcm.config_path("Current.mof").is_file():
        return 0, 1
    lcm.settings.consistency_until = session.store.clock() + CONSISTENCY_SECONDS
    save_lcm(session.store, session.spec, lcm.settings)
    return 0, 1


async def _no_output(value: Any) -> None:
    return None


def _meta_value(name: str, value: Any) -> Any:
    """A meta-configuration property as the LCM keeps it; raises for a value it does not take."""
    choices = META_CHOICES.get(name)
    if choices is None:
        if isinstance(value, tuple):
            return [to_text(v) for v in value]
        return value if isinstance(value, str | int | float | bool) or value is None else to_text(value)
    text = to_text(value)
    match = next((c for c in choices if c.casefold() == text.casefold()), None)
    if match is None:
        raise ResourceFailed(
            f"The value '{text}' of property '{name}' of {META_CLASS} is not valid; it must be one of "
            f"{', '.join(choices)}.",
            fqid="MI RESULT 4",
        )
    if name == "RefreshMode" and match != "Push":
        raise ResourceFailed(
            f"The vmbusops simulator runs the LCM in Push mode only (RefreshMode = '{match}' needs a pull "
            "service or disables the LCM); see vmbusops.sim.dsc.",
            fqid="NotSupportedBySimulator",
        )
    return match.upper() if name == "RefreshMode" else match


class SetDscLocalConfigurationManager(Stage):
    """Applies a meta-configuration: ``<computer>.meta.mof`` or ``localhost.meta.mof`` in -Path."""

    name = "Set-DscLocalConfigurationManager"
    fq_name = "Set-DscLocalConfigurationManager"
    params = (Param("Path", 0), Param("Force", switch=True), Param("ComputerName"))

    async def process(self, item: Any) -> None:
        self.require("Path")
        lcm = SimLcm(self)
        await lcm.settle()
        lcm.refuse_if_busy("SendMetaConfigurationApply")
        folder = self.session.absolute(to_text(self.arg("Path")))
        host = self.session.host_path(folder)
        names = [f"{self.session.spec.guest_computer_name}.meta.mof", "localhost.meta.mof"]
        found = next((host / n for n in names if host is not None and (host / n).is_file()), None)
        if found is None:
            raise StatementError(
                lcm_error(
                    f"Unable to find the computer-specific meta-configuration MOF file (.meta.mof) for "
                    f"computer localhost in {folder}.",
                    "ConfigurationNotFound",
                    "ObjectNotFound",
                )
            )
        document = lcm.read_document(found, f"{folder}\\{found.name}")
        if document is None:
            return
        started = time.monotonic()
        await lcm.method("SendMetaConfigurationApply")
        await lcm.lcm("Start", "Set")
        meta = next((i for i in document.instances if i.class_name.casefold() == META_CLASS.casefold()), None)
        if meta is None:
            lcm.fail(f"The meta-configuration {found.name} has no instance of {META_CLASS}.", "MI RESULT 4")
            return
        await lcm.lcm("Start", "Resource", META_CLASS)
        await lcm.lcm("Start", "Set", META_CLASS)
        settings = dict(lcm.settings.meta)
        try:
            for key, value in meta.properties:
                known = next((k for k in META_DEFAULTS if k.casefold() == key.casefold()), key)
                settings[known] = _meta_value(known, value)
        except ResourceFailed as exc:
            lcm.fail(exc.message, exc.fqid)
            return
        await lcm.lcm("End", "Set", META_CLASS, time.monotonic() - started)
        await lcm.lcm("End", "Resource", META_CLASS)
        await lcm.lcm("End", "Set")
        await lcm.lcm("End", "Set", seconds=time.monotonic() - started)
        lcm.settings.meta = settings
        save_lcm(self.session.store, self.session.spec, lcm.settings)
        target = lcm.config_path("MetaConfig.mof")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(found.read_bytes())
        await lcm.verbose("Operation 'Invoke CimMethod' complete.")


class GetDscLocalConfigurationManager(Stage):
    """The LCM's settings and state (``LCMState``: Idle, Busy, PendingReboot, PendingConfiguration)."""

    name = "Get-DscLocalConfigurationManager"
    fq_name = "Get-DscLocalConfigurationManager"
    params = (Param("CimSession"),)

    async def process(self, item: Any) -> None:
        lcm = SimLcm(self)
        await lcm.settle()
        state = lcm.state
        detail = {"Busy": "LCM is performing a consistency check."}
        meta = lcm.settings.meta
        props: list[tuple[str, Any]] = [(k, meta.get(k, v)) for k, v in META_DEFAULTS.items()]
        props += [
            ("LCMCompatibleVersions", ["1.0", "2.0"]),
            ("LCMState", state),
            ("LCMStateDetail", detail.get(state, "")),
            ("LCMVersion", "2.0"),
            ("PSComputerName", None),
        ]
        await self.emit(
            SimObject(
                (f"Microsoft.Management.Infrastructure.CimInstance#{LCM_NS}/{META_CLASS}", "System.Object"),
                tuple(sorted(props)),
                META_CLASS,
            )
        )


__all__ = ["CONSISTENCY_TASK", "start_consistency_check"]
