"""The simulated guest's DSC Local Configuration Manager: one LCM operation, its verbose lines in
WMF 5.1's format, and the LCM's own memory.

:class:`SimLcm` reads the real MOF documents (``vmbusops.dsc.mof``), orders resources by
``DependsOn``, runs Test then Set for each one (``vmbusops.sim.dsc_resources``) and writes the LCM's
verbose lines as WMF 5.1 writes them (``[NODE]: LCM:  [ Start  Set      ]  [[File]Index]``, padding,
durations to four decimals, "A reboot is required to progress further. Please reboot the system."),
so the agent's LCM parser reads the simulator exactly as it reads a real guest. The lines go to the
streams of the cmdlet that called the LCM, so, as in PowerShell, they are written only when that
cmdlet's ``-Verbose`` (or ``$VerbosePreference``) asks for them.

The configuration documents live where a real LCM keeps them
(``C:\\Windows\\System32\\Configuration\\Current.mof``); status history lives in the guest's
system state (``vmbusops.sim.guest_system``). The LCM's own state (:class:`LcmSettings`: the
meta-configuration, a run waiting for a reboot, a consistency check under way) lives beside
``system.json`` in ``lcm.json``. How the settings act is described in ``vmbusops.sim.dsc``.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from vmbusops.dsc.mof import MofDocument, MofSyntaxError, parse_mof
from vmbusops.sim.dsc_resources import Outcome, ResourceFailed, Resources, ordered
from vmbusops.sim.guest_stage import Stage
from vmbusops.sim.guest_system import ask_for_reboot, load_system, save_system
from vmbusops.sim.guest_values import StatementError
from vmbusops.sim.lab import VMSpec
from vmbusops.sim.state import HostStore
from vmbusops.sim.streams import SimError

CONFIG_DIR = "C:\\Windows\\System32\\Configuration"
REBOOT_MESSAGE = "A reboot is required to progress further. Please reboot the system."
PAD = " " * 28
LCM_NS = "root/Microsoft/Windows/DesiredStateConfiguration"


#: How long the LCM stays Busy resuming a configuration after the guest has booted.
RESUME_SECONDS = 3.0
LCM_FILE = "lcm.json"
META_CLASS = "MSFT_DSCMetaConfiguration"
META_DEFAULTS: dict[str, Any] = {
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
META_CHOICES: dict[str, tuple[str, ...]] = {
    "ActionAfterReboot": ("ContinueConfiguration", "StopConfiguration"),
    "ConfigurationMode": ("ApplyOnly", "ApplyAndMonitor", "ApplyAndAutoCorrect"),
    "RefreshMode": ("Push", "Pull", "Disabled"),
}


@dataclass
class LcmSettings:
    """The simulated LCM's own memory: its meta-configuration and a run waiting for a reboot."""

    meta: dict[str, Any] = field(default_factory=lambda: dict(META_DEFAULTS))
    #: ``running_since`` of the boot in which a run stopped for a reboot; None when none did.
    stopped_in_boot: float | None = None
    #: A stopped run that the next boot leaves for ``Start-DscConfiguration -UseExisting``.
    pending_configuration: bool = False
    #: When a consistency check started by the ``Consistency`` task ends (clock time); None if none runs.
    consistency_until: float | None = None

    def setting(self, name: str) -> Any:
        return self.meta.get(name, META_DEFAULTS.get(name))

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



def lcm_error(message: str, fqid: str, category: str = "InvalidOperation") -> SimError:
    return SimError(
        message=message,
        fqid=fqid,
        category=category,
        exception_type="Microsoft.Management.Infrastructure.CimException",
    )




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
        # The calling cmdlet's streams: its -Verbose (or $VerbosePreference) decides, as in PowerShell.
        self.stage.streams.verbose(text)
        await self.stage.streams.checkpoint()

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

