"""patch: Windows Update in the guest (:mod:`vmbusops.guestops.patch`); what it did goes in the run's details."""

from __future__ import annotations

from vmbusops.bundle.manifest import PatchStep
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor
from vmbusops.errors import VmbusOpsError
from vmbusops.guestops.patch import apply_patch


class PatchExecutor(HostStepExecutor[PatchStep]):
    async def carry_out(self, ctx: RunContext, index: int, step: PatchStep) -> None:
        details = ctx.machine.details
        try:
            patched = await apply_patch(ctx.host, ctx.vm, step, ctx.channel(index))
        except VmbusOpsError:
            details[step.name] = {"failed": True}
            raise
        details[step.name] = patched.summary()
