"""The ``patch`` step in one guest: Windows Update through the shipped WUA scripts, with reboots.

The script (:mod:`vmbusops.guestops.patch_script`) runs through the caller's
:class:`~vmbusops.guestops.dsc.GuestChannel`, so its progress records (one per update) and result
objects are journaled live. The Windows Update Agent refuses to download or install for a remote
session such as PowerShell Direct, so in install mode the script hands that part to a scheduled
task running as SYSTEM in the guest and relays what the task writes; the step only sees the
script's records, its objects and its exit code. When installed updates ask for a restart and the
step allows it, the VM is restarted from the host, the guest is waited for, and the script runs
again (it installs whatever is still pending) until nothing asks for a reboot or ``max_reboots`` is
spent. ``check_only`` runs the script in check mode: it only searches (which a remote session may
do), lists what would be installed, and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vmbusops.bundle.manifest import PatchStep
from vmbusops.guestops.dsc import ConfigurationError, GuestChannel, GuestRun, restart_and_wait
from vmbusops.guestops.host import HyperVHost
from vmbusops.guestops.patch_script import INSTALL_SCRIPT, PATCH_SCRIPT
from vmbusops.records import PSObjectValue

#: How long the guest script waits for the install task when the step has no timeout of its own.
INSTALL_WAIT_SECONDS = 4 * 3600


@dataclass
class PatchReport:
    updates: list[dict[str, Any]] = field(default_factory=list)
    reboots: int = 0
    reboot_pending: bool = False
    failed: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "updates": [f"{u['KB']} {u['Result']}" for u in self.updates],
            "failed": self.failed,
            "reboots": self.reboots,
            "reboot_pending": self.reboot_pending,
        }


def _read(run: GuestRun, report: PatchReport) -> PSObjectValue | None:
    summary = None
    for value in run.outputs:
        if not isinstance(value, PSObjectValue):
            continue
        if value.get("vmbusopsPatchSummary") is True:
            summary = value
        elif value.get("KB") is not None:
            report.updates.append({k: value.get(k) for k in ("KB", "Title", "Result", "RebootRequired")})
    return summary


async def apply_patch(host: HyperVHost, vm: str, step: PatchStep, channel: GuestChannel) -> PatchReport:
    report = PatchReport()
    # A little less than the step's own timeout, so that the script, not a cancellation, says why.
    wait = max(1, int(step.timeout_seconds * 0.9)) if step.timeout_seconds else INSTALL_WAIT_SECONDS
    args = ["check" if step.check_only else "install", ",".join(step.categories), ",".join(step.kbs), wait, INSTALL_SCRIPT]
    while True:
        channel.progress("Windows Update: " + ("checking" if step.check_only else "installing"))
        run = await channel.run(PATCH_SCRIPT, arguments=args)
        if run.outcome.failure is not None:
            raise run.outcome.failure
        summary = _read(run, report)
        if run.outcome.error_messages or summary is None or not run.outcome.ok:
            why = run.outcome.error_messages[-1] if run.outcome.error_messages else "the script wrote no summary"
            if not run.outcome.ok:
                why += f" ({run.outcome.why_failed()})"
            raise ConfigurationError(f"{vm}: Windows Update failed: {why}", vm=vm)
        failed = summary.get("Failed")
        report.failed += failed if isinstance(failed, int) else 0
        if step.check_only or summary.get("RebootRequired") is not True:
            break
        if not step.allow_reboot:
            report.reboot_pending = True
            await channel.note(f"vmbusops: {vm} needs a reboot to finish installing updates; the step does not allow one")
            break
        if report.reboots >= step.max_reboots:
            report.reboot_pending = True
            raise ConfigurationError(
                f"{vm}: updates still ask for a reboot after {report.reboots} reboot(s) (max_reboots = {step.max_reboots})",
                vm=vm,
            )
        report.reboots += 1
        await restart_and_wait(host, vm, channel, f"installed updates need a restart (reboot {report.reboots} of {step.max_reboots})")
    if report.failed:
        raise ConfigurationError(f"{vm}: {report.failed} update(s) failed to install", vm=vm)
    channel.progress(f"Windows Update: {len(report.updates)} update(s) " + ("would be installed" if step.check_only else "handled"))
    return report
