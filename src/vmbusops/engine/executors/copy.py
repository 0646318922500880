"""copy: one bundle file into the guest with Copy-VMFile."""

from __future__ import annotations

from collections.abc import Iterable

from vmbusops.bundle.manifest import CopyStep, Manifest
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor


class CopyExecutor(HostStepExecutor[CopyStep]):
    def copies(self, manifest: Manifest, step: CopyStep) -> Iterable[str]:
        return (step.source,)

    async def carry_out(self, ctx: RunContext, index: int, step: CopyStep) -> None:
        await ctx.host.copy_to_guest(
            ctx.vm,
            await ctx.staging.host_path(ctx.source.local_path(step.source)),
            step.destination,
            create_full_path=step.create_full_path,
            force=step.overwrite,
        )
