"""The simulated Hyper-V host: the cmdlets the agent sends, with their parameter sets and errors.

Host cmdlets arrive as structured commands (name + typed parameters), exactly as the agent sends
them to a real ``powershell.exe``. Binding failures and unknown commands end the pipeline Failed
with PowerShell's terminating error; per-VM problems are non-terminating error records and the
pipeline completes, as the real cmdlets behave. The one script command accepted is the guest
invoker (``vmbusops.sim.invoker``), the only way guest code runs.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import trio
from psrpcore.types import PSSecureString

from vmbusops.sim import dsc as _dsc  # noqa: F401  (adds the DSC cmdlets to the guest subset)
from vmbusops.sim import invoker, pserrors
from vmbusops.sim import wua as _wua  # noqa: F401  (recognises the patch step's script)
from vmbusops.sim.binding import BindingError, Param, bind, require
from vmbusops.sim.guest import Emit, GuestSession, to_text
from vmbusops.sim.hostrules import (
    copy_target,
    resolve_vms,
    vm_facts,
    wildcard_match,
    write_copy,
)
from vmbusops.sim.lab import Lab, VMSpec, VMState, lab_password
from vmbusops.sim.state import (
    INTEGRATION_SERVICES,
    HostStore,
    VMRuntime,
)
from vmbusops.sim.streams import (
    InformationMessage,
    ProgressUpdate,
    SimError,
    SimObject,
    Streams,
    TerminatingError,
)

HYPERV = "Microsoft.HyperV.PowerShell.Commands"


class HostStreams(Streams, Protocol):
    """The pipeline's streams plus the chaos hooks only the host level uses."""

    @property
    def host_has_ui(self) -> bool:
        """Whether the client's runspace pool declared a host with a UI (see ``_GuestStreams``)."""
        ...

    def inject_garbage(self) -> None: ...

    async def crash(self) -> None: ...


class CommandSpec(Protocol):
    """What psrpcore gives for each command of a pipeline (``pipe.metadata.commands``)."""

    command_text: str
    is_script: bool
    parameters: list[tuple[str | None, Any]]


def plain(value: Any) -> Any:
    """psrpcore's deserialized values (PSString, PSInt, PSList, ...) as plain Python values."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, PSSecureString):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value


def names_of(value: Any) -> list[str]:
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


class SessionDropped(Exception):
    """The lab's fault injection broke the PowerShell Direct session; ``error`` says how."""

    def __init__(self, error: SimError) -> None:
        super().__init__(error.message)
        self.error = error


_STEP_MARKER_TAG = "vmbusops.step"


class _GuestStreams:
    """A guest session's view of the pipeline streams: counts records, stamps guest identity.

    A PowerShell Direct session's verbose, warning and debug records reach the client only when
    its runspace pool declared a host with a UI: without one, PowerShell (7.6.9, measured) drops
    them, even with -Verbose or the preferences at Continue. Output, error, information and
    progress records pass either way.
    """

    def __init__(self, inner: HostStreams, spec: VMSpec) -> None:
        self._inner = inner
        self._spec = spec
        faults = spec.faults
        # Whichever lab fault ends the session first decides the error the client sees.
        breaks = [
            (n, error)
            for n, error in (
                (faults.session_drop_after_records, pserrors.remote_session_ended(spec.name)),
                (faults.socket_ends_after_records, pserrors.socket_process_ended(spec.name)),
            )
            if n is not None
        ]
        self._break = min(breaks, key=lambda b: b[0]) if breaks else None
        self._count = 0
        self._host_ui = inner.host_has_ui

    def _count_one(self) -> None:
        if self._break is not None and self._count >= self._break[0]:
            raise SessionDropped(self._break[1])
        self._count += 1

    @property
    def records_written(self) -> int:
        return self._count

    def output(self, value: Any) -> None:
        self._count_one()
        self._inner.output(value)

    def error(self, error: SimError) -> None:
        self._count_one()
        self._inner.error(error)

    def warning(self, message: str) -> None:
        self._count_one()
        if self._host_ui:
            self._inner.warning(message)

    def verbose(self, message: str) -> None:
        self._count_one()
        if self._host_ui:
            self._inner.verbose(message)

    def debug(self, message: str) -> None:
        self._count_one()
        if self._host_ui:
            self._inner.debug(message)

    def information(self, info: InformationMessage) -> None:
        # The invoker's step markers are not the script's records: a lab fault that drops the
        # session "after N records" counts what the guest's script wrote.
        if _STEP_MARKER_TAG not in info.tags:
            self._count_one()
        self._inner.information(
            InformationMessage(
                message_data=info.message_data,
                source=info.source,
                tags=info.tags,
                computer=info.computer or self._spec.guest_computer_name,
                user=info.user or f"{self._spec.guest_computer_name}\\{self._spec.username}",
            )
        )

    def progress(self, update: ProgressUpdate) -> None:
        self._count_one()
        self._inner.progress(update)

    async def checkpoint(self) -> None:
        await self._inner.checkpoint()


class HyperVHost:
    """Runs host-level commands against the lab and its persistent state."""

    def __init__(self, lab: Lab, store: HostStore, *, clock: Callable[[], float] = time.time) -> None:
        self.lab = lab
        self.store = store
        self.clock = clock
        # Parameter types as the Hyper-V module and Invoke-Command declare them: names are
        # [string[]], switches [switch], ids [guid], credentials [pscredential].
        names = "strings"
        self._cmdlets: dict[str, tuple[tuple[Param, ...], Callable[..., Any]]] = {
            "get-vm": (
                (
                    Param("Name", 0, aliases=("VMName",), kind=names),
                    Param("Id", kind="guid"),
                    Param("ComputerName", kind=names),
                ),
                self.get_vm,
            ),
            "get-vmintegrationservice": (
                (Param("VMName", 0, kind=names), Param("Name", 1, kind=names), Param("ComputerName", kind=names)),
                self.get_vm_integration_service,
            ),
            "enable-vmintegrationservice": (
                (
                    Param("Name", 0, kind=names),
                    Param("VMName", 1, kind=names),
                    Param("Passthru", switch=True, kind="switch"),
                    Param("ComputerName", kind=names),
                ),
                self.enable_vm_integration_service,
            ),
            "disable-vmintegrationservice": (
                (
                    Param("Name", 0, kind=names),
                    Param("VMName", 1, kind=names),
                    Param("Passthru", switch=True, kind="switch"),
                    Param("ComputerName", kind=names),
                ),
                self.disable_vm_integration_service,
            ),
            "copy-vmfile": (
                (
                    Param("Name", 0, aliases=("VMName",), kind=names),
                    Param("SourcePath", 1, kind="string"),
                    Param("DestinationPath", 2, kind="string"),
                    Param("FileSource"),
                    Param("CreateFullPath", switch=True, kind="switch"),
                    Param("Force", switch=True, kind="switch"),
                    Param("ComputerName", kind=names),
                ),
                self.copy_vm_file,
            ),
            "invoke-command": (
                (
                    Param("ScriptBlock", 0, aliases=("Command",), kind="scriptblock"),
                    Param("VMName", kind=names),
                    Param("VMId", aliases=("VMGuid",), kind="guids"),
                    Param("Credential", kind="credential"),
                    Param("ArgumentList", aliases=("Args",)),
                    Param("ThrottleLimit", kind="int"),
                    Param("HideComputerName", switch=True, kind="switch"),
                    Param("ConfigurationName", kind="string"),
                ),
                self.invoke_command,
            ),
            "restart-vm": (
                (
                    Param("Name", 0, aliases=("VMName",), kind=names),
                    Param("Force", switch=True, kind="switch"),
                    Param("Wait", switch=True, kind="switch"),
                    Param("For"),
                    Param("Timeout", kind="int"),
                    Param("Delay", kind="int"),
                    Param("Type"),
                    Param("Passthru", switch=True, kind="switch"),
                ),
                self.restart_vm,
            ),
            "start-vm": (
                (Param("Name", 0, aliases=("VMName",), kind=names), Param("Passthru", switch=True, kind="switch")),
                self.start_vm,
            ),
            "stop-vm": (
                (
                    Param("Name", 0, aliases=("VMName",), kind=names),
                    Param("Force", switch=True, kind="switch"),
                    Param("TurnOff", switch=True, kind="switch"),
                    Param("Save", switch=True, kind="switch"),
                    Param("Passthru", switch=True, kind="switch"),
                ),
                self.stop_vm,
            ),
        }

        from vmbusops.sim.hostfiles import host_file_cmdlets

        # Get-Command lists the invoker as a JEA role defines it: a function, called by name.
        self._cmdlets.update(host_file_cmdlets(lambda: [*self._cmdlets, invoker.INVOKER_FUNCTION.casefold()]))

    @property
    def cmdlet_names(self) -> list[str]:
        return sorted(self._cmdlets)

    async def run(self, commands: list[CommandSpec], streams: HostStreams) -> None:
        """Run a pipeline's commands (statements in order); TerminatingError ends it Failed."""
        for command in commands:
            if command.is_script:
                text = str(command.command_text)
                if not invoker.is_invoker_script(text):
                    raise TerminatingError(pserrors.script_not_allowed(text))
                await self._chaos(invoker.INVOKER_FUNCTION, streams)
                await self.invoke_vmbusops_guest(command.parameters, streams, as_function=False)
                await streams.checkpoint()
                continue
            name = str(command.command_text)
            if name.casefold() == invoker.INVOKER_FUNCTION.casefold():
                await self._chaos(name, streams)
                await self.invoke_vmbusops_guest(command.parameters, streams, as_function=True)
                await streams.checkpoint()
                continue
            entry = self._cmdlets.get(name.casefold())
            if entry is None:
                raise TerminatingError(pserrors.command_not_found(name))
            await self._chaos(name, streams)
            params, handler = entry
            fq = (
                f"{HYPERV}.{name.replace('-', '')}"
                if name.casefold() != "invoke-command"
                else (pserrors.INVOKE_COMMAND_FQ)
            )
            try:
                bound = bind(params, fq, [(n, plain(v)) for n, v in command.parameters], to_text)
                await handler(bound, streams, fq)
            except BindingError as exc:
                raise TerminatingError(pserrors.with_activity(exc.error, name)) from None
            await streams.checkpoint()

    async def _chaos(self, name: str, streams: HostStreams) -> None:
        host = self.lab.host
        if host.garbage_on is not None and host.garbage_on.casefold() == name.casefold():
            streams.inject_garbage()
        if host.crash_on is not None and host.crash_on.casefold() == name.casefold():
            await streams.crash()

    # ---- lookups -------------------------------------------------------------------------

    def _resolve(self, cmdlet: str, names: list[str], streams: Streams) -> list[VMSpec]:
        return resolve_vms(self.lab, cmdlet, names, streams.error)

    def _vm_object(self, spec: VMSpec, rt: VMRuntime, now: float) -> SimObject:
        facts = vm_facts(self.lab, spec, rt, now)
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
            ),
            f"VirtualMachine (Name = '{spec.name}') [Id = '{spec.id}']",
        )

    # ---- cmdlets -------------------------------------------------------------------------

    async def get_vm(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        now = self.clock()
        snapshot = self.store.snapshot()
        if b.get("Id") is not None:
            ids = names_of(b["Id"])
            specs = []
            for vm_id in ids:
                spec = self.lab.find_by_id(vm_id)
                if spec is None:
                    streams.error(pserrors.vm_id_not_found("Get-VM", vm_id))
                else:
                    specs.append(spec)
        else:
            specs = self._resolve("Get-VM", names_of(b.get("Name")), streams)
        for spec in specs:
            streams.output(self._vm_object(spec, snapshot[spec.name.casefold()], now))
            await streams.checkpoint()

    async def get_vm_integration_service(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        require(b, fq, "VMName")
        now = self.clock()
        wanted = names_of(b.get("Name"))
        for spec in self._resolve("Get-VMIntegrationService", names_of(b["VMName"]), streams):
            rt = self.store.runtime(spec)
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

    async def enable_vm_integration_service(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        await self._set_integration(b, streams, fq, True, "Enable-VMIntegrationService")

    async def disable_vm_integration_service(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        await self._set_integration(b, streams, fq, False, "Disable-VMIntegrationService")

    async def _set_integration(
        self, b: dict[str, Any], streams: Streams, fq: str, enabled: bool, cmdlet: str
    ) -> None:
        require(b, fq, "Name", "VMName")
        services = names_of(b["Name"])
        for spec in self._resolve(cmdlet, names_of(b["VMName"]), streams):
            for service in services:
                known = [s for s in INTEGRATION_SERVICES if wildcard_match(s, service)]
                if not known:
                    streams.error(pserrors.integration_service_not_found(cmdlet, spec.name, service))
                    continue
                for name in known:
                    self.store.update(
                        spec, functools.partial(VMRuntime.with_integration, name=name, enabled=enabled)
                    )

    async def copy_vm_file(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
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
        for spec in self._resolve("Copy-VMFile", names_of(b["Name"]), streams):
            error = await self._copy_one(
                spec, source, destination, bool(b.get("CreateFullPath")), bool(b.get("Force"))
            )
            if error is not None:
                streams.error(pserrors.copy_failed(spec.name, error))
            await streams.checkpoint()

    async def _copy_one(
        self, spec: VMSpec, source: Path, destination: str, full_path: bool, force: bool
    ) -> str | None:
        target = copy_target(self.store, spec, self.clock(), source, destination, full_path=full_path, force=force)
        if isinstance(target, str):
            return target
        await trio.to_thread.run_sync(write_copy, spec, source, target, destination)
        return None

    async def invoke_vmbusops_guest(
        self, parameters: list[tuple[str | None, Any]], streams: HostStreams, *, as_function: bool
    ) -> None:
        """The guest invoker (``vmbusops.sim.invoker``): bind, check, then Invoke-Command natively."""
        try:
            call = invoker.bind_invoker([(n, plain(v)) for n, v in parameters], as_function=as_function)
        except BindingError as exc:
            raise TerminatingError(exc.error) from None
        mismatch = invoker.step_count_mismatch(call)
        if mismatch is not None:
            raise TerminatingError(mismatch)
        if call.vm_id is not None:
            spec = self.lab.find_by_id(call.vm_id)
            missing = None if spec is not None else pserrors.invoke_vm_id_not_found(call.vm_id)
        else:
            assert call.vm_name is not None
            spec = self.lab.find(call.vm_name)
            missing = None if spec is not None else pserrors.invoke_vm_name_not_found(call.vm_name)
        if spec is None:
            assert missing is not None
            streams.error(missing)
            return

        async def wrapper(session: GuestSession, emit: Emit) -> None:
            await invoker.run_guest_wrapper(session, call, emit)

        await self._invoke_in_guest(spec, _credential(call.credential), wrapper, streams)

    async def invoke_command(self, b: dict[str, Any], streams: HostStreams, fq: str) -> None:
        """Invoke-Command sent directly: it can never run, as with PowerShell over PSRP.

        Its -ScriptBlock is a [scriptblock], which no value a PSRP client sends binds to (the
        binder refuses it before this runs); without it, no VM parameter set is complete. Guest
        code runs through the guest invoker (``invoke_vmbusops_guest``), which builds the script
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

    async def _invoke_in_guest(
        self,
        spec: VMSpec,
        credential: tuple[str, str] | None,
        body: Callable[[GuestSession, Emit], Awaitable[None]],
        streams: HostStreams,
    ) -> None:
        """Open a PowerShell Direct session to ``spec`` (with Invoke-Command's errors) and run ``body``."""
        rt = self.store.runtime(spec)
        if rt.state is not VMState.RUNNING:
            streams.error(pserrors.invoke_vm_not_running(spec.name))
            return
        if self.lab.host.session_open_ms:
            await trio.sleep(self.lab.host.session_open_ms / 1000)
            # The VM may have been stopped or restarted while the session opened.
            rt = self.store.runtime(spec)
        if not rt.booted(self.clock()):
            streams.error(pserrors.remote_session_ended(spec.name))
            return
        if spec.faults.connect_fails:
            streams.error(pserrors.session_connect_failed(spec.name))
            return
        if credential is None or not _credential_matches(spec, credential, self.lab):
            streams.error(pserrors.credential_invalid(spec.name))
            return
        if spec.latency_ms:
            await trio.sleep(spec.latency_ms / 1000)
        guest_streams = _GuestStreams(streams, spec)
        session = GuestSession(
            spec=spec, store=self.store, streams=guest_streams, username=credential[0]
        )

        async def emit(value: Any) -> None:
            guest_streams.output(value)
            await guest_streams.checkpoint()

        try:
            await body(session, emit)
        except SessionDropped as exc:
            streams.error(exc.error)

    async def restart_vm(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        require(b, fq, "Name")
        boot = self.lab.host.boot_seconds
        for spec in self._resolve("Restart-VM", names_of(b["Name"]), streams):
            rt = self.store.runtime(spec)
            if rt.state is not VMState.RUNNING:
                streams.error(pserrors.vm_state_change_failed("Restart-VM", spec.name))
                continue
            now = self.clock()
            # Lab fault: a guest that never finishes booting (heartbeat stays NoContact).
            boot_for = 10 * 365 * 86400.0 if spec.faults.hang_on_restart else boot
            self.store.update(spec, functools.partial(VMRuntime.started, now=now, boot_seconds=boot_for))
            if b.get("Wait"):
                # -Wait returns once the guest heartbeats again.
                await trio.sleep(boot)

    async def start_vm(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        require(b, fq, "Name")
        boot = self.lab.host.boot_seconds
        for spec in self._resolve("Start-VM", names_of(b["Name"]), streams):
            if self.store.runtime(spec).state is VMState.RUNNING:
                streams.warning(f"The virtual machine '{spec.name}' is already in the specified state.")
                continue
            now = self.clock()
            self.store.update(spec, functools.partial(VMRuntime.started, now=now, boot_seconds=boot))

    async def stop_vm(self, b: dict[str, Any], streams: Streams, fq: str) -> None:
        require(b, fq, "Name")
        for spec in self._resolve("Stop-VM", names_of(b["Name"]), streams):
            rt = self.store.runtime(spec)
            if rt.state is VMState.OFF:
                streams.warning(f"The virtual machine '{spec.name}' is already in the specified state.")
                continue
            if b.get("Save"):
                self.store.update(spec, _saved)
            else:
                self.store.update(spec, lambda rt: rt.stopped())


def _saved(rt: VMRuntime) -> VMRuntime:
    return replace(rt, state=VMState.SAVED, running_since=None, boot_until=0.0)


def _credential(value: Any) -> tuple[str, str] | None:
    """(user, password) from a PSCredential; None when it is not one. The password stays here."""
    user = getattr(value, "UserName", None)
    secret = getattr(value, "Password", None)
    if user is None or secret is None:
        return None
    if isinstance(secret, PSSecureString):
        try:
            secret = secret.decrypt()
        except Exception:
            # Not encrypted with this session's key: the guest cannot validate it.
            return None
    return str(user), str(secret)


def _credential_matches(spec: VMSpec, credential: tuple[str, str], lab: Lab) -> bool:
    user, password = credential
    # Guests accept "user", ".\\user" and "COMPUTER\\user" for a local account.
    domain, _, name = user.rpartition("\\")
    if domain not in ("", ".") and domain.casefold() not in (
        spec.guest_computer_name.casefold(),
        spec.name.casefold(),
    ):
        return False
    return name.casefold() == spec.username.casefold() and password == lab_password(lab, spec.name)
