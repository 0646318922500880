"""What we do to guests, as a Hyper-V administrator would: the host operations.

Every operation is one of a short, named list of Hyper-V cmdlets, sent as a structured command
with typed parameters (:data:`HOST_CMDLETS`). Guest scripts are opaque text that runs inside the
guest: they travel as parameter values of the guest invoker (:mod:`.invoker`), which runs each one
as a script file in the guest and reports its exit code. A :class:`HyperVHost` wraps one open
runspace pool; many operations may run on it at once (each is its own pipeline).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

import trio

from vmbusops.credentials import GuestCredential
from vmbusops.errors import (
    ConfigError,
    FailureCode,
    GuestError,
    GuestNotReadyError,
    GuestServicesDisabledError,
    HostCommandError,
    VmbusOpsError,
    VMNotFoundError,
    VMNotRunningError,
)
from vmbusops.guest_paths import EXAMPLE as GUEST_PATH_EXAMPLE
from vmbusops.guest_paths import guest_path_problem
from vmbusops.guestops import checkpoints
from vmbusops.guestops.checkpoints import CheckpointInfo, CheckpointRoom
from vmbusops.guestops.classify import classify
from vmbusops.guestops.invoker import INVOKER_FUNCTION, StepMarker, invoker_command, parse_marker
from vmbusops.guestops.vm_groups import VMGroupInfo, parse_vm_group
from vmbusops.psrp.client import Command
from vmbusops.psrp.session import HostSession, RecordStream
from vmbusops.records import (
    ErrorRecord,
    GuestRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    PSObjectValue,
    Record,
    Value,
)

GUEST_SERVICE_INTERFACE: Final = "Guest Service Interface"

#: Every cmdlet the agent sends to a Hyper-V host, or that the guest invoker calls on it. A
#: least-privilege endpoint allows exactly these, plus the invoker as a function.
HOST_CMDLETS: Final = frozenset(
    {
        "Get-VM",
        "Get-VMIntegrationService",
        "Get-VMGroup",
        "Enable-VMIntegrationService",
        "Copy-VMFile",
        "Invoke-Command",
        "Restart-VM",
        "Start-VM",
        "Stop-VM",
        # Checkpoint-guarded steps (vmbusops.guestops.checkpoints). Get-Volume is a function of the
        # Storage module, not a cmdlet: the JEA role lists it under VisibleFunctions.
        "Checkpoint-VM",
        "Get-VMSnapshot",
        "Restore-VMSnapshot",
        "Remove-VMSnapshot",
        "Get-VMHardDiskDrive",
        "Get-Volume",
    }
)

_HEARTBEAT_OK = ("Ok", "OkApplicationsHealthy", "OkApplicationsUnknown")


@dataclass(frozen=True, slots=True)
class VMInfo:
    name: str
    id: str
    state: str
    heartbeat: str | None
    guest_services: bool | None
    uptime: str | None = None
    #: Get-VM's Notes: free text, where tags are kept (:mod:`vmbusops.vm_tags`); hostile text.
    notes: str = ""

    @property
    def running(self) -> bool:
        return self.state == "Running"

    @property
    def heartbeat_ok(self) -> bool:
        return self.heartbeat in _HEARTBEAT_OK


@dataclass(slots=True)
class InvokeOutcome:
    """How a guest invocation ended.

    A guest script succeeds when it exits 0 and wrote no PowerShell error record. A terminating
    error is exit code 1 (see the invoker); a native tool's stderr lines are error records on the
    wire (Windows PowerShell 5.1's remoting makes them so) but count as neither: the tool's exit
    code speaks for it. ``exit_code`` is None when no step ended: the session failed first;
    ``script_errors`` is what the invoker counted, ``error_records`` every error record seen.
    """

    state: PipelineState | None = None
    error_records: int = 0
    failure: VmbusOpsError | None = None
    records: int = 0
    error_messages: list[str] = field(default_factory=list)
    exit_code: int | None = None
    script_errors: int = 0

    @property
    def ok(self) -> bool:
        return self.ok_but_exit_code and self.exit_code == 0

    @property
    def ok_but_exit_code(self) -> bool:
        """Succeeded but for a non-zero exit code (an exit code came back: the script ended)."""
        return (
            self.state is PipelineState.COMPLETED
            and self.failure is None
            and self.exit_code is not None
            and self.script_errors == 0
        )

    def failure_code(self, *, ignore_exit_code: bool = False) -> FailureCode:
        """Why this invocation did not succeed, for programs (see :meth:`why_failed`)."""
        if self.failure is not None:
            return self.failure.code
        # Error records first: a terminating error also sets exit code 1, and its cause is the error.
        if self.script_errors:
            return FailureCode.SCRIPT_FAILED
        if self.exit_code not in (None, 0) and not ignore_exit_code:
            return FailureCode.EXIT_CODE
        if self.state is PipelineState.STOPPED:
            return FailureCode.CANCELLED
        return FailureCode.SCRIPT_FAILED

    def why_failed(self, *, ignore_exit_code: bool = False) -> str:
        """One line for an operator: why this invocation did not succeed."""
        if self.failure is not None:
            return str(self.failure)
        code = f"exit code {self.exit_code}" if self.exit_code not in (None, 0) and not ignore_exit_code else ""
        if self.script_errors:
            first = f": {self.error_messages[0]}" if self.error_messages else ""
            return f"{self.script_errors} error record(s){', ' + code if code else ''}{first}"
        if code:
            return code
        if self.state is not PipelineState.COMPLETED:
            return f"the invocation ended {self.state.value if self.state else 'without a state'}"
        return "no step ended in the guest"


def _str(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, PSObjectValue):
        return value.to_string
    return str(value)


def _is_connection_error(record: ErrorRecord) -> bool:
    """Errors raised by Invoke-Command itself (reaching the guest), not by the guest's script."""
    fqid = record.fqid
    return (
        "InvokeCommand" in fqid
        or "PSSession" in fqid
        or "RemoteRunspace" in fqid
        or "PSRemoting" in fqid
        or "PSDirect" in fqid
        or fqid.startswith(("InvalidVM", "VMNotRunning", "CredentialInvalid", "RemoteSessionLost"))
    )


class HyperVHost:
    """Host operations over an open runspace pool."""

    #: Whether the host's disk is another machine's: then files for Copy-VMFile must be staged.
    is_remote: ClassVar[bool] = False

    def __init__(
        self, pool: HostSession, *, invoker_as_function: bool = False, refused_steps: Mapping[str, str] | None = None
    ) -> None:
        self.pool = pool
        #: A JEA endpoint refuses script commands: call its role's Invoke-VmbusOpsGuest instead.
        self.invoker_as_function = invoker_as_function
        #: Step kinds this host's guests cannot run -> why (the pwsh-lab's guests have no Windows
        #: Update Agent): a job with one is refused before it is made (:meth:`refuse_steps`).
        self.refused_steps: Mapping[str, str] = dict(refused_steps or {})
        self._listing_ttl = 0.0
        self._listing: list[VMInfo] | None = None
        self._listed_at = -float("inf")
        self._listing_lock = trio.Lock()

    def cache_listing(self, ttl: float) -> HyperVHost:
        """Answer a full VM listing from a copy at most ``ttl`` seconds old; returns this host.

        Every submission to the agent resolves its targets against the host's VMs, and on a host
        with many VMs ``Get-VM`` is the most expensive part of it: a burst of submissions shares
        one listing, fetched once for all callers waiting at that moment. A listing by name always
        asks the host. A VM created within ``ttl`` may be missed by a glob target; a target named
        exactly is kept by the engine anyway and fails, if the VM does not exist, with Hyper-V's
        own message. The host keeps its kind (local or remote staging, JEA's invoker function).
        """
        self._listing_ttl = ttl
        return self

    def refuse_steps(self, steps: Iterable[tuple[str, str]]) -> None:
        """Raise :class:`ConfigError` for the first of ``steps`` (name, kind) whose kind this
        host's guests cannot run, before a job is made of them: a refusal uses nothing up."""
        for name, kind in steps:
            why = self.refused_steps.get(kind)
            if why is not None:
                raise ConfigError(
                    f"step {name} is a {kind} step, which this host cannot run: {why}",
                    hint="run it on the simulator (--host sim) or on a Hyper-V host",
                )

    # -------------------------------------------------------------- plumbing
    async def _run_host(self, vm: str | None, *statements: Sequence[Command]) -> list[Value]:
        """Run host cmdlets; return output values, raise the first error classified."""
        values: list[Value] = []
        first_error: ErrorRecord | None = None
        async with self.pool.invoke(statements) as pipe:
            async for record in pipe:
                if isinstance(record, OutputRecord):
                    values.append(record.value)
                elif isinstance(record, ErrorRecord) and first_error is None:
                    first_error = record
                elif isinstance(record, PipelineStateRecord) and record.error and first_error is None:
                    first_error = record.error
        if first_error is not None:
            raise classify(vm or "host", first_error)
        return values

    async def choose_invoker(self) -> None:
        """Use the endpoint's ``Invoke-VmbusOpsGuest`` function where it defines one.

        A JEA endpoint (NoLanguage) refuses script commands, and its role capability defines the
        invoker as a function of the same body (``host_agent/jea``); any other endpoint runs the
        script command. One ``Get-Command`` when a remote host is opened tells them apart.
        """
        found = False
        async with self.pool.invoke([[Command("Get-Command", {"Name": INVOKER_FUNCTION})]]) as pipe:
            async for record in pipe:
                if isinstance(record, OutputRecord) and isinstance(record.value, PSObjectValue):
                    name = _str(record.value.get("Name"))
                    found = found or (name or "").casefold() == INVOKER_FUNCTION.casefold()
        self.invoker_as_function = found

    # -------------------------------------------------------------- VMs
    async def list_vms(self, names: Sequence[str] | None = None, *, fresh: bool = False) -> list[VMInfo]:
        """Every VM on the host (or those matching ``names``), with the Guest Service Interface state;
        ``fresh``: asked of the host now, whatever :meth:`cache_listing` keeps (and kept)."""
        if names or self._listing_ttl <= 0:
            return await self._list_vms(names)
        async with self._listing_lock:
            if fresh or self._listing is None or trio.current_time() - self._listed_at > self._listing_ttl:
                self._listing = await self._list_vms(None)
                self._listed_at = trio.current_time()
            return list(self._listing)

    async def _list_vms(self, names: Sequence[str] | None) -> list[VMInfo]:
        get_vm = Command("Get-VM", {"Name": list(names)} if names else {})
        gsi = Command(
            "Get-VMIntegrationService",
            {"VMName": list(names) if names else "*", "Name": GUEST_SERVICE_INTERFACE},
        )
        values = await self._run_host(None, [get_vm], [gsi])
        vms: list[PSObjectValue] = []
        services: dict[str, bool] = {}
        for value in values:
            if not isinstance(value, PSObjectValue):
                continue
            if any("VMIntegrationComponent" in t or "IntegrationService" in t for t in value.type_names):
                vm_name = _str(value.get("VMName"))
                if vm_name is not None:
                    services[vm_name] = bool(value.get("Enabled"))
            else:
                vms.append(value)
        return [
            VMInfo(
                name=_str(v.get("Name")) or "",
                id=_str(v.get("Id")) or "",
                state=_str(v.get("State")) or "Unknown",
                heartbeat=_str(v.get("Heartbeat")),
                guest_services=services.get(_str(v.get("Name")) or ""),
                uptime=_str(v.get("Uptime")),
                notes=_str(v.get("Notes")) or "",
            )
            for v in vms
        ]

    async def list_vm_groups(self) -> list[VMGroupInfo]:
        """Every VM group of the host, with its members: one ``Get-VMGroup -Name *`` (a JEA role
        cannot allow a cmdlet with no parameter at all, so the endpoint allows exactly this one)."""
        values = await self._run_host(None, [Command("Get-VMGroup", {"Name": "*"})])
        return [g for g in (parse_vm_group(v) for v in values) if g is not None]

    async def get_vm(self, name: str) -> VMInfo:
        vms = await self.list_vms([name])
        for vm in vms:
            if vm.name.lower() == name.lower():
                return vm
        raise VMNotFoundError(f"{name}: no virtual machine with that name on this host", vm=name)

    async def enable_guest_services(self, vm: str) -> None:
        await self._run_host(
            vm, [Command("Enable-VMIntegrationService", {"VMName": vm, "Name": GUEST_SERVICE_INTERFACE})]
        )

    async def start_vm(self, vm: str) -> None:
        await self._run_host(vm, [Command("Start-VM", {"Name": vm})])

    async def stop_vm(self, vm: str, *, turn_off: bool = False) -> None:
        params: dict[str, Any] = {"Name": vm, "Force": True}
        if turn_off:
            params["TurnOff"] = True
        await self._run_host(vm, [Command("Stop-VM", params)])

    async def restart_vm(self, vm: str) -> None:
        """Restart from the host: needs no guest network and no guest credential."""
        await self._run_host(vm, [Command("Restart-VM", {"Name": vm, "Force": True})])

    # -------------------------------------------------------------- checkpoints
    # Thin: the commands, their errors and the facts about Hyper-V are in guestops.checkpoints.
    async def checkpoint_vm(self, vm: str, name: str) -> CheckpointInfo:
        return await checkpoints.checkpoint_vm(self._run_host, vm, name)

    async def get_checkpoints(self, vm: str, name: str | None = None) -> list[CheckpointInfo]:
        return await checkpoints.get_checkpoints(self._run_host, vm, name)

    async def restore_checkpoint(self, vm: str, name: str) -> None:
        await checkpoints.restore_checkpoint(self._run_host, vm, name)

    async def remove_checkpoint(self, vm: str, name: str, *, missing_ok: bool = True) -> bool:
        return await checkpoints.remove_checkpoint(self._run_host, vm, name, missing_ok=missing_ok)

    async def checkpoint_room(self, vm: str) -> CheckpointRoom:
        return await checkpoints.checkpoint_room(self._run_host, vm)

    # -------------------------------------------------------------- files
    async def copy_to_guest(
        self,
        vm: str,
        source: str,
        destination: str,
        *,
        create_full_path: bool = True,
        force: bool = True,
    ) -> None:
        """Copy one host file into the guest with Copy-VMFile (VMBus; no guest network or credential).

        Copy-VMFile reports a disabled Guest Service Interface with the same "file exists" text
        as a real name clash, so on that error we look at the service before saying which.
        """
        problem = guest_path_problem(destination)
        if problem is not None:  # the manifest's rule, again: ``guest copy`` and DSC files come here too
            raise HostCommandError(
                f"{vm}: guest destination {destination!r} {problem}",
                hint=f"use an absolute Windows path such as {GUEST_PATH_EXAMPLE}",
            )
        params: dict[str, Any] = {
            "Name": vm,
            "SourcePath": source,
            "DestinationPath": destination,
            "FileSource": "Host",
        }
        if create_full_path:
            params["CreateFullPath"] = True
        if force:
            params["Force"] = True
        try:
            await self._run_host(vm, [Command("Copy-VMFile", params)])
        except (GuestError, HostCommandError) as exc:
            if isinstance(exc, VMNotFoundError):
                raise
            # Copy-VMFile's texts are HRESULTs that do not say which precondition failed
            # (a disabled service reads "The file exists."), so ask the host which one did.
            try:
                info = await self.get_vm(vm)
            except VmbusOpsError:
                raise exc from None
            if not info.running:
                raise VMNotRunningError(
                    f"{vm}: Copy-VMFile needs a running guest; the VM is {info.state} ({exc.message})",
                    vm=vm,
                    hint="start it first (Start-VM)",
                ) from exc
            if info.guest_services is False:
                raise GuestServicesDisabledError(
                    f"{vm}: Copy-VMFile failed because the Guest Service Interface is disabled ({exc.message})",
                    vm=vm,
                    hint=f"enable it with: Enable-VMIntegrationService -VMName '{vm}' "
                    f"-Name '{GUEST_SERVICE_INTERFACE}' (or vmbusops copy --enable-guest-services)",
                ) from exc
            raise

    # -------------------------------------------------------------- PowerShell Direct
    @asynccontextmanager
    async def invoke_steps(
        self,
        vm: str,
        steps: Sequence[tuple[int, str]],
        credential: GuestCredential,
        *,
        arguments: Sequence[Any] = (),
        step: str | None = None,
        vm_id: str | None = None,
    ) -> AsyncIterator[GuestInvocation]:
        """Run ``steps`` ((index, script) pairs) in one PowerShell Direct session; yield records live.

        The step markers come through :meth:`GuestInvocation.take` between the records, parsed
        (see :func:`.invoker.parse_marker`): the engine needs them to tell which step a record
        belongs to, and journals none.
        """
        # The credential goes to the PSRP layer as is; it is serialized as a PSCredential whose
        # password is a SecureString encrypted with the session key.
        command = invoker_command(
            vm=vm,
            steps=steps,
            credential=credential,
            arguments=arguments,
            vm_id=vm_id,
            as_function=self.invoker_as_function,
        )
        async with self.pool.invoke([[command]]) as pipe:
            yield GuestInvocation(vm, pipe, step, markers=True)

    @asynccontextmanager
    async def invoke_in_guest(
        self,
        vm: str,
        script: str,
        credential: GuestCredential,
        *,
        arguments: Sequence[Any] = (),
        step: str | None = None,
        vm_id: str | None = None,
    ) -> AsyncIterator[GuestInvocation]:
        """Run one script in the guest through PowerShell Direct; yield its records live.

        The step markers are taken out; the script's exit code is ``outcome.exit_code`` and the
        ``exit_code`` of the final state record.
        """
        command = invoker_command(
            vm=vm,
            steps=[(0, script)],
            credential=credential,
            arguments=arguments,
            vm_id=vm_id,
            as_function=self.invoker_as_function,
        )
        async with self.pool.invoke([[command]]) as pipe:
            yield GuestInvocation(vm, pipe, step, markers=False)

    async def run_in_guest(
        self, vm: str, script: str, credential: GuestCredential, **kwargs: Any
    ) -> tuple[list[GuestRecord], InvokeOutcome]:
        """Run a script in the guest to its end; return its records and outcome."""
        async with self.invoke_in_guest(vm, script, credential, **kwargs) as inv:
            records = [rec async for rec in inv]
        return records, inv.outcome

    async def wait_guest_ready(
        self,
        vm: str,
        credential: GuestCredential,
        *,
        timeout: float = 300.0,
        poll_interval: float = 1.0,
        sessions: AbstractAsyncContextManager[object] | None = None,
    ) -> None:
        """Wait until the heartbeat is OK and PowerShell Direct answers, or raise GuestNotReadyError.

        The one wait for a guest, for ``vmbusops`` commands and the engine's steps alike: Get-VM's
        heartbeat first, then a probe through PowerShell Direct (which prints one line); polled
        every ``poll_interval``, backing off by half each time up to 10 s. The probe holds a slot
        of ``sessions`` (the engine's session limit, across its jobs, entered again for each probe:
        :class:`~vmbusops.engine.context.SessionSlot`) while it runs.
        """
        deadline = trio.current_time() + timeout
        last: str = "no answer yet"
        delay = poll_interval
        while True:
            info = await self.get_vm(vm)
            if not info.running:
                raise VMNotRunningError(
                    f"{vm}: the VM is {info.state}, it will not become ready on its own",
                    vm=vm,
                    hint="start it first (Start-VM)",
                )
            if info.heartbeat_ok:
                async with AsyncExitStack() as stack:
                    if sessions is not None:
                        await stack.enter_async_context(sessions)
                    _, outcome = await self.run_in_guest(vm, "Write-Output 'ready'", credential)
                if outcome.ok:
                    return
                failure = outcome.failure
                if failure is not None and not failure.transient:
                    raise failure
                last = str(failure) if failure else "; ".join(outcome.error_messages) or "errors"
            else:
                last = f"heartbeat is {info.heartbeat or 'not reported'}"
            if trio.current_time() + delay > deadline:
                raise GuestNotReadyError(
                    f"{vm}: the guest did not become ready within {timeout:g}s ({last})", vm=vm
                )
            await trio.sleep(delay)
            delay = min(delay * 1.5, 10.0)


@dataclass(frozen=True, slots=True)
class Taken:
    """Consecutive records of a guest invocation as :meth:`GuestInvocation.take` gives them: when
    the agent took them, and the step marker that came right after them (None: none did yet)."""

    time: float
    records: list[Record]
    marker: StepMarker | None


class GuestInvocation:
    """Records of one guest invocation.

    Iterate it for the records one by one, each wrapped with VM, sequence number (1, 2, 3...
    within the invocation) and time; or :meth:`take` what has arrived, a packet's worth or more at
    a time, for the caller to number (the engine numbers a run's records itself). The invoker's
    ``end`` markers set ``outcome.exit_code``; with ``markers=False`` the markers are consumed here
    and the final state record carries the exit code instead. With markers, :meth:`take` gives
    each parsed, in order between the records; iterating never does.
    """

    def __init__(self, vm: str, pipe: RecordStream, step: str | None, *, markers: bool = True) -> None:
        self.vm = vm
        self._pipe = pipe
        self._step = step
        self._number = itertools.count(1).__next__
        self._markers = markers
        self.outcome = InvokeOutcome()

    def __aiter__(self) -> GuestInvocation:
        return self

    async def __anext__(self) -> GuestRecord:
        while True:
            try:
                record = await self._pipe.__anext__()
            except VmbusOpsError as exc:
                self.outcome.failure = self.outcome.failure or exc
                raise
            one = self._one(record)
            if one is not None and not isinstance(one, StepMarker):
                return GuestRecord(vm=self.vm, seq=self._number(), time=time.time(), record=one, step=self._step)

    async def take(self) -> list[Taken]:
        """What has arrived, at least one record or marker, in order: each run of consecutive
        records with the step marker that followed it; [] once the invocation has ended. A caller
        that handles records in bulk waits once per packet, not once per record. The records are
        not numbered: what a caller leaves of them (it stops at a marker) takes no number."""
        taken: list[Taken] = []
        while not taken:
            try:
                records = await self._pipe.take()
            except VmbusOpsError as exc:
                self.outcome.failure = self.outcome.failure or exc
                raise
            if not records:
                return []
            now = time.time()
            run: list[Record] = []
            for record in records:
                one = self._one(record)
                if isinstance(one, StepMarker):
                    taken.append(Taken(now, run, one))
                    run = []
                elif one is not None:
                    run.append(one)
            if run:
                taken.append(Taken(now, run, None))
        return taken

    def _one(self, record: Record) -> Record | StepMarker | None:
        """A record from the pipeline as the caller gets it, observed; or the step marker it is
        (None: a marker the caller does not see)."""
        mark = parse_marker(record)
        if mark is not None:
            if mark.kind == "end":
                self.outcome.exit_code = mark.exit_code if mark.exit_code is not None else 0
                self.outcome.script_errors += mark.errors
            return mark if self._markers else None
        if isinstance(record, PipelineStateRecord) and self.outcome.exit_code is not None:
            record = PipelineStateRecord(state=record.state, error=record.error, exit_code=self.outcome.exit_code)
        self._observe(record)
        return record

    def _observe(self, record: Record) -> None:
        outcome = self.outcome
        outcome.records += 1
        if isinstance(record, ErrorRecord):
            outcome.error_records += 1
            if len(outcome.error_messages) < 20:
                outcome.error_messages.append(record.message)
            if outcome.failure is None and _is_connection_error(record):
                outcome.failure = classify(self.vm, record)
        elif isinstance(record, PipelineStateRecord):
            outcome.state = record.state
            if record.error is not None and outcome.failure is None:
                outcome.failure = classify(self.vm, record.error)

    async def stop(self) -> None:
        await self._pipe.stop()
