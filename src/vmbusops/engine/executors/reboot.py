"""reboot: restart the VM from the host, then wait until its guest answers again."""

from __future__ import annotations

from vmbusops.bundle.manifest import RebootStep
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor


class RebootExecutor(HostStepExecutor[RebootStep]):
    async def carry_out(self, ctx: RunContext, index: int, step: RebootStep) -> None:
        await ctx.host.restart_vm(ctx.vm)
        await ctx.wait_ready()
