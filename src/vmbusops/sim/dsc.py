"""The simulated guest's DSC Local Configuration Manager: Start-DscConfiguration,
Test-DscConfiguration and Get-DscConfigurationStatus in the guest PowerShell subset.

It reads the real MOF documents (``vmbusops.dsc.mof``), orders resources by ``DependsOn``, runs
Test then Set for each one against the simulated guest, and writes the LCM's verbose lines in
WMF 5.1's format (``[NODE]: LCM:  [ Start  Set      ]  [[File]Index]``, padding, durations to four
decimals, "A reboot is required to progress further. Please reboot the system."), so the agent's
LCM parser reads the simulator exactly as it reads a real guest.

Resources applied (class: what it changes in the simulated guest):

- ``MSFT_FileDirectoryConfiguration`` (File): files and directories on the guest's C: drive;
- ``MSFT_RoleResource`` (WindowsFeature): the lab's ``features``; one with ``restart = true``
  asks for a reboot after installing, one with ``restart = "always"`` never settles (a reboot loop),
  one with ``install_seconds`` takes that long to install (a slow resource);
- ``MSFT_ServiceResource`` (Service): State and StartupType of the guest's services;
- ``MSFT_RegistryResource`` (Registry) and ``MSFT_EnvironmentResource`` (Environment);
- any class from a custom module: present only if the module was copied to
  ``C:\\Program Files\\WindowsPowerShell\\Modules\\<Name>\\<Version>`` with its manifest and the
  class's ``DSCResources\\<Class>\\<Class>.schema.mof``. The simulator does not run the module's
  PowerShell: it keeps the desired properties as the resource's state, and when they include
  ``Path`` and ``Contents`` it also writes that file, so a file-like resource is observable.

Other resource classes fail with a "not supported by the simulator" error rather than pretend.
The configuration documents live where a real LCM keeps them
(``C:\\Windows\\System32\\Configuration\\Current.mof``); status history lives in the guest's
system state (``vmbusops.sim.guest_system``).

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
applies (ApplyAndAutoCorrect); ApplyOnly runs none. A resumed run takes :data:`RESUME_SECONDS`
after the guest has booted. While either runs, LCMState is ``Busy`` and every method that would
start another LCM operation fails with the LCM's "is in progress and must return before" error,
as a real LCM does; ``Start-DscConfiguration -Path -Force`` stops it, as documented. The resumed run's
verbose lines go nowhere (no session is watching); its outcome is in Get-DscConfigurationStatus.
Its own state (settings, a run waiting for a reboot) lives beside ``system.json`` in ``lcm.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import trio

from vmbusops.dsc.mof import MofDocument, MofInstance, MofSyntaxError, parse_mof
from vmbusops.sim import pserrors
from vmbusops.sim.binding import Param
from vmbusops.sim.guest import CMDLETS, GuestSession, Stage, StatementError, to_text
from vmbusops.sim.guest_system import GuestSystem, ask_for_reboot, load_system, reboot_pending, save_system
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.scheduled_tasks import BUILT_IN_TASKS, SimTask
from vmbusops.sim.state import HostStore
from vmbusops.sim.streams import SimError, SimObject

CONFIG_DIR = "C:\\Windows\\System32\\Configuration"
MODULES_DIR = "C:\\Program Files\\WindowsPowerShell\\Modules"
REBOOT_MESSAGE = "A reboot is required to progress further. Please reboot the system."
PAD = " " * 28
LCM_NS = "root/Microsoft/Windows/DesiredStateConfiguration"
BUILT_IN_MODULES = ("psdesiredstateconfiguration", "psdscresources")
_META_PROPERTIES = frozenset(
    p.casefold()
    for p in (
        "ResourceID",
        "SourceInfo",
        "ModuleName",
        "ModuleVersion",
        "ConfigurationName",
        "DependsOn",
        "PsDscRunAsCredential",
    )
)


#: How long the LCM stays Busy resuming a configuration after the guest has booted.
RESUME_SECONDS = 3.0
LCM_FILE = "lcm.json"
META_CLASS = "MSFT_DSCMetaConfiguration"
_META_DEFAULTS: dict[str, Any] = {
    "ActionAfterReboot": "ContinueConfiguration",
    "AllowModuleOverwrite": False,
    "ConfigurationMode": "ApplyAndMonitor",
    "ConfigurationModeFrequencyMins": 15,
    "DebugMode": ["NONE"],
    "RebootNodeIfNeeded": False,
    "RefreshFrequencyMins": 30,
    "RefreshMode": "PUSH",
    "StatusRetentionTimeInDays": 10,
}
_META_CHOICES: dict[str, tuple[str, ...]] = {
    "ActionAfterReboot": ("ContinueConfiguration", "StopConfiguration"),
    "ConfigurationMode": ("ApplyOnly", "ApplyAndMonitor", "ApplyAndAutoCorrect"),
    "RefreshMode": ("Push", "Pull", "Disabled"),
}


@dataclass
class LcmSettings:
    """The simulated LCM's own memory: its meta-configuration and a run waiting for a reboot."""

    meta: dict[str, Any] = field(default_factory=lambda: dict(_META_DEFAULTS))
    #: ``running_since`` of the boot in which a run stopped for a reboot; None when none did.
    stopped_in_boot: float | None = None
    #: A stopped run that the next boot leaves for ``Start-DscConfiguration -UseExisting``.
    pending_configuration: bool = False
    #: When a consistency check started by the ``Consistency`` task ends (clock time); None if none runs.
    consistency_until: float | None = None

    def setting(self, name: str) -> Any:
        return self.meta.get(name, _META_DEFAULTS.get(name))

    @property
    def continues_after_reboot(self) -> bool:
        return str(self.setting("ActionAfterReboot")).casefold() == "continueconfiguration"

    @property
    def reboots_node(self) -> bool:
        return self.setting("RebootNodeIfNeeded") is True


def load_lcm(store: HostStore, spec: VMSpec) -> LcmSettings:
    try:
        raw = json.loads((store.guest_root(spec) / LCM_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return LcmSettings()
    settings = LcmSettings()
    for key, value in raw.items():
        if hasattr(settings, key):
            setattr(settings, key, value)
    return settings


def save_lcm(store: HostStore, spec: VMSpec, settings: LcmSettings) -> None:
    path = store.guest_root(spec) / LCM_FILE
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".lcm-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(settings), indent=1, sort_keys=True))
    os.replace(tmp, path)


def busy_error(method: str) -> SimError:
    """What the LCM answers a method call while it is running an operation of its own."""
    return SimError(
        message=f"Cannot invoke the {method} method. The PerformRequiredConfigurationChecks method is in "
        f"progress and must return before {method} can be invoked. Use -Force option if that is available "
        "to cancel the current operation.",
        fqid="MI RESULT 1",
        category="ResourceBusy",
        exception_type="Microsoft.Management.Infrastructure.CimException",
    )


class ResourceFailed(Exception):
    def __init__(self, message: str, fqid: str = "ProviderOperationExecutionFailure") -> None:
        super().__init__(message)
        self.message = message
        self.fqid = fqid


@dataclass
class Outcome:
    """What one Test or Set said: its messages, and for Set whether it asks for a reboot."""

    ok: bool = True
    messages: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reboot: bool = False
    #: How long the change takes; the LCM waits that long before writing its messages.
    seconds: float = 0.0


def lcm_error(message: str, fqid: str, category: str = "InvalidOperation") -> SimError:
    return SimError(
        message=message,
        fqid=fqid,
        category=category,
        exception_type="Microsoft.Management.Infrastructure.CimException",
    )


# --- resources --------------------------------------------------------------------------------


class Resources:
    """Test and Set of each resource class against one guest."""

    def __init__(self, session: GuestSession, system: GuestSystem) -> None:
        self.session = session
        self.system = system

    def handler(self, inst: MofInstance) -> tuple[Callable[[MofInstance], Outcome], Callable[[MofInstance], Outcome]]:
        table: dict[str, tuple[Callable[[MofInstance], Outcome], Callable[[MofInstance], Outcome]]] = {
            "msft_filedirectoryconfiguration": (self.test_file, self.set_file),
            "msft_roleresource": (self.test_feature, self.set_feature),
            "msft_serviceresource": (self.test_service, self.set_service),
            "msft_registryresource": (self.test_registry, self.set_registry),
            "msft_environmentresource": (self.test_environment, self.set_environment),
        }
        found = table.get(inst.class_name.casefold())
        if found is not None:
            return found
        module = inst.text("ModuleName")
        if module.casefold() in BUILT_IN_MODULES:
            raise ResourceFailed(
                f"The vmbusops simulator does not implement the DSC resource {inst.class_name}; "
                "see vmbusops.sim.dsc for the resources it applies.",
                fqid="NotSupportedBySimulator",
            )
        return self.test_custom, self.set_custom

    # ---- File
    def _file_path(self, inst: MofInstance) -> tuple[str, Path]:
        dest = inst.text("DestinationPath")
        host = self.session.host_path(dest) if dest else None
        if host is None:
            raise ResourceFailed(f"The system cannot find the path specified. The related file/directory is: {dest}.")
        return dest, host

    def test_file(self, inst: MofInstance) -> Outcome:
        dest, host = self._file_path(inst)
        ensure = inst.text("Ensure", "Present").casefold()
        directory = inst.text("Type", "File").casefold() == "directory"
        exists = host.is_dir() if directory else host.is_file()
        if ensure == "absent":
            return Outcome(not exists, ["The destination object was found and no action is required."] if not exists else [])
        if not exists:
            return Outcome(False, ["The system cannot find the file specified.", f"The related file/directory is: {dest}."])
        contents = inst.get("Contents")
        if not directory and isinstance(contents, str) and host.read_bytes() != _file_bytes(contents):
            return Outcome(False, ["The file contents differ from the desired contents.", f"The related file/directory is: {dest}."])
        return Outcome(True, ["The destination object was found and no action is required."])

    def set_file(self, inst: MofInstance) -> Outcome:
        dest, host = self._file_path(inst)
        if inst.text("Ensure", "Present").casefold() == "absent":
            if host.is_file():
                host.unlink()
            return Outcome(messages=[f"[{dest}] Removing the file."])
        if inst.text("Type", "File").casefold() == "directory":
            host.mkdir(parents=True, exist_ok=True)
            return Outcome(messages=[f"[{dest}] Creating the directory."])
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(_file_bytes(inst.text("Contents")))
        return Outcome(messages=[f"[{dest}] Creating and writing contents and setting attributes."])

    # ---- WindowsFeature
    def _feature(self, inst: MofInstance) -> tuple[str, Any]:
        name = inst.text("Name")
        spec = next((f for f in self.session.spec.features if f.name.casefold() == name.casefold()), None)
        if spec is None:
            raise ResourceFailed(f"The requested feature {name} is not found on the target machine.")
        return name, spec

    def test_feature(self, inst: MofInstance) -> Outcome:
        name, spec = self._feature(inst)
        installed = self.system.features.get(name.casefold(), spec.installed) and spec.restart != "always"
        want = inst.text("Ensure", "Present").casefold() != "absent"
        messages = [
            f"The operation 'Get-WindowsFeature' started: {name}",
            f"The operation 'Get-WindowsFeature' succeeded: {name}",
        ]
        return Outcome(installed == want, messages)

    def set_feature(self, inst: MofInstance) -> Outcome:
        name, spec = self._feature(inst)
        want = inst.text("Ensure", "Present").casefold() != "absent"
        verb = "Installation" if want else "Uninstallation"
        out = Outcome(
            messages=[
                f"{verb} started...",
                f"Continue with {'installation' if want else 'removal'}?",
                "Prerequisite processing started...",
                "Prerequisite processing succeeded.",
                f"{verb} succeeded.",
                f"Successfully {'installed' if want else 'uninstalled'} the feature {name}.",
            ]
        )
        self.system.features[name.casefold()] = want
        out.seconds = spec.install_seconds
        if spec.restart:
            out.warnings.append(
                f"You must restart this server to finish the {'installation' if want else 'removal'} process."
            )
            out.messages.append("The Target machine needs to be restarted.")
            out.reboot = True
        return out

    # ---- Service
    def _service(self, inst: MofInstance) -> dict[str, str]:
        name = inst.text("Name")
        svc = self.system.services.get(name.casefold())
        if svc is None:
            raise ResourceFailed(f"Cannot find any service with service name '{name}'.")
        return svc

    def test_service(self, inst: MofInstance) -> Outcome:
        svc = self._service(inst)
        state, startup = inst.text("State"), inst.text("StartupType")
        ok = (not state or svc["state"].casefold() == state.casefold()) and (
            not startup or svc["startup"].casefold() == startup.casefold()
        )
        return Outcome(ok, [f"Service '{svc['name']}' is {svc['state']} with startup type {svc['startup']}."])

    def set_service(self, inst: MofInstance) -> Outcome:
        svc = self._service(inst)
        messages = []
        if inst.text("StartupType"):
            svc["startup"] = inst.text("StartupType")
            messages.append(f"Startup type of service '{svc['name']}' set to {svc['startup']}.")
        if inst.text("State"):
            svc["state"] = "Running" if inst.text("State").casefold() == "running" else "Stopped"
            verb = "started" if svc["state"] == "Running" else "stopped"
            messages.append(f"Service '{svc['name']}' {verb}.")
        return Outcome(messages=messages)

    # ---- Registry
    @staticmethod
    def _registry_key(inst: MofInstance) -> tuple[str, str]:
        key = inst.text("Key")
        for long, short in (("HKEY_LOCAL_MACHINE", "HKLM:"), ("HKEY_CURRENT_USER", "HKCU:")):
            if key.upper().startswith(long):
                key = short + key[len(long) :]
        return key, inst.text("ValueName")

    def test_registry(self, inst: MofInstance) -> Outcome:
        key, value_name = self._registry_key(inst)
        entry = self.system.registry.get(f"{key}\\{value_name}".casefold())
        want = inst.text("Ensure", "Present").casefold() != "absent"
        if entry is None:
            return Outcome(not want, [f"Registry key value '{key}\\{value_name}' does not exist"])
        ok = want and entry["data"] == list(inst.texts("ValueData")) and entry["type"] == inst.text("ValueType", "String")
        return Outcome(ok, [f"Registry key value '{key}\\{value_name}' has data '{' '.join(entry['data'])}'"])

    def set_registry(self, inst: MofInstance) -> Outcome:
        key, value_name = self._registry_key(inst)
        slot = f"{key}\\{value_name}".casefold()
        if inst.text("Ensure", "Present").casefold() == "absent":
            self.system.registry.pop(slot, None)
            return Outcome(messages=[f"(REMOVE) Remove registry key value '{key}\\{value_name}'"])
        data = list(inst.texts("ValueData"))
        kind = inst.text("ValueType", "String")
        self.system.registry[slot] = {"data": data, "type": kind}
        return Outcome(
            messages=[
                f"(SET) Create registry key '{key}'",
                f"(SET) Set registry key value '{key}\\{value_name}' to '{' '.join(data)}' of type '{kind}'",
            ]
        )

    # ---- Environment
    def test_environment(self, inst: MofInstance) -> Outcome:
        name = inst.text("Name")
        current = self.system.environment.get(name.casefold())
        if inst.text("Ensure", "Present").casefold() == "absent":
            return Outcome(current is None, [f"Environment variable '{name}' is {'absent' if current is None else 'present'}."])
        return Outcome(current == inst.text("Value"), [f"Environment variable '{name}' is {current!r}."])

    def set_environment(self, inst: MofInstance) -> Outcome:
        name = inst.text("Name")
        if inst.text("Ensure", "Present").casefold() == "absent":
            self.system.environment.pop(name.casefold(), None)
            return Outcome(messages=[f"Environment variable '{name}' removed."])
        self.system.environment[name.casefold()] = inst.text("Value")
        return Outcome(messages=[f"Environment variable '{name}' set to '{inst.text('Value')}'."])

    # ---- custom module resources
    def check_module(self, inst: MofInstance) -> None:
        """Raise unless the resource's module (and the class's schema) is in the guest's module path."""
        module, version = inst.text("ModuleName"), inst.text("ModuleVersion")
        base = f"{MODULES_DIR}\\{module}\\{version}"
        schema = f"{base}\\DSCResources\\{inst.class_name}\\{inst.class_name}.schema.mof"
        manifest = self.session.host_path(f"{base}\\{module}.psd1")
        schema_host = self.session.host_path(schema)
        declared = False
        if manifest is not None and manifest.is_file() and schema_host is not None and schema_host.is_file():
            try:
                doc = parse_mof(schema_host.read_text(encoding="utf-8-sig", errors="replace"))
                declared = any(c.name.casefold() == inst.class_name.casefold() for c in doc.classes)
            except MofSyntaxError:
                declared = False
        if not declared:
            raise ResourceFailed(
                f"The PowerShell DSC resource '{inst.class_name}' from module '<{module},{version}>' does not "
                "exist at the PowerShell module path nor is it registered as a WMI DSC resource.",
                fqid="DscResourceNotFound",
            )

    @staticmethod
    def _desired(inst: MofInstance) -> dict[str, Any]:
        return {k: v for k, v in inst.properties if k.casefold() not in _META_PROPERTIES and not hasattr(v, "alias")}

    def test_custom(self, inst: MofInstance) -> Outcome:
        self.check_module(inst)
        desired = self._desired(inst)
        path, contents = inst.text("Path"), inst.get("Contents")
        if path and isinstance(contents, str):
            host = self.session.host_path(path)
            present = host is not None and host.is_file() and host.read_bytes() == _file_bytes(contents)
            want = inst.text("Ensure", "Present").casefold() != "absent"
            return Outcome(present == want, [f"Test-TargetResource: {path} {'matches' if present else 'does not match'}."])
        current = self.system.custom.get(inst.resource_id or "")
        return Outcome(current == _jsonable(desired), ["Test-TargetResource compared the desired properties."])

    def set_custom(self, inst: MofInstance) -> Outcome:
        self.check_module(inst)
        desired = self._desired(inst)
        path, contents = inst.text("Path"), inst.get("Contents")
        messages = ["Set-TargetResource applied the desired properties."]
        if path and isinstance(contents, str):
            host = self.session.host_path(path)
            if host is None:
                raise ResourceFailed(f"Could not find a part of the path '{path}'.")
            if inst.text("Ensure", "Present").casefold() == "absent":
                host.unlink(missing_ok=True)
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_bytes(_file_bytes(contents))
                messages = [f"writing {path}"]
        self.system.custom[inst.resource_id or ""] = _jsonable(desired)
        return Outcome(messages=messages)


def _file_bytes(contents: str) -> bytes:
    return contents.encode("utf-8")


def _jsonable(props: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in props.items()}


def ordered(resources: tuple[MofInstance, ...]) -> list[MofInstance]:
    """Document order, moved only as far as DependsOn requires (as the LCM orders them)."""
    by_id = {r.resource_id: r for r in resources}
    done: set[str] = set()
    out: list[MofInstance] = []

    def visit(r: MofInstance, trail: tuple[str, ...]) -> None:
        rid = r.resource_id or ""
        if rid in done or rid in trail:
            return
        for dep in r.texts("DependsOn"):
            if dep in by_id:
                visit(by_id[dep], (*trail, rid))
        done.add(rid)
        out.append(r)

    for r in resources:
        visit(r, ())
    return out


# --- the LCM ----------------------------------------------------------------------------------


class SimLcm:
    """One LCM operation in one guest session, writing its verbose lines as it goes."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.session = stage.session
        self.node = self.session.spec.guest_computer_name
        self.system = load_system(self.session.store, self.session.spec)
        self.settings = load_lcm(self.session.store, self.session.spec)
        #: A run of the LCM's own (a resume after a reboot): no session sees its lines.
        self.quiet = False

    # ---- the LCM's own operations
    def busy_until(self) -> float | None:
        """When the LCM's own operation ends: a consistency check, or a resume after a reboot (if
        the guest has rebooted since a run stopped for one)."""
        if self.settings.consistency_until is not None:
            return self.settings.consistency_until
        stopped = self.settings.stopped_in_boot
        rt = self.session.store.runtime(self.session.spec)
        if stopped is None or rt.running_since is None or rt.running_since == stopped:
            return None
        if not self.settings.continues_after_reboot:
            return None
        return rt.boot_until + RESUME_SECONDS

    @property
    def state(self) -> str:
        until = self.busy_until()
        if until is not None and self.session.store.clock() < until:
            return "Busy"
        return self.system.lcm_state

    async def settle(self) -> None:
        """Catch up with what the LCM did by itself since the last look: a consistency check that
        has ended; after a reboot, the stopped run resumed (``ContinueConfiguration``, once
        RESUME_SECONDS have passed) or left pending (``StopConfiguration``)."""
        await self.settle_consistency()
        stopped = self.settings.stopped_in_boot
        rt = self.session.store.runtime(self.session.spec)
        if stopped is None or rt.running_since is None or rt.running_since == stopped:
            return
        if not self.settings.continues_after_reboot:
            self.settings.stopped_in_boot = None
            self.settings.pending_configuration = True
            self.system.lcm_state = "PendingConfiguration"
            save_system(self.session.store, self.session.spec, self.system)
            save_lcm(self.session.store, self.session.spec, self.settings)
            return
        until = self.busy_until()
        if until is None or self.session.store.clock() < until:
            return
        self.settings.stopped_in_boot = None
        save_lcm(self.session.store, self.session.spec, self.settings)
        current = self.config_path("Current.mof")
        if not current.is_file():
            return
        self.quiet = True
        try:
            document = self.read_document(current, f"{CONFIG_DIR}\\Current.mof")
            if document is not None:
                await self.apply(document, "PerformRequiredConfigurationChecks", "Reboot")
        finally:
            self.quiet = False

    async def settle_consistency(self) -> None:
        until = self.settings.consistency_until
        if until is None or self.session.store.clock() < until:
            return
        self.settings.consistency_until = None
        save_lcm(self.session.store, self.session.spec, self.settings)
        current = self.config_path("Current.mof")
        document = self.read_document(current, f"{CONFIG_DIR}\\Current.mof") if current.is_file() else None
        if document is None:
            return
        self.quiet = True
        try:
            if str(self.settings.setting("ConfigurationMode")).casefold() == "applyandautocorrect":
                await self.apply(document, "PerformRequiredConfigurationChecks", "Consistency")
                return
            # ApplyAndMonitor: test and report drift, set nothing.
            started = time.monotonic()
            in_state, not_in_state = await self.test(document)
            self.record(status="Success", kind="Consistency", reboot=False, in_state=in_state,
                        not_in_state=not_in_state, seconds=time.monotonic() - started, error=None)  # fmt: skip
            save_system(self.session.store, self.session.spec, self.system)
        finally:
            self.quiet = False

    def refuse_if_busy(self, method: str) -> None:
        if self.state == "Busy":
            raise StatementError(busy_error(method))

    # ---- output in the LCM's format
    async def verbose(self, text: str) -> None:
        if self.quiet:
            return
        self.session.streams.verbose(text)
        await self.session.streams.checkpoint()

    def warn(self, text: str) -> None:
        if not self.quiet:
            self.session.streams.warning(text)

    async def lcm(self, verb: str, op: str, resource: str | None = None, seconds: float | None = None,
                  result: bool | None = None) -> None:  # fmt: skip
        line = f"[{self.node}]: LCM:  [ {verb:<6} {op:<8} ]"
        if resource is not None:
            line += f"  [{resource}]"
            if seconds is not None:
                line += f"  in {seconds:.4f} seconds." if result is None else f" {result} in {seconds:.4f} seconds."
        elif seconds is not None:
            line += f"    in  {seconds:.4f} seconds."
        await self.verbose(line)

    async def say(self, scope: str, message: str) -> None:
        await self.verbose(f"[{self.node}]:{PAD}[{scope}] {message}")

    async def method(self, name: str) -> None:
        await self.verbose(
            f"Perform operation 'Invoke CimMethod' with following parameters, ''methodName' = {name},"
            f"'className' = MSFT_DSCLocalConfigurationManager,'namespaceName' = {LCM_NS}'."
        )
        await self.verbose(
            f"An LCM method call arrived from computer {self.node} with user sid "
            "S-1-5-21-3088887838-4058132883-1884671576-500."
        )

    async def method_done(self, started: float) -> None:
        await self.verbose("Operation 'Invoke CimMethod' complete.")
        await self.verbose(f"Time taken for configuration job to complete is {time.monotonic() - started:.3f} seconds")

    def fail(self, message: str, fqid: str) -> None:
        if not self.quiet:
            self.session.streams.error(lcm_error(message, fqid))

    # ---- documents
    def config_path(self, name: str) -> Path:
        host = self.session.host_path(f"{CONFIG_DIR}\\{name}")
        assert host is not None
        return host

    def read_document(self, host: Path, shown: str) -> MofDocument | None:
        try:
            return parse_mof(host.read_text(encoding="utf-8-sig"))
        except (OSError, UnicodeDecodeError) as exc:
            self.fail(f"Cannot read the configuration document {shown}: {exc}", "MI RESULT 1")
        except MofSyntaxError as exc:
            self.fail(f"Failed to parse the configuration document {shown}: {exc.message}", "MI RESULT 1")
        return None

    # ---- apply
    async def apply(self, document: MofDocument, method: str, source: str) -> None:
        started = time.monotonic()
        await self.method(method)
        self.system.lcm_state = "Busy"
        await self.lcm("Start", "Set")
        resources = Resources(self.session, self.system)
        in_state: list[str] = []
        not_in_state: list[str] = []
        failure: str | None = None
        reboot = False
        plan = ordered(document.resources)
        for index, inst in enumerate(plan):
            rid = inst.resource_id or ""
            await self.lcm("Start", "Resource", rid)
            try:
                test, set_ = resources.handler(inst)
                t0 = time.monotonic()
                await self.lcm("Start", "Test", rid)
                tested = test(inst)
                for m in tested.messages:
                    await self.say(rid, m)
                await self.lcm("End", "Test", rid, time.monotonic() - t0)
                if tested.ok:
                    await self.lcm("Skip", "Set", rid)
                    in_state.append(rid)
                else:
                    t1 = time.monotonic()
                    await self.lcm("Start", "Set", rid)
                    done = set_(inst)
                    if done.seconds:
                        await trio.sleep(done.seconds)
                    for m in done.messages:
                        if m.startswith("["):
                            await self.verbose(f"[{self.node}]:{PAD}{m}")
                        else:
                            await self.say(rid, m)
                    for w in done.warnings:
                        self.warn(f"[{self.node}]:{PAD}[{rid}] {w}")
                    await self.lcm("End", "Set", rid, time.monotonic() - t1)
                    in_state.append(rid)
                    reboot = reboot or done.reboot
            except ResourceFailed as exc:
                await self.lcm("End", "Set", rid, 0.0)
                failure = exc.message
                if exc.fqid == "ProviderOperationExecutionFailure":
                    message = (
                        f"PowerShell DSC resource {inst.class_name}  failed to execute Set-TargetResource "
                        f"functionality with error message: {exc.message} "
                    )
                else:
                    message = exc.message
                self.fail(message, exc.fqid)
                not_in_state.extend(r.resource_id or "" for r in plan[index:])
                break
            await self.lcm("End", "Resource", rid)
            if reboot:
                # The LCM stops at a resource that asks for a reboot; the rest run after it.
                not_in_state.extend(r.resource_id or "" for r in plan[index + 1 :])
                break
        if failure is not None:
            await self.say("", "Consistency check completed.")
        if reboot:
            await self.say("", REBOOT_MESSAGE)
            self.warn(f"[{self.node}]:{PAD}[] {REBOOT_MESSAGE}")
            ask_for_reboot(self.session.store, self.session.spec, self.system)
            self.settings.stopped_in_boot = self.session.store.runtime(self.session.spec).running_since
        await self.lcm("End", "Set")
        await self.lcm("End", "Set", seconds=time.monotonic() - started)
        if failure is not None:
            self.fail(
                f"The {method} function did not succeed. LCM failed to start desired state configuration manually.",
                "MI RESULT 1",
            )
        self.system.lcm_state = "PendingReboot" if reboot else "Idle"
        self.record(
            status="Failure" if failure else "Success",
            kind=source,
            reboot=reboot,
            in_state=in_state,
            not_in_state=not_in_state,
            seconds=time.monotonic() - started,
            error=failure,
        )
        self.settings.pending_configuration = False
        save_system(self.session.store, self.session.spec, self.system)
        save_lcm(self.session.store, self.session.spec, self.settings)
        await self.method_done(started)
        if reboot and self.settings.reboots_node:
            self.restart_guest()

    def restart_guest(self) -> None:
        """RebootNodeIfNeeded: the LCM restarts the guest once the run has returned."""
        spec, store = self.session.spec, self.session.store
        boot = store.lab.host.boot_seconds
        now = store.clock()
        store.update(spec, lambda rt: rt.started(now, boot))

    # ---- test
    async def test(self, document: MofDocument) -> tuple[list[str], list[str]]:
        started = time.monotonic()
        await self.method("TestConfiguration")
        await self.lcm("Start", "Test")
        resources = Resources(self.session, self.system)
        in_state: list[str] = []
        not_in_state: list[str] = []
        for inst in ordered(document.resources):
            rid = inst.resource_id or ""
            await self.lcm("Start", "Resource", rid)
            t0 = time.monotonic()
            await self.lcm("Start", "Test", rid)
            try:
                test, _ = resources.handler(inst)
                tested = test(inst)
            except ResourceFailed as exc:
                tested = Outcome(False, [exc.message])
            for m in tested.messages:
                await self.say(rid, m)
            await self.lcm("End", "Test", rid, time.monotonic() - t0, result=tested.ok)
            await self.lcm("End", "Resource", rid)
            (in_state if tested.ok else not_in_state).append(rid)
        await self.lcm("End", "Test", seconds=time.monotonic() - started)
        await self.verbose("Operation 'Invoke CimMethod' complete.")
        return in_state, not_in_state

    def record(self, *, status: str, kind: str, reboot: bool, in_state: list[str], not_in_state: list[str],
               seconds: float, error: str | None) -> None:  # fmt: skip
        self.system.history.insert(
            0,
            {
                "status": status,
                "start": datetime.datetime.now(datetime.UTC).isoformat(),
                "type": kind,
                "reboot": reboot,
                "in": in_state,
                "not_in": not_in_state,
                "seconds": round(seconds, 3),
                "error": error,
            },
        )
        del self.system.history[20:]


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
    choices = _META_CHOICES.get(name)
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
                known = next((k for k in _META_DEFAULTS if k.casefold() == key.casefold()), key)
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
        props: list[tuple[str, Any]] = [(k, meta.get(k, v)) for k, v in _META_DEFAULTS.items()]
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


DSC_CMDLETS: tuple[type[Stage], ...] = (
    StartDscConfiguration,
    TestDscConfiguration,
    GetDscConfigurationStatus,
    SetDscLocalConfigurationManager,
    GetDscLocalConfigurationManager,
)
for _cls in DSC_CMDLETS:
    CMDLETS[_cls.name.casefold()] = _cls
BUILT_IN_TASKS[CONSISTENCY_TASK.key] = (CONSISTENCY_TASK, start_consistency_check)

__all__ = ["DSC_CMDLETS", "REBOOT_MESSAGE", "SimLcm"]
