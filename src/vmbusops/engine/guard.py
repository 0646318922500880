"""Checkpoint guards: a guarded span of steps runs under a checkpoint of the VM.

Theory of operation
-------------------
A bundle's guarded steps (:mod:`vmbusops.bundle.guard`) form *spans*; the engine hands each span
to :meth:`RunGuards.run_span`, which wraps the span's executors:

1. room: the VM's checkpoint type and the free space of every volume holding its disks and
   checkpoints (:meth:`~vmbusops.guestops.host.HyperVHost.checkpoint_room`); checkpoints disabled,
   too little room, or a VM that takes standard checkpoints only where the policy requires
   production refuse the span (``CheckpointRefused``) before anything is taken;
2. the checkpoint's name (``vmbusops-job<J>-run<R>-<first step>``: an operator sees which job made
   it) is journaled (``planned``) and committed *before* Checkpoint-VM is sent; ``taken`` after;
   a standard checkpoint where the policy requires production is removed and the span refused;
3. the span's steps run; then the health check (a script that must succeed, or
   Test-DscConfiguration that must report no drift);
4. success: ``removing`` (outcome ``kept``), Remove-VMSnapshot, ``removed``;
   failure (a step failed or timed out, the health check failed, the run was cancelled or timed
   out): ``restoring`` with why, Restore-VMSnapshot, ``restored``, Start-VM, wait until the guest
   is ready, the health check again (its result is said, not acted on: the VM is as it was before
   the change), ``removing`` (outcome ``rolled-back``), Remove-VMSnapshot, ``removed``; the run ends
   ``rolled-back`` with why. A restore that fails keeps the checkpoint (outcome ``failed``) and
   fails the run with ``CheckpointFailed``: nothing is removed that the operator may still need.

Every phase is committed to the journal (the ``checkpoints`` table, one row per run and span)
before the host action it announces and after it returns, so after a SIGKILL :meth:`settle`
(called when a resumed run starts again) finishes what the row says was under way:

=============  ==========================================================================
found          what resume does
=============  ==========================================================================
planned        no step of the span began: remove the checkpoint if it exists; the span
               runs again from the start when the run reaches it, under a new checkpoint
taken          the span's steps may be half done: roll back (restore, start, wait, check,
               remove) and end the run rolled-back; the span is never re-run on top of it
restoring      restore (again: the VM has not been started since, so a second restore of
               the same checkpoint leaves the same disk), then as after ``restored``
restored       start the VM unless it runs, wait, check, remove; end rolled-back
removing       remove it unless it is gone; go on (``kept``) or end rolled-back
removed        nothing left on the host; a ``rolled-back`` row ends the run so
=============  ==========================================================================

A crash mid-span ends the run rolled-back rather than re-running the span: the change failed to
finish once, and applying it again unattended, at another time than the one planned, is a
decision for the operator (``vmbusops submit`` again). That holds whatever the bundle's resume
policy says: with a checkpoint open, ``abandon`` would leave a half-applied change behind.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import trio

from vmbusops.bundle.guard import CheckpointPolicy, Guard, Span
from vmbusops.engine.changes import CheckpointChange
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import StepFailed
from vmbusops.engine.journal_rows import CheckpointView
from vmbusops.engine.machine import Output
from vmbusops.engine.states import Event
from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.guestops.checkpoints import CheckpointError
from vmbusops.records import PSObjectValue

GIB = 1024**3
#: What a bundle says to accept a standard checkpoint where a production one cannot be had.
_ACCEPT_STANDARD = '[guard] checkpoint = "production-or-standard"'


class Phase(enum.StrEnum):
    PLANNED = "planned"
    TAKEN = "taken"
    RESTORING = "restoring"
    RESTORED = "restored"
    REMOVING = "removing"
    REMOVED = "removed"


class Outcome(enum.StrEnum):
    KEPT = "kept"
    ROLLED_BACK = "rolled-back"
    #: A restore (or a removal) failed: the checkpoint is kept for the operator.
    FAILED = "failed"
    #: Refused before the span ran (policy, room); no checkpoint is left.
    REFUSED = "refused"


class RolledBack(Exception):
    """The run's guarded span was rolled back: end the run ``rolled-back`` with ``message``."""

    def __init__(self, message: str, event: Event = Event.FAIL) -> None:
        super().__init__(message)
        self.message = message
        self.event = event


def checkpoint_name(job_id: int, run_id: int, step: str) -> str:
    """Only ``[A-Za-z0-9._-]``: Get-/Restore-/Remove-VMSnapshot take ``-Name`` as a wildcard."""
    return f"vmbusops-job{job_id}-run{run_id}-{step}"


def is_open(row: CheckpointView) -> bool:
    """A row that resume must finish: a checkpoint may exist, or its run must end rolled-back."""
    return row.phase != Phase.REMOVED or row.outcome == Outcome.ROLLED_BACK


_STOPPED_MID_SPAN = "the agent stopped while the guarded steps ran"


def rollback_reason(row: CheckpointView) -> str | None:
    """Why settling ``row`` after a crash rolls its run back, or None when it does not (nothing
    was taken yet, or the change was being kept): the rule :meth:`RunGuards.settle` acts on."""
    if not is_open(row) or row.phase == Phase.PLANNED or (row.phase == Phase.REMOVING and row.outcome == Outcome.KEPT):
        return None
    if row.phase == Phase.TAKEN:
        return _STOPPED_MID_SPAN
    return row.reason or _STOPPED_MID_SPAN


def rolls_back(rows: Sequence[CheckpointView]) -> str | None:
    """Why a resumed run's guard will roll back (the agent stopped mid-span, or mid-rollback),
    with the checkpoint it restores, or None (module doc's table)."""
    for row in rows:
        reason = rollback_reason(row)
        if reason is not None:
            return f"{reason}; rolled back to checkpoint {row.name}"
    return None


@dataclass(eq=False)
class RunGuards:
    """The guarded spans of one run, with the journal's rows of them (see the module doc)."""

    ctx: RunContext
    guard: Guard
    spans: Sequence[Span]
    rows: dict[int, CheckpointView] = field(default_factory=dict)
    #: Ends the run with the machine's outputs (the engine's bookkeeping of ended runs).
    end: Callable[[list[Output]], None] = lambda outputs: None
    #: Why the run is being cancelled (an operator's cancel, or the run's execution timeout).
    why_cancelled: Callable[[], tuple[str, Event]] = lambda: ("cancelled", Event.CANCEL)

    def span_of(self, index: int) -> Span | None:
        return next((s for s in self.spans if index in s), None)

    def limit(self, index: int) -> int:
        """One past the last step a unit starting at ``index`` may include (spans are not crossed)."""
        span = self.span_of(index)
        if span is not None:
            return span.last + 1
        return next((s.first for s in self.spans if s.first > index), len(self.ctx.steps))

    # ------------------------------------------------------------------ journal
    async def _phase(self, span: Span, name: str, phase: Phase, **values: object) -> None:
        now = time.time()
        stamp = {
            Phase.PLANNED: "planned_at", Phase.TAKEN: "taken_at", Phase.RESTORED: "restored_at",
            Phase.REMOVED: "removed_at",
        }.get(phase)  # fmt: skip
        if stamp is not None:
            values.setdefault(stamp, now)
        change = CheckpointChange(run_id=self.ctx.machine.id, span=span.first, name=name, phase=phase.value, **values)  # type: ignore[arg-type]
        self.ctx.emit([change])
        await self.ctx.commit()

    async def _note(self, index: int, text: str) -> None:
        await self.ctx.channel(index).note(f"vmbusops: {text}")

    # ------------------------------------------------------------------ after a crash
    async def settle(self) -> None:
        """Finish what the journal says a crashed owner left under way (module doc's table);
        raises :class:`RolledBack` when the run must end so. Not cancellable: it finishes."""
        with trio.CancelScope(shield=True):
            await self._settle()

    async def _settle(self) -> None:
        for span in self.spans:
            row = self.rows.get(span.first)
            if row is None or not is_open(row):
                continue
            phase = Phase(row.phase)
            if phase is Phase.PLANNED:
                await self.ctx.host.remove_checkpoint(self.ctx.vm, row.name, missing_ok=True)
                await self._phase(span, row.name, Phase.REMOVED, outcome=Outcome.REFUSED.value,
                                  reason="the agent stopped before the guarded steps began")  # fmt: skip
                continue
            if phase is Phase.REMOVING and row.outcome == Outcome.KEPT:
                await self._remove(span, row.name, Outcome.KEPT)
                continue
            reason = rollback_reason(row)
            assert reason is not None  # open, and neither planned nor being kept
            if phase is Phase.TAKEN or phase is Phase.RESTORING:
                await self._restore(span, row.name, reason)
            elif phase is Phase.RESTORED:
                await self._after_restore(span, row.name)
            elif phase is Phase.REMOVING:
                await self._remove(span, row.name, Outcome.ROLLED_BACK)
            raise RolledBack(f"rolled back to checkpoint {row.name}: {reason}")

    # ------------------------------------------------------------------ a span
    async def run_span(self, span: Span, run_steps: Callable[[], Awaitable[None]]) -> None:
        """Take the span's checkpoint, run its steps and the health check; keep or roll back."""
        ctx = self.ctx
        name = checkpoint_name(ctx.machine.job_id, ctx.machine.id, ctx.steps[span.first].name)
        await self._check_room(span, name)
        await self._phase(span, name, Phase.PLANNED, outcome=None)
        try:
            info = await ctx.host.checkpoint_vm(ctx.vm, name)
        except CheckpointError as exc:  # refused by Hyper-V (disabled, no space, no production): none taken
            await self._refuse(span, name, f"Checkpoint-VM failed: {exc}", remove=True)
        except BaseException:
            with trio.CancelScope(shield=True):
                await ctx.host.remove_checkpoint(ctx.vm, name, missing_ok=True)
                await self._phase(span, name, Phase.REMOVED, outcome=Outcome.REFUSED.value, reason="cancelled while taking it")
            raise
        if self.guard.checkpoint is CheckpointPolicy.PRODUCTION and not info.production:
            with trio.CancelScope(shield=True):
                await self._refuse(
                    span, name, "Hyper-V took a standard checkpoint (the guest could not make a production one)"
                    " and the bundle's policy requires production; make the guest's Backup (volume shadow copy)"
                    f" integration service work, or sign the bundle with {_ACCEPT_STANDARD}", remove=True,
                    production=False)  # fmt: skip
        failure: tuple[str, Event] | None = None
        try:
            await self._phase(span, name, Phase.TAKEN, production=info.production)
            kind = "production" if info.production else "standard"
            await self._note(span.first, f"{kind} checkpoint {name} taken of {ctx.vm}")
            await run_steps()
            problem = await self.health(span.last)
            if problem is not None:
                failure = (f"the health check failed: {problem}", Event.FAIL)
        except StepFailed as exc:
            failure = (exc.message, exc.event)
        except trio.Cancelled:
            why, event = self.why_cancelled()
            with trio.CancelScope(shield=True):
                await self._restore(span, name, why)
                self.end(ctx.machine.roll_back(f"rolled back to checkpoint {name}: {why}", event, event_code(event)))
            raise
        except VmbusOpsError as exc:
            if exc.code is FailureCode.JOURNAL_ERROR:
                raise  # nothing can be journaled: the row says where it stood, for resume
            # The host connection, a session: the change may be half done; try to put it back
            # (a restore that fails too keeps the checkpoint and says so).
            failure = (str(exc), Event.FAIL)
        # Once begun, keeping or rolling back finishes: a cancel now would leave the checkpoint.
        with trio.CancelScope(shield=True):
            if failure is None:
                await self._remove(span, name, Outcome.KEPT)
            else:
                await self._restore(span, name, failure[0])
        if failure is not None:
            raise RolledBack(f"rolled back to checkpoint {name}: {failure[0]}", failure[1])

    async def _check_room(self, span: Span, name: str) -> None:
        room = await self.ctx.host.checkpoint_room(self.ctx.vm)
        needed = int(self.guard.min_free_gb * GIB)
        why: str | None = None
        if room.checkpoint_type == "Disabled":
            why = (f"checkpoints are disabled on {self.ctx.vm}; its owner enables them"
                   " (Set-VM -CheckpointType Production), or the change runs without a guard")  # fmt: skip
        elif room.checkpoint_type == "Standard" and self.guard.checkpoint is CheckpointPolicy.PRODUCTION:
            why = (f"{self.ctx.vm} takes standard checkpoints only and the bundle's policy requires production;"
                   f" sign the bundle with {_ACCEPT_STANDARD} to accept one")  # fmt: skip
        elif not room.enough(needed):
            why = (f"not enough room for a checkpoint of {self.ctx.vm}: {room.free_bytes / GIB:.1f} GiB free,"
                   f" the bundle asks for {self.guard.min_free_gb:g} GiB; free space on the VM's volumes,"
                   " or lower the bundle's [guard] min_free_gb")  # fmt: skip
        if why is not None:
            raise StepFailed(Event.FAIL, f"the guarded steps did not start: {why}", FailureCode.CHECKPOINT_REFUSED)

    async def _refuse(self, span: Span, name: str, why: str, *, remove: bool, production: bool | None = None) -> None:
        """``production``: the type of a checkpoint that was taken and is refused (None: none was)."""
        if remove:
            await self.ctx.host.remove_checkpoint(self.ctx.vm, name, missing_ok=True)
        await self._phase(span, name, Phase.REMOVED, outcome=Outcome.REFUSED.value, reason=why, production=production)
        raise StepFailed(Event.FAIL, f"the guarded steps did not start: {why}", FailureCode.CHECKPOINT_REFUSED)

    async def _remove(self, span: Span, name: str, outcome: Outcome) -> None:
        await self._phase(span, name, Phase.REMOVING, outcome=outcome.value)
        try:
            await self.ctx.host.remove_checkpoint(self.ctx.vm, name, missing_ok=True)
        except VmbusOpsError as exc:
            raise _KeptError(f"checkpoint {name} could not be removed ({exc}); remove it by hand") from exc
        await self._phase(span, name, Phase.REMOVED)
        await self._note(span.last, f"checkpoint {name} removed")

    async def _restore(self, span: Span, name: str, why: str) -> None:
        ctx = self.ctx
        await self._phase(span, name, Phase.RESTORING, reason=why)
        try:
            await ctx.host.restore_checkpoint(ctx.vm, name)
        except VmbusOpsError as exc:
            await self._phase(span, name, Phase.RESTORING, outcome=Outcome.FAILED.value)
            raise _KeptError(
                f"{why}; restoring checkpoint {name} failed ({exc}): the checkpoint is kept and the VM left as it is"
            ) from exc
        await self._phase(span, name, Phase.RESTORED)
        await self._after_restore(span, name)

    async def _after_restore(self, span: Span, name: str) -> None:
        ctx = self.ctx
        info = await ctx.host.get_vm(ctx.vm)
        if not info.running:
            await ctx.host.start_vm(ctx.vm)
        await ctx.wait_ready()
        problem = await self.health(span.last)
        said = "healthy" if problem is None else f"still not healthy ({problem}): it was so before the change"
        await self._note(span.last, f"{ctx.vm} restored to checkpoint {name}, started and {said}")
        await self._remove(span, name, Outcome.ROLLED_BACK)

    # ------------------------------------------------------------------ health
    async def health(self, index: int) -> str | None:
        """None when the guest is healthy, else why not (a line; guest text, shown escaped)."""
        check = self.guard.health
        channel = self.ctx.channel(index)
        with trio.move_on_after(check.timeout_seconds) as scope:
            if check.inline is not None:
                run = await channel.run(check.inline)
                return None if run.outcome.ok else run.outcome.why_failed()
            run = await channel.run("Test-DscConfiguration -Detailed", quiet=True)
            if not run.outcome.ok:  # no current configuration, the LCM busy: no health confirmed
                return f"Test-DscConfiguration: {run.outcome.why_failed()}"
            detail = next((v for v in run.outputs if isinstance(v, PSObjectValue)), None)
            if detail is None or detail.get("InDesiredState") is not True:
                return "Test-DscConfiguration reports drift"
            return None
        if scope.cancelled_caught:
            return f"the health check did not finish within {check.timeout_seconds:g}s"
        return None  # pragma: no cover


def event_code(event: Event) -> str:
    return {Event.CANCEL: FailureCode.CANCELLED, Event.EXECUTION_TIMEOUT: FailureCode.TIMEOUT}.get(
        event, FailureCode.ROLLED_BACK
    )


class _KeptError(VmbusOpsError):
    """A checkpoint could not be restored or removed: it is kept for the operator."""

    code = FailureCode.CHECKPOINT_FAILED


__all__ = ["GIB", "Outcome", "Phase", "RolledBack", "RunGuards", "checkpoint_name", "event_code", "is_open"]
