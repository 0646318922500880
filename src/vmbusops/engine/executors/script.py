"""script: consecutive script steps in one guest invocation, each judged by its exit.

:mod:`..plan` makes the batches; :class:`..batch.BatchTracker` reads the invoker's markers. A step
succeeds when it exits 0 having written no error record; 3010 and 1641 ask for a reboot, which the
step takes from the host (within ``max_reboots``) when it allows one and reports as pending when it
does not; any other exit, or an error record, fails it and ends the batch in the guest.
"""

from __future__ import annotations

import math

import trio

from vmbusops.bundle.manifest import Manifest, ScriptStep, Step
from vmbusops.engine.batch import BatchFailure, BatchTracker, Next
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import attempt_failed, timed_out
from vmbusops.engine.plan import REBOOT_EXIT_CODES
from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.guestops.dsc import restart_and_wait
from vmbusops.guestops.host import GuestInvocation
from vmbusops.records import ErrorRecord


class ScriptExecutor:
    always_resumable = False

    def files(self, manifest: Manifest, step: Step) -> tuple[str, ...]:
        return ()  # a script travels as text, in the invocation

    async def run(self, ctx: RunContext, indices: tuple[int, ...]) -> None:
        failure = await _invoke(ctx, indices)
        reboot_for, ctx.machine.reboot_for = ctx.machine.reboot_for, None
        if failure is None and reboot_for is not None:
            failure = await _reboot_for_script(ctx, *reboot_for)
        if failure is not None:
            await attempt_failed(ctx, failure.index, failure.error, failure.message, failure.failure_code)


def _step(ctx: RunContext, index: int) -> ScriptStep:
    step = ctx.steps[index]
    assert isinstance(step, ScriptStep)
    return step


def _deadline(ctx: RunContext, index: int) -> float:
    t = ctx.steps[index].timeout_seconds
    return trio.current_time() + t if t is not None else math.inf


async def _exited(ctx: RunContext, index: int, code: int, errors: int) -> tuple[str, FailureCode] | None:
    """What a script step's exit means, and its failure code: None if it succeeded (perhaps with
    a reboot pending)."""
    step = _step(ctx, index)
    details = ctx.machine.details
    ctx.emit(ctx.machine.step_exited(index, code))
    if code != 0 and code not in REBOOT_EXIT_CODES:
        # A terminating error also exits 1: the error records say the cause, as exec's verdict does.
        if errors:
            return f"the script wrote {errors} error record(s) and ended with exit code {code}", FailureCode.SCRIPT_FAILED
        return f"the script ended with exit code {code}", FailureCode.EXIT_CODE
    if code in REBOOT_EXIT_CODES:
        if step.allow_reboot:
            ctx.machine.reboot_for = (index, code)
        else:
            details[step.name] = {"exit_code": code, "reboots": 0, "reboot_pending": True}
            await ctx.channel(index).note(
                f"vmbusops: {ctx.vm} needs a reboot (step {step.name} exited with {code}); "
                "the step does not allow one"
            )
    if errors:
        return f"the script wrote {errors} error record(s)", FailureCode.SCRIPT_FAILED
    return None


async def _invoke(ctx: RunContext, indices: tuple[int, ...]) -> BatchFailure | None:
    """Run the steps in one guest invocation; mark each begun / succeeded; return the first failure.

    Returns None when every step in ``indices`` succeeded or some never began (the caller plans
    again from the first that did not begin).
    """
    tracker = BatchTracker(indices)
    single = len(indices) == 1
    first = _step(ctx, indices[0])
    arguments = first.arguments if single else ()
    parts = [(i, ctx.source.script_of(_step(ctx, i))) for i in indices]
    step_scope = trio.CancelScope()
    if single:
        await ctx.begin(indices[0])
        tracker.begin(indices[0])
        step_scope.deadline = _deadline(ctx, indices[0])
    error: VmbusOpsError | None = None
    state = None
    with step_scope:
        async with ctx.session:
            try:
                async with ctx.host.invoke_steps(ctx.vm, parts, ctx.credential, arguments=arguments) as inv:
                    await _follow(ctx, inv, tracker, step_scope)
                    error = inv.outcome.failure
                    state = inv.outcome.state
            except VmbusOpsError as exc:
                error = exc
    if step_scope.cancelled_caught and tracker.current is not None:
        raise timed_out(ctx, tracker.current)
    failure = tracker.finish(error, state)
    if failure is not None:
        await ctx.begin(failure.index)  # a step that failed before it began still had an attempt
        return failure
    if tracker.current is not None:
        await ctx.succeed(tracker.current)  # the pipeline completed without its end marker
    return None


async def _follow(ctx: RunContext, inv: GuestInvocation, tracker: BatchTracker, step_scope: trio.CancelScope) -> None:
    """Journal the invocation's records under their steps and act on its markers, in the order
    they came, until it ends or a step's end stops the batch.

    A packet's worth at a time: each run of records between two markers goes to the journal
    writer in one call, and the loop waits (and a step's deadline is seen) once per packet.
    """
    machine = ctx.machine
    while taken := await inv.take():
        for part in taken:
            if part.records:
                if ctx.queue_records(part.records, tracker.current, part.time):
                    await ctx.commit()
                for record in part.records:
                    if isinstance(record, ErrorRecord):
                        tracker.error_record(record.message)
            mark = part.marker
            if mark is None:
                continue
            if mark.kind == "begin":
                verdict = tracker.begin(mark.index)
                if verdict is Next.BEGIN:
                    await ctx.begin(mark.index)
                    step_scope.deadline = _deadline(ctx, mark.index)
            else:
                exited = None
                if mark.index in tracker.indices and mark.index not in tracker.failed:
                    exited = await _exited(ctx, mark.index, mark.exit_code or 0, mark.errors)
                verdict = tracker.end(mark.index, *(exited or (None, None)))
                if verdict is Next.ENDED:
                    if machine.reboot_for is None:
                        await ctx.succeed(mark.index)
                    # else it succeeds once the VM is back; it ends its batch
                    step_scope.deadline = math.inf
            if verdict is Next.STOP:
                return


async def _reboot_for_script(ctx: RunContext, index: int, code: int) -> BatchFailure | None:
    """Restart the VM a script step asked to reboot, within the step's budget; then it succeeded.

    The batch ended with that step (see :mod:`..plan`), so nothing else ran in the guest since.
    """
    step = _step(ctx, index)
    details = ctx.machine.details.setdefault(
        step.name, {"exit_code": code, "reboots": 0, "reboot_pending": True}
    )
    details["exit_code"] = code
    if details["reboots"] >= step.max_reboots:
        return BatchFailure(
            index,
            f"the script asked for a reboot (exit code {code}) after {details['reboots']} reboot(s) "
            f"(max_reboots = {step.max_reboots})",
        )
    details["reboots"] += 1
    why = f"step {step.name} exited with {code} (reboot {details['reboots']} of {step.max_reboots})"
    try:
        await restart_and_wait(ctx.host, ctx.vm, ctx.channel(index), why)
    except VmbusOpsError as exc:
        return BatchFailure(index, str(exc), exc)
    details["reboot_pending"] = False
    await ctx.succeed(index)
    return None
