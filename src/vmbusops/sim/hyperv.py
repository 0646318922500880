"""The simulated Hyper-V host: runs the commands the agent sends, as a real host runs them.

Host cmdlets arrive as structured commands (name + typed parameters), exactly as the agent sends
them to a real ``powershell.exe``; :class:`HyperVHost` looks each one up in the host's table
(``vmbusops.sim.cmdlets``), binds its parameters and runs it. Binding failures and unknown commands
end the pipeline Failed with PowerShell's terminating error; per-VM problems are non-terminating
error records and the pipeline completes, as the real cmdlets behave. The one script command
accepted is the guest invoker (``vmbusops.sim.invoker``), the only way guest code runs; it opens a
PowerShell Direct session to the guest (:class:`~vmbusops.sim.guest.GuestSession`) with
Invoke-Command's checks and errors. :class:`SessionCount` counts the sessions open at once, from
the moment one starts opening until its command ends, and the most there have been, so a test
can see how many sessions a client holds (a real host's memory grows with that number).

A host of a fleet (``identity``, from ``python -m vmbusops.sim --as NAME``; see
:mod:`vmbusops.sim.cluster`) has only the VMs it owns now: any other is unknown to its cmdlets
and to Invoke-Command, with their real errors. The host's open PowerShell Direct sessions are
watched together (:class:`OwnerWatch`): one task, while any is open, looks at their VMs' owners
every :data:`OWNER_POLL_SECONDS` (a look at the state the store keeps in memory, read again only
when another process changed the file); when a session's VM left the host
(live migration, failover), the session breaks under the running command as a real one does when
the VM's end of the Hyper-V socket goes away: PowerShell's client
(``HyperVSocketClientSessionTransportManagerBase.ProcessReaderThread`` in PowerShell's
``OutOfProcTransportManager.cs``) raises the same PSRemotingTransportException,
IPCServerProcessReportedError wrapping HyperVSocketTransportProcessEnded, whether the socket
ended or its read failed (``pserrors.socket_process_ended``). The records written before stay
written; the guest itself goes on running on its new host, files and all. When the host itself
is down, ``on_down`` runs first (a simulator process exits: a dead node answers nothing); without
it (in-process), sessions break the same way and commands fail.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio
from psrpcore.types import PSSecureString

from vmbusops.sim import invoker, pserrors
from vmbusops.sim.binding import BindingError, bind
from vmbusops.sim.cmdlets import HOST_CMDLETS
from vmbusops.sim.guest import GuestSession
from vmbusops.sim.guest_values import Emit, to_text
from vmbusops.sim.host_command import HOST_ALIASES
from vmbusops.sim.lab import Lab, VMSpec, VMState, lab_password
from vmbusops.sim.state import HostStore, VMRuntime
from vmbusops.sim.streams import (
    InformationMessage,
    ProgressUpdate,
    SimError,
    Streams,
    TerminatingError,
)

HYPERV = "Microsoft.HyperV.PowerShell.Commands"
#: How often an open PowerShell Direct session of a fleet host checks that its VM is still there.
OWNER_POLL_SECONDS = 0.25



class HostStreams(Streams, Protocol):
    """The pipeline's streams plus the chaos hooks only the host level uses."""

    @property
    def host_has_ui(self) -> bool:
        """Whether the client's runspace pool declared a host with a UI (see ``_GuestStreams``)."""
        ...

    def inject_garbage(self) -> None: ...

    def inject_malformed(self) -> None: ...

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



@dataclass(eq=False, slots=True)
class _Watched:
    """One open session of a fleet host: its VM (case-folded), the VM's moves when it opened, the
    scope that breaks it, and the error the watch met looking, if it met one."""

    key: str
    moves: int
    scope: trio.CancelScope
    error: Exception | None = None


class OwnerWatch:
    """A fleet host's open PowerShell Direct sessions, watched together: while any is open, one
    task wakes every :data:`OWNER_POLL_SECONDS`, reads the store once, and breaks each session
    whose VM is no longer here or has moved since it opened (every session, when the host is
    down). A timer per session would wake the simulator once per session per poll, and on a
    host with tens of sessions open those wakes are most of what it does while guests wait.

    The task is a system task (:func:`trio.lowlevel.spawn_system_task`): it outlives the
    session that started it, ends once no session is open, and never raises: an error it meets
    looking breaks every open session with that error, as a session's own watch did.
    """

    def __init__(self, host: HyperVHost) -> None:
        self._host = host
        self._open: set[_Watched] = set()
        self._running = False

    def add(self, watched: _Watched) -> None:
        self._open.add(watched)
        if not self._running:
            self._running = True
            trio.lowlevel.spawn_system_task(self._poll, name="vmbusops.sim.owner-watch")

    def discard(self, watched: _Watched) -> None:
        self._open.discard(watched)

    async def _poll(self) -> None:
        try:
            while self._open:
                await trio.sleep(OWNER_POLL_SECONDS)
                try:
                    self._look()
                except Exception as exc:  # the sessions fail with it; the simulator goes on
                    for watched in self._open:
                        watched.error = exc
                        watched.scope.cancel()
                    self._open.clear()
        finally:
            self._running = False

    def _look(self) -> None:
        host = self._host
        # The host's own death first: a failover moves the VM in the same change.
        if host.check_down():
            gone = list(self._open)
        else:
            snapshot = host.store.snapshot()
            gone = [
                w for w in self._open
                if (now := snapshot[w.key]).host != host.identity or now.moves != w.moves
            ]  # fmt: skip
        for watched in gone:
            watched.scope.cancel()
            self._open.discard(watched)


@dataclass(slots=True)
class SessionCount:
    """PowerShell Direct sessions open now on the simulated host, and the most open at once."""

    open: int = 0
    peak: int = 0


class HyperVHost:
    """Runs host-level commands against the lab and its persistent state."""

    def __init__(
        self,
        lab: Lab,
        store: HostStore,
        *,
        clock: Callable[[], float] = time.time,
        sessions: SessionCount | None = None,
        identity: str | None = None,
        on_down: Callable[[], None] | None = None,
    ) -> None:
        self.lab = lab
        self.store = store
        self.clock = clock
        self.sessions = sessions if sessions is not None else SessionCount()
        #: The fleet host this process serves (the lab's spelling), or None: every VM of the lab.
        self.identity = identity
        #: What a dead node does when it sees it is down: a process exits (``__main__``); without
        #: one (in-process) its commands and sessions fail instead.
        self.on_down = on_down
        #: The fleet host's open sessions, watched for their VMs leaving (unused without identity).
        self.owner_watch = OwnerWatch(self)

    @property
    def computer_name(self) -> str:
        return self.identity or self.lab.host.name

    def owned_vms(self) -> list[VMSpec] | None:
        if self.identity is None:
            return None
        snapshot = self.store.snapshot()
        return [spec for spec in self.lab.vms if snapshot[spec.name.casefold()].host == self.identity]

    def owns(self, spec: VMSpec) -> bool:
        return self.identity is None or self.store.runtime(spec).host == self.identity

    def find_vm_by_id(self, vm_id: str) -> VMSpec | None:
        spec = self.lab.find_by_id(vm_id)
        return spec if spec is not None and self.owns(spec) else None

    def find_vm(self, name: str) -> VMSpec | None:
        spec = self.lab.find(name)
        return spec if spec is not None and self.owns(spec) else None

    def is_down(self) -> bool:
        """Whether this fleet host is down (``vmbusops lab fail-host``); never without an identity."""
        return self.identity is not None and self.identity in self.store.down_hosts()

    def check_down(self) -> bool:
        """:meth:`is_down`, and when it is, :attr:`on_down` first (which, in a process, exits)."""
        if not self.is_down():
            return False
        if self.on_down is not None:
            self.on_down()
        return True

    @property
    def command_names(self) -> list[str]:
        """Every command this host answers, folded; Get-Command lists the invoker as a JEA role
        defines it: a function, called by name."""
        return sorted([*HOST_CMDLETS, *HOST_ALIASES, invoker.INVOKER_FUNCTION.casefold()])

    async def run(self, commands: list[CommandSpec], streams: HostStreams) -> None:
        """Run a pipeline's commands (statements in order); TerminatingError ends it Failed."""
        if self.check_down():
            raise TerminatingError(pserrors.host_down(self.computer_name))
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
            name = HOST_ALIASES.get(name.casefold(), name)
            if name.casefold() == invoker.INVOKER_FUNCTION.casefold():
                await self._chaos(name, streams)
                await self.invoke_vmbusops_guest(command.parameters, streams, as_function=True)
                await streams.checkpoint()
                continue
            cmdlet = HOST_CMDLETS.get(name.casefold())
            if cmdlet is None:
                raise TerminatingError(pserrors.command_not_found(name))
            await self._chaos(name, streams)
            fq = (
                f"{HYPERV}.{name.replace('-', '')}"
                if name.casefold() != "invoke-command"
                else (pserrors.INVOKE_COMMAND_FQ)
            )
            try:
                bound = bind(cmdlet.params, fq, [(n, plain(v)) for n, v in command.parameters], to_text)
                await cmdlet.run(self, bound, streams, fq)
            except BindingError as exc:
                raise TerminatingError(pserrors.with_activity(exc.error, name)) from None
            await streams.checkpoint()

    async def _chaos(self, name: str, streams: HostStreams) -> None:
        host = self.lab.host
        if host.garbage_on is not None and host.garbage_on.casefold() == name.casefold():
            streams.inject_garbage()
        if host.malformed_on is not None and host.malformed_on.casefold() == name.casefold():
            streams.inject_malformed()
        if host.crash_on is not None and host.crash_on.casefold() == name.casefold():
            await streams.crash()

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
            spec = self.find_vm_by_id(call.vm_id)
            missing = None if spec is not None else pserrors.invoke_vm_id_not_found(call.vm_id)
        else:
            assert call.vm_name is not None
            spec = self.find_vm(call.vm_name)
            missing = None if spec is not None else pserrors.invoke_vm_name_not_found(call.vm_name)
        if spec is None:
            assert missing is not None
            streams.error(missing)
            return

        async def wrapper(session: GuestSession, emit: Emit) -> None:
            await invoker.run_guest_wrapper(session, call, emit)

        await self._invoke_in_guest(spec, _credential(call.credential), wrapper, streams)

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
        count = self.sessions
        count.open += 1
        count.peak = max(count.peak, count.open)
        try:
            if self.identity is None:
                await self._in_session(spec, rt, credential, body, streams)
            else:
                await self._watched(spec, rt, credential, body, streams)
        finally:
            count.open -= 1

    async def _watched(
        self,
        spec: VMSpec,
        rt: VMRuntime,
        credential: tuple[str, str] | None,
        body: Callable[[GuestSession, Emit], Awaitable[None]],
        streams: HostStreams,
    ) -> None:
        """:meth:`_in_session`, broken as a real session breaks when the VM leaves this host."""
        watched = _Watched(spec.name.casefold(), rt.moves, trio.CancelScope())
        self.owner_watch.add(watched)
        try:
            with watched.scope:
                await self._in_session(spec, rt, credential, body, streams)
        finally:
            self.owner_watch.discard(watched)
        if watched.error is not None:
            raise watched.error
        if watched.scope.cancelled_caught:
            streams.error(pserrors.socket_process_ended(spec.name))

    async def _in_session(
        self,
        spec: VMSpec,
        rt: VMRuntime,
        credential: tuple[str, str] | None,
        body: Callable[[GuestSession, Emit], Awaitable[None]],
        streams: HostStreams,
    ) -> None:
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
