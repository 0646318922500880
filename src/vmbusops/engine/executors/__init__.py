"""One executor per step kind, in one registry.

Adding a step kind takes three things:

1. its manifest dataclass (see :mod:`vmbusops.bundle.manifest`);
2. one file here with its executor: most kinds subclass :class:`.base.HostStepExecutor` for their
   step class and write ``carry_out`` (and ``copies`` if the step copies bundle files into the
   guest); the engine gives it
   a :class:`~vmbusops.engine.context.RunContext` (host, guest credential, bundle files, a channel
   into the guest whose records are journaled under the step);
3. one line in :data:`EXECUTORS`.

Attempts, timeouts, retries, cancellation, journaling and resumption come from the engine; script
steps alone are batched into one guest invocation (:mod:`..plan`).
"""

from __future__ import annotations

from collections.abc import Mapping

from vmbusops.bundle.manifest import (
    CopyStep,
    DscStep,
    Manifest,
    PatchStep,
    RebootStep,
    Step,
    StepKind,
    WaitReadyStep,
)
from vmbusops.engine.executors.base import Executor, StepFailed
from vmbusops.engine.executors.copy import CopyExecutor
from vmbusops.engine.executors.dsc import DscExecutor
from vmbusops.engine.executors.patch import PatchExecutor
from vmbusops.engine.executors.reboot import RebootExecutor
from vmbusops.engine.executors.script import ScriptExecutor
from vmbusops.engine.executors.wait_ready import WaitReadyExecutor

EXECUTORS: Mapping[StepKind, Executor] = {
    StepKind.COPY: CopyExecutor(CopyStep),
    StepKind.SCRIPT: ScriptExecutor(),
    StepKind.DSC: DscExecutor(DscStep),
    StepKind.PATCH: PatchExecutor(PatchStep),
    StepKind.REBOOT: RebootExecutor(RebootStep),
    StepKind.WAIT_READY: WaitReadyExecutor(WaitReadyStep),
}


def executor_of(step: Step) -> Executor:
    return EXECUTORS[step.kind]


def copied_files(manifest: Manifest) -> list[str]:
    """The bundle paths the manifest's steps copy into guests, each once, in step order."""
    paths: dict[str, None] = {}
    for step in manifest.steps:
        paths.update((path, None) for path in executor_of(step).files(manifest, step))
    return list(paths)


__all__ = ["EXECUTORS", "Executor", "StepFailed", "copied_files", "executor_of"]
