"""The DSC resources the simulated LCM applies: Test and Set of each resource class against a guest.

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
The LCM (``vmbusops.sim.dsc_lcm``) orders them (:func:`ordered`) and writes what they say.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmbusops.dsc.mof import MofInstance, MofSyntaxError, parse_mof
from vmbusops.sim.guest_system import GuestSystem

if TYPE_CHECKING:
    from vmbusops.sim.guest import GuestSession

MODULES_DIR = "C:\\Program Files\\WindowsPowerShell\\Modules"
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
