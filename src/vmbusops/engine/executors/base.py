"""What every executor is, and the part of carrying out a step all host-side kinds share."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

import trio

from vmbusops.bundle.manifest import Manifest, Step
from vmbusops.engine.context import RunContext
from vmbusops.engine.states import Event
from vmbusops.errors import FailureCode, VmbusOpsError


class StepFailed(Exception):
    """A step ended its run: failed (``event`` FAIL) or timed out (EXECUTION_TIMEOUT), with the
    step's failure ``code`` (:class:`~vmbusops.errors.FailureCode`)."""

    def __init__(self, event: Event, message: str, code: str) -> None:
        super().__init__(message)
        self.event = event
        self.message = message
        self.code = code


class Executor(Protocol):
    """Carries out one kind of step."""

    #: Runs again after an interruption under the ``resume`` policy even when the bundle does not
    #: call it idempotent (it converges by nature).
    always_resumable: bool

    def files(self, manifest: Manifest, step: Step) -> Iterable[str]:
        """The bundle paths the step copies into the guest (staged on a remote host first)."""
        ...

    async def run(self, ctx: RunContext, indices: tuple[int, ...]) -> None:
        """Carry out the steps ``indices`` (one, or a guest batch: see :mod:`..plan`).

        Returns when each has succeeded, or has failed and waits to be tried again (it is
        ``delayed``; the run plans again from the first step not done); raises
        :class:`StepFailed` when one ended the run."""
        ...


async def attempt_failed(
    ctx: RunContext, index: int, error: VmbusOpsError | None, message: str, code: str | None = None
) -> None:
    """A step's attempt failed: wait out the backoff if the error is transient and the step has
    attempts left (the caller then tries again), else raise :class:`StepFailed`. ``code`` is the
    failure's code (default: the error's, else ScriptFailed)."""
    step = ctx.steps[index]
    machine = ctx.machine
    code = code or (error.code if error is not None else FailureCode.SCRIPT_FAILED)
    if error is not None and error.transient and machine.attempts[index] < step.retry.attempts:
        ctx.emit(machine.retry_step(index, message, code))
        await ctx.commit()
        await trio.sleep(step.retry.delay_before_retry(machine.attempts[index]))
        return
    ctx.emit(machine.fail_step(index, message, code))
    raise StepFailed(Event.FAIL, f"step {step.name}: {message}", code)


def timed_out(ctx: RunContext, index: int) -> StepFailed:
    message, outputs = ctx.machine.time_out_step(index, ctx.steps[index].timeout_seconds)
    ctx.emit(outputs)
    return StepFailed(Event.EXECUTION_TIMEOUT, message, FailureCode.TIMEOUT)


StepT = TypeVar("StepT", bound=Step)


class HostStepExecutor(ABC, Generic[StepT]):
    """A step the host carries out on its own (one at a time): attempt, timeout, retry.

    A kind subclasses it for its step class and writes :meth:`carry_out` (and :meth:`copies` when
    the step copies bundle files into the guest); a :class:`~vmbusops.errors.VmbusOpsError` it
    raises fails the attempt with its message (retried when transient)."""

    always_resumable = False

    def __init__(self, step_type: type[StepT]) -> None:
        self.step_type = step_type

    def files(self, manifest: Manifest, step: Step) -> Iterable[str]:
        return self.copies(manifest, self._of(step))

    def copies(self, manifest: Manifest, step: StepT) -> Iterable[str]:
        return ()

    def _of(self, step: Step) -> StepT:
        if not isinstance(step, self.step_type):
            raise TypeError(
                f"{type(self).__name__} carries out {self.step_type.__name__}, not {type(step).__name__}"
            )
        return step

    async def run(self, ctx: RunContext, indices: tuple[int, ...]) -> None:
        (index,) = indices
        step = ctx.steps[index]
        await ctx.begin(index)
        timeout = step.timeout_seconds if step.timeout_seconds is not None else math.inf
        try:
            with trio.move_on_after(timeout) as scope:
                await self.carry_out(ctx, index, self._of(step))
        except VmbusOpsError as exc:
            await attempt_failed(ctx, index, exc, str(exc))
            return
        if scope.cancelled_caught:
            raise timed_out(ctx, index)
        await ctx.succeed(index)

    @abstractmethod
    async def carry_out(self, ctx: RunContext, index: int, step: StepT) -> None:
        """Do the step's work on the host (and in the guest, through ``ctx.channel(index)``)."""


__all__ = ["Executor", "HostStepExecutor", "StepFailed", "attempt_failed", "timed_out"]
