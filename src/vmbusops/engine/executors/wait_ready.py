"""wait-ready: until the heartbeat is OK and PowerShell Direct answers."""

from __future__ import annotations

from vmbusops.bundle.manifest import WaitReadyStep
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor


class WaitReadyExecutor(HostStepExecutor[WaitReadyStep]):
    always_resumable = True  # waiting changes nothing

    async def carry_out(self, ctx: RunContext, index: int, step: WaitReadyStep) -> None:
        await ctx.wait_ready()
