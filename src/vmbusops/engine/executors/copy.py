"""copy: one bundle file into the guest with Copy-VMFile."""

from __future__ import annotations

from collections.abc import Iterable

from vmbusops.bundle.manifest import CopyStep, Manifest, Step
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor


class CopyExecutor(HostStepExecutor):
    def files(self, manifest: Manifest, step: Step) -> Iterable[str]:
        assert isinstance(step, CopyStep)
        return (step.source,)

    async def carry_out(self, ctx: RunContext, index: int, step: Step) -> None:
        assert isinstance(step, CopyStep)
        await ctx.host.copy_to_guest(
            ctx.vm,
            await ctx.staging.host_path(ctx.source.local_path(step.source)),
            step.destination,
            create_full_path=step.create_full_path,
            force=step.overwrite,
        )
