"""Hyper-V's cmdlets on the simulated host: Get-VM, Get-/Enable-/Disable-VMIntegrationService,
Copy-VMFile, Start-/Stop-/Restart-VM, and Invoke-Command sent directly (which never runs).

Each is a :class:`~vmbusops.sim.host_command.HostCmdlet`: its parameters as the Hyper-V module and
Invoke-Command declare them (names are [string[]], switches [switch], ids [guid], credentials
[pscredential]) and a function run against the host. Per-VM problems are non-terminating error
records (texts in ``pserrors``); the rules both hosts share are in ``vmbusops.sim.hostrules``.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param, require
from vmbusops.sim.checkpoints import vm_checkpoint_facts
from vmbusops.sim.guest_values import to_text
from vmbusops.sim.host_command import HostCmdlet, HostContext
from vmbusops.sim.hostrules import copy_target, resolve_vms, vm_facts, wildcard_match, write_copy
from vmbusops.sim.lab import VMSpec, VMState
from vmbusops.sim.state import INTEGRATION_SERVICES, VMRuntime
from vmbusops.sim.streams import SimError, SimObject, Streams

_NAMES = "strings"


def names_of(value: Any) -> list[str]:
    """A [string[]] parameter's value as a list (empty when it was not given)."""
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [to_text(v) for v in value]
    return [to_text(value)]


def _timespan(seconds: float) -> str:
    """TimeSpan's invariant text, whole seconds: ``hh:mm:ss`` or ``d.hh:mm:ss``."""
    total = int(max(0.0, seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    core = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}.{core}" if days else core


def _resolve(host: HostContext, cmdlet: str, names: list[str], streams: Streams) -> list[VMSpec]:
    return resolve_vms(host.lab, cmdlet, names, streams.error, vms=host.owned_vms())


def _vm_object(host: HostContext, spec: VMSpec, rt: VMRuntime, now: float) -> SimObject:
    facts = vm_facts(host.lab, spec, rt, now)
    return SimObject(
        (
            "Microsoft.HyperV.PowerShell.VirtualMachine",
            "Microsoft.HyperV.PowerShell.VirtualMachineBase",
            "Microsoft.HyperV.PowerShell.VirtualizationObject",
            "System.Object",
        ),
        (
            ("Name", spec.name),
            ("VMName", spec.name),
            ("Id", spec.id),
            ("VMId", spec.id),
            *((k, facts[k]) for k in ("State", "Status", "Heartbeat")),
            ("Uptime", _timespan(facts["UptimeSeconds"])),
            *(
                (k, facts[k])
                for k in ("Notes", "ComputerName", "Generation", "Version", "ProcessorCount",
                          "GuestServiceInterfaceEnabled")
            ),
            *vm_checkpoint_facts(spec, rt).items(),
        ),
        f"VirtualMachine (Name = '{spec.name}') [Id = '{spec.id}']",
    )


async def get_vm(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    now = host.clock()
    snapshot = host.store.snapshot()
    if b.get("Id") is not None:
        ids = names_of(b["Id"])
        specs = []
        for vm_id in ids:
            spec = host.find_vm_by_id(vm_id)
            if spec is None:
                streams.error(pserrors.vm_id_not_found("Get-VM", vm_id))
            else:
                specs.append(spec)
    else:
        specs = _resolve(host, "Get-VM", names_of(b.get("Name")), streams)
    for spec in specs:
        streams.output(_vm_object(host, spec, snapshot[spec.name.casefold()], now))
        await streams.checkpoint()


async def get_vm_integration_service(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "VMName")
    now = host.clock()
    wanted = names_of(b.get("Name"))
    for spec in _resolve(host, "Get-VMIntegrationService", names_of(b["VMName"]), streams):
        rt = host.store.runtime(spec)
        for name, enabled in rt.integration:
            if wanted and not any(wildcard_match(name, w) for w in wanted):
                continue
            if not enabled:
                primary = None
            elif rt.booted(now):
                primary = "OK"
            else:
                primary = "No Contact"
            streams.output(
                SimObject(
                    (
                        "Microsoft.HyperV.PowerShell.VMIntegrationComponent",
                        "Microsoft.HyperV.PowerShell.VirtualizationObject",
                        "System.Object",
                    ),
                    (
                        ("VMName", spec.name),
                        ("VMId", spec.id),
                        ("Name", name),
                        ("Enabled", enabled),
                        ("PrimaryStatusDescription", primary),
                        ("SecondaryStatusDescription", None),
                    ),
                )
            )


async def enable_vm_integration_service(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    await _set_integration(host, b, streams, fq, enabled=True, cmdlet="Enable-VMIntegrationService")


async def disable_vm_integration_service(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    await _set_integration(host, b, streams, fq, enabled=False, cmdlet="Disable-VMIntegrationService")


async def _set_integration(
    host: HostContext, b: dict[str, Any], streams: Streams, fq: str, *, enabled: bool, cmdlet: str
) -> None:
    require(b, fq, "Name", "VMName")
    services = names_of(b["Name"])
    for spec in _resolve(host, cmdlet, names_of(b["VMName"]), streams):
        for service in services:
            known = [s for s in INTEGRATION_SERVICES if wildcard_match(s, service)]
            if not known:
                streams.error(pserrors.integration_service_not_found(cmdlet, spec.name, service))
                continue
            for name in known:
                host.store.update(
                    spec, functools.partial(VMRuntime.with_integration, name=name, enabled=enabled)
                )


async def copy_vm_file(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Name", "SourcePath", "DestinationPath", "FileSource")
    source_kind = to_text(b["FileSource"])
    if source_kind.casefold() != "host":
        raise BindingError(
            SimError(
                message="Cannot bind parameter 'FileSource'. Cannot convert value "
                f'"{source_kind}" to type "Microsoft.HyperV.PowerShell.CopyFileSourceType". '
                'Error: "Unable to match the identifier name '
                f"{source_kind} to a valid enumerator name. Specify one of the following "
                'enumerator names and try again:\nHost"',
                fqid=f"CannotConvertArgumentNoMessage,{fq}",
                category="InvalidArgument",
                exception_type="System.Management.Automation.ParameterBindingException",
            )
        )
    source = Path(to_text(b["SourcePath"]))
    destination = to_text(b["DestinationPath"])
    for spec in _resolve(host, "Copy-VMFile", names_of(b["Name"]), streams):
        error = await _copy_one(
            host, spec, source, destination, full_path=bool(b.get("CreateFullPath")), force=bool(b.get("Force"))
        )
        if error is not None:
            streams.error(pserrors.copy_failed(spec.name, error))
        await streams.checkpoint()


async def _copy_one(
    host: HostContext, spec: VMSpec, source: Path, destination: str, *, full_path: bool, force: bool
) -> str | None:
    target = copy_target(host.store, spec, host.clock(), source, destination, full_path=full_path, force=force)
    if isinstance(target, str):
        return target
    await trio.to_thread.run_sync(write_copy, spec, source, target, destination)
    return None


async def invoke_command(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    """Invoke-Command sent directly: it can never run, as with PowerShell over PSRP.

    Its -ScriptBlock is a [scriptblock], which no value a PSRP client sends binds to (the
    binder refuses it before this runs); without it, no VM parameter set is complete. Guest
    code runs through the guest invoker (``HyperVHost.invoke_vmbusops_guest``), which builds the script
    block on the host as PowerShell requires.
    """
    if b.get("VMName") is None and b.get("VMId") is None:
        raise BindingError(
            SimError(
                message="The vmbusops simulator runs Invoke-Command only with -VMName or -VMId "
                "(PowerShell Direct).",
                fqid=f"NotSupportedBySimulator,{fq}",
                category="NotImplemented",
                exception_type="System.NotSupportedException",
            )
        )
    raise BindingError(
        SimError(
            message="Parameter set cannot be resolved using the specified named parameters. One or "
            "more parameters issued cannot be used together or an insufficient number of "
            "parameters were provided.",
            fqid=f"AmbiguousParameterSet,{fq}",
            category="InvalidArgument",
            exception_type="System.Management.Automation.ParameterBindingException",
        )
    )


async def restart_vm(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Name")
    boot = host.lab.host.boot_seconds
    for spec in _resolve(host, "Restart-VM", names_of(b["Name"]), streams):
        rt = host.store.runtime(spec)
        if rt.state is not VMState.RUNNING:
            streams.error(pserrors.vm_state_change_failed("Restart-VM", spec.name))
            continue
        now = host.clock()
        # Lab fault: a guest that never finishes booting (heartbeat stays NoContact).
        boot_for = 10 * 365 * 86400.0 if spec.faults.hang_on_restart else boot
        host.store.update(spec, functools.partial(VMRuntime.started, now=now, boot_seconds=boot_for))
        if b.get("Wait"):
            # -Wait returns once the guest heartbeats again.
            await trio.sleep(boot)


async def start_vm(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Name")
    boot = host.lab.host.boot_seconds
    for spec in _resolve(host, "Start-VM", names_of(b["Name"]), streams):
        if host.store.runtime(spec).state is VMState.RUNNING:
            streams.warning(f"The virtual machine '{spec.name}' is already in the specified state.")
            continue
        now = host.clock()
        host.store.update(spec, functools.partial(VMRuntime.started, now=now, boot_seconds=boot))


async def stop_vm(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    require(b, fq, "Name")
    for spec in _resolve(host, "Stop-VM", names_of(b["Name"]), streams):
        rt = host.store.runtime(spec)
        if rt.state is VMState.OFF:
            streams.warning(f"The virtual machine '{spec.name}' is already in the specified state.")
            continue
        if b.get("Save"):
            host.store.update(spec, _saved)
        else:
            host.store.update(spec, lambda rt: rt.stopped())


def _saved(rt: VMRuntime) -> VMRuntime:
    return replace(rt, state=VMState.SAVED, running_since=None, boot_until=0.0)


GET_VM = HostCmdlet(
    (
        Param("Name", 0, aliases=("VMName",), kind=_NAMES),
        Param("Id", kind="guid"),
        Param("ComputerName", kind=_NAMES),
    ),
    get_vm,
)
GET_VM_INTEGRATION_SERVICE = HostCmdlet(
    (Param("VMName", 0, kind=_NAMES), Param("Name", 1, kind=_NAMES), Param("ComputerName", kind=_NAMES)),
    get_vm_integration_service,
)
_SET_INTEGRATION_PARAMS = (
    Param("Name", 0, kind=_NAMES),
    Param("VMName", 1, kind=_NAMES),
    Param("Passthru", switch=True, kind="switch"),
    Param("ComputerName", kind=_NAMES),
)
ENABLE_VM_INTEGRATION_SERVICE = HostCmdlet(_SET_INTEGRATION_PARAMS, enable_vm_integration_service)
DISABLE_VM_INTEGRATION_SERVICE = HostCmdlet(_SET_INTEGRATION_PARAMS, disable_vm_integration_service)
COPY_VM_FILE = HostCmdlet(
    (
        Param("Name", 0, aliases=("VMName",), kind=_NAMES),
        Param("SourcePath", 1, kind="string"),
        Param("DestinationPath", 2, kind="string"),
        Param("FileSource"),
        Param("CreateFullPath", switch=True, kind="switch"),
        Param("Force", switch=True, kind="switch"),
        Param("ComputerName", kind=_NAMES),
    ),
    copy_vm_file,
)
INVOKE_COMMAND = HostCmdlet(
    (
        Param("ScriptBlock", 0, aliases=("Command",), kind="scriptblock"),
        Param("VMName", kind=_NAMES),
        Param("VMId", aliases=("VMGuid",), kind="guids"),
        Param("Credential", kind="credential"),
        Param("ArgumentList", aliases=("Args",)),
        Param("ThrottleLimit", kind="int"),
        Param("HideComputerName", switch=True, kind="switch"),
        Param("ConfigurationName", kind="string"),
    ),
    invoke_command,
)
RESTART_VM = HostCmdlet(
    (
        Param("Name", 0, aliases=("VMName",), kind=_NAMES),
        Param("Force", switch=True, kind="switch"),
        Param("Wait", switch=True, kind="switch"),
        Param("For"),
        Param("Timeout", kind="int"),
        Param("Delay", kind="int"),
        Param("Type"),
        Param("Passthru", switch=True, kind="switch"),
    ),
    restart_vm,
)
START_VM = HostCmdlet(
    (Param("Name", 0, aliases=("VMName",), kind=_NAMES), Param("Passthru", switch=True, kind="switch")),
    start_vm,
)
STOP_VM = HostCmdlet(
    (
        Param("Name", 0, aliases=("VMName",), kind=_NAMES),
        Param("Force", switch=True, kind="switch"),
        Param("TurnOff", switch=True, kind="switch"),
        Param("Save", switch=True, kind="switch"),
        Param("Passthru", switch=True, kind="switch"),
    ),
    stop_vm,
)
