"""dsc: push the step's modules and MOFs, apply them with the guest's LCM (:mod:`vmbusops.guestops.dsc`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from vmbusops.bundle.manifest import DscStep, Manifest
from vmbusops.engine.context import RunContext
from vmbusops.engine.executors.base import HostStepExecutor
from vmbusops.guestops.dsc import DscReport, apply_dsc, dsc_files, staging_folder


class DscExecutor(HostStepExecutor[DscStep]):
    #: A configuration converges: applying it again after an interruption is always safe.
    always_resumable = True

    def copies(self, manifest: Manifest, step: DscStep) -> Iterable[str]:
        for module in step.modules:
            yield from (entry.path for entry in manifest.module_files(module.rstrip("/")))
        yield from step.mofs
        if step.meta_config is not None:
            yield step.meta_config

    async def carry_out(self, ctx: RunContext, index: int, step: DscStep) -> None:
        staging = staging_folder(ctx.machine.job_id, step.name)
        files = [
            replace(f, on_host=await ctx.staging.host_path(f.source))
            for f in dsc_files(ctx.source.manifest, step, ctx.source.local_path, staging)
        ]
        report = DscReport()
        try:
            await apply_dsc(
                ctx.host,
                ctx.vm,
                step,
                files,
                ctx.channel(index),
                staging=staging,
                may_enable_guest_services=ctx.source.enable_guest_services,
                report=report,
            )
        finally:
            ctx.machine.details[step.name] = report.summary()
