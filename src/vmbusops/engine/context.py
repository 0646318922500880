"""A run's way to the world: the host, its guest, the journal and the watchers.

:class:`RunContext` is what an executor (:mod:`.executors`) is given. It carries out what the
run's :class:`~.machine.RunMachine` decides (journal changes queued behind the records before
them, events to the watchers) and gives the steps their host, guest credential, bundle files and
the engine's limit on PowerShell Direct sessions. :class:`StepChannel` is one step's view of it, in
the shape guest-side operations (:mod:`vmbusops.guestops.dsc`, :mod:`vmbusops.guestops.patch`)
take: every record they see is journaled under the step, live (a quiet run's output and state
excepted: the agent's own checks; the run numbers only what it journals, so its numbers have no gap).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from vmbusops.bundle.manifest import Step
from vmbusops.credentials import GuestCredential
from vmbusops.engine.changes import Change
from vmbusops.engine.events import EngineEvent, RunChanged
from vmbusops.engine.machine import Output, RunMachine
from vmbusops.engine.source import JobSource
from vmbusops.engine.staged import JobStaging
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import VmbusOpsError
from vmbusops.guestops.dsc import GuestRun
from vmbusops.guestops.host import HyperVHost, InvokeOutcome
from vmbusops.records import InformationRecord, OutputRecord, PipelineStateRecord, Record

#: What a quiet run (the agent's own checks) does not journal: its objects and its end.
_QUIET = (OutputRecord, PipelineStateRecord)


def emit(
    writer: JournalWriter, on_event: Callable[[EngineEvent], None] | None, outputs: Sequence[Output]
) -> None:
    """Carry out a machine's outputs: journal changes to the writer, events to the watchers."""
    changes: list[Change] = []
    events: list[RunChanged] = []
    for out in outputs:
        if isinstance(out, RunChanged):
            events.append(out)
            if on_event is not None:
                on_event(out)
        else:
            changes.append(out)
    if changes or events:
        writer.change(changes, events)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitReady:
    """How long a run waits for its guest to be back (heartbeat OK, PowerShell Direct answers)."""

    timeout: float
    poll: float


class SessionSlot:
    """One of the engine's PowerShell Direct sessions (``[host] max_sessions``, across its jobs),
    held by the task that enters it, as ``async with limiter`` would hold it. When none is free,
    the run says it waits for one (:meth:`~.machine.RunMachine.wait_for_session`: journaled, and
    shown by ``jobs show`` and the API) until it has one, or is cancelled waiting. Entered again
    for each guest session the run opens."""

    __slots__ = ("ctx",)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    async def __aenter__(self) -> None:
        limiter = self.ctx.sessions
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            self.ctx.emit(self.ctx.machine.wait_for_session(True))
            try:
                await limiter.acquire()
            finally:
                self.ctx.emit(self.ctx.machine.wait_for_session(False))
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def __aexit__(self, *exc: object) -> None:
        self.ctx.sessions.release()


@dataclass(eq=False, kw_only=True)
class RunContext:
    machine: RunMachine
    host: HyperVHost
    source: JobSource
    credential: GuestCredential
    staging: JobStaging
    writer: JournalWriter
    #: PowerShell Direct sessions this engine opens at once, across all its jobs (one per process).
    sessions: trio.CapacityLimiter
    wait: WaitReady
    on_event: Callable[[EngineEvent], None] | None

    @property
    def vm(self) -> str:
        return self.machine.vm

    @property
    def session(self) -> SessionSlot:
        """A slot of :attr:`sessions` for one guest session (:class:`SessionSlot`)."""
        return SessionSlot(self)

    @property
    def steps(self) -> Sequence[Step]:
        return self.source.manifest.steps

    # ------------------------------------------------------------------ the machine's outputs
    def emit(self, outputs: Sequence[Output]) -> None:
        """Queue the journal changes (behind the records before them); tell the watchers."""
        emit(self.writer, self.on_event, outputs)

    async def commit(self) -> None:
        await self.writer.commit()

    async def begin(self, index: int) -> None:
        """Step ``index`` starts an attempt; durable before the step does anything."""
        outputs = self.machine.begin_step(index)
        if outputs:
            self.emit(outputs)
            await self.commit()

    async def succeed(self, index: int) -> None:
        """The commit point: the step's records and its success are durable before anything else."""
        self.emit(self.machine.succeed_step(index))
        await self.commit()

    async def record(self, record: Record, index: int | None, at: float) -> None:
        if self.queue_records((record,), index, at):
            await self.commit()

    def queue_records(self, records: Sequence[Record], index: int | None, at: float) -> bool:
        """:meth:`record` for consecutive records of step ``index``, without waiting, for a loop
        over a guest's records (a run of a packet's at a time): True when the writer's buffer is
        full, and the caller must await :meth:`commit` before the next."""
        on_event = self.on_event
        rows, arrived = self.machine.records(records, at, index, watched=on_event is not None)
        full = self.writer.queue(rows)
        if on_event is not None:
            for event in arrived:
                on_event(event)
        return full

    def channel(self, index: int) -> StepChannel:
        return StepChannel(self, index)

    # ------------------------------------------------------------------ the guest
    async def wait_ready(self) -> None:
        await self.host.wait_guest_ready(
            self.vm,
            self.credential,
            timeout=self.wait.timeout,
            poll_interval=self.wait.poll,
            sessions=self.session,
        )


class StepChannel:
    """A step's way into its guest (a :class:`vmbusops.guestops.dsc.GuestChannel`)."""

    def __init__(self, ctx: RunContext, index: int) -> None:
        self.ctx = ctx
        self.index = index

    async def run(
        self,
        script: str,
        *,
        arguments: Sequence[Any] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
        quiet: bool = False,
    ) -> GuestRun:
        ctx = self.ctx
        records: list[Record] = []
        outcome = InvokeOutcome()
        async with ctx.session:
            try:
                async with ctx.host.invoke_in_guest(ctx.vm, script, ctx.credential, arguments=arguments) as inv:
                    async for rec in inv:
                        records.append(rec.record)
                        if not quiet or not isinstance(rec.record, _QUIET):
                            await ctx.record(rec.record, self.index, rec.time)
                        if on_record is not None:
                            await on_record(rec.record)
                    outcome = inv.outcome
            except VmbusOpsError as exc:
                outcome.failure = outcome.failure or exc
        return GuestRun(outcome, records)

    async def wait_ready(self) -> None:
        await self.ctx.wait_ready()

    async def note(self, text: str) -> None:
        """Journal a line from the agent itself under the step."""
        record = InformationRecord(message_data=text, source="vmbusops", tags=("vmbusops.agent",))
        await self.ctx.record(record, self.index, time.time())

    def progress(self, text: str) -> None:
        """Where the step is, to the live view and (after the records before it are committed) to
        the agent's followers; not journaled."""
        emit(self.ctx.writer, self.ctx.on_event, [self.ctx.machine.progress(self.index, text)])


__all__ = ["RunContext", "SessionSlot", "StepChannel", "WaitReady", "emit"]
