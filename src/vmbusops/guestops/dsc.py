"""The ``dsc`` step in one guest: resources in over the VMBus, apply with live progress, reboots.

Theory of operation
-------------------
1. *Guest Service Interface.* Copy-VMFile needs it. If it is off, it is enabled only when the
   trust scope that accepted the bundle allows it; otherwise the step fails saying how.
2. *Files in.* Module folders go to ``C:\\Program Files\\WindowsPowerShell\\Modules\\<Name>\\<Version>``
   and the MOF to a staging folder as ``localhost.mof``. One ``Get-FileHash`` invocation lists what
   the guest already has; only files whose SHA-256 differs are copied. Copies go in batches: one
   pipeline holds many ``Copy-VMFile`` statements (one round trip for the batch) and several
   batches run at once on the runspace pool. A second ``Get-FileHash`` invocation then checks
   every copied file; a mismatch fails the step before anything is applied.
3. *The LCM first.* An LCM runs operations of its own (it resumes a configuration after a reboot,
   runs consistency checks) and refuses a new one meanwhile ("... method is in progress and must
   return before ... can be invoked"). Before anything is sent to it, ``Get-DscLocalConfigurationManager``
   is polled until ``LCMState`` leaves ``Busy``, within the step's timeout. A meta-configuration
   (``localhost.meta.mof``) is then applied with ``Set-DscLocalConfigurationManager -Path <staging>``;
   it is read here first, and one that lets the LCM restart the guest by itself
   (``RebootNodeIfNeeded``) is refused unless the step allows reboots.
4. *Apply.* ``Start-DscConfiguration -Path <staging> -Wait -Verbose -Force`` runs through the
   caller's :class:`GuestChannel`, which journals every record; the LCM lines are parsed as they
   arrive and fold into :class:`~vmbusops.dsc.progress.ConfigurationProgress`.
5. *Reboots.* When the LCM says a reboot is required and the step allows it, the VM is restarted
   from the host (``Restart-VM``: no guest network or credential) - or, with ``RebootNodeIfNeeded``,
   the LCM restarts it and the step waits for that - and the channel waits until the guest is ready
   (bounded). What happens next is the LCM's choice (``ActionAfterReboot``), so the step waits for
   it to leave ``Busy`` and reads ``LCMState``: ``PendingConfiguration`` (StopConfiguration) is resumed
   with ``Start-DscConfiguration -UseExisting``; ``PendingReboot`` means the resumed run asked for
   another reboot; ``Idle`` means the LCM resumed by itself (ContinueConfiguration, the default),
   and ``Get-DscConfigurationStatus`` says how that run ended - it is not applied again. Reboots
   stop at ``max_reboots``. ``Test-DscConfiguration -Detailed`` and ``Get-DscConfigurationStatus``
   confirm the end state.
6. *Drift check* (``mode = "test"``): the MOF is staged and tested with
   ``Test-DscConfiguration -ReferenceConfiguration``; drifted resources are reported, nothing is set
   (the meta-configuration is not applied either).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from vmbusops.bundle.manifest import DscMode, DscStep, FileEntry, Manifest
from vmbusops.dsc.documents import MetaSettings, documents_problem
from vmbusops.dsc.lcm import LcmParser
from vmbusops.dsc.mof import resource_ids
from vmbusops.dsc.progress import ConfigurationProgress, ResourceState
from vmbusops.errors import (
    ConfigError,
    FailureCode,
    GuestError,
    GuestServicesDisabledError,
    HostCommandError,
    VmbusOpsError,
)
from vmbusops.guest_paths import guest_path_problem
from vmbusops.guestops.classify import classify
from vmbusops.guestops.host import GUEST_SERVICE_INTERFACE, HyperVHost, InvokeOutcome
from vmbusops.psrp.client import Command
from vmbusops.records import (
    ErrorRecord,
    OutputRecord,
    PipelineStateRecord,
    PSObjectValue,
    Record,
    Value,
    VerboseRecord,
    WarningRecord,
)

MODULES_GUEST_DIR = "C:\\Program Files\\WindowsPowerShell\\Modules"
DSC_STAGING_DIR = "C:\\ProgramData\\vmbusops\\dsc"
#: Copy-VMFile statements per pipeline, and pipelines in flight at once, when pushing files.
COPY_BATCH = 64
COPY_PARALLEL = 4
#: How long a step without a timeout waits for a busy LCM, and how often it looks.
LCM_BUSY_WAIT = 3600.0
LCM_POLL_FIRST = 0.2
LCM_POLL_MAX = 5.0
#: How long a step waits for the LCM to restart the guest itself (RebootNodeIfNeeded) before it
#: restarts the VM from the host.
LCM_REBOOT_GRACE = 300.0
_BUSY = re.compile(r"method is in progress and must return before \S+ can be invoked", re.IGNORECASE)


class GuestFileMismatchError(GuestError):
    """A file copied into the guest does not have the SHA-256 the bundle lists."""

    code = FailureCode.GUEST_FILE_MISMATCH


class ConfigurationError(GuestError):
    """The LCM failed, or the configuration did not converge within the reboot budget."""

    code = FailureCode.CONFIGURATION_FAILED


class LcmWaitTimeout(ConfigurationError):
    """The LCM stayed in a state (Busy, PendingReboot) longer than the step could wait."""


@dataclass(frozen=True, slots=True)
class GuestFile:
    source: Path
    guest: str
    sha256: str
    #: Where Copy-VMFile reads it on the host, when that is not ``source`` (a remote host's staging).
    on_host: str | None = None


@dataclass(frozen=True, slots=True)
class GuestRun:
    outcome: InvokeOutcome
    records: list[Record]

    @property
    def outputs(self) -> list[Value]:
        return [r.value for r in self.records if isinstance(r, OutputRecord)]


class GuestChannel(Protocol):
    """How a step runs scripts in its guest; the engine journals every record it passes, but for
    a ``quiet`` run's output and state: the agent's own checks (file hashes, the LCM's state),
    which a note sums up in a line where it matters."""

    async def run(
        self,
        script: str,
        *,
        arguments: Sequence[Any] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
        quiet: bool = False,
    ) -> GuestRun: ...

    async def wait_ready(self) -> None: ...

    async def note(self, text: str) -> None:
        """Journal a line from the agent itself (a reboot it started, files it copied)."""
        ...

    def progress(self, text: str) -> None:
        """Show where the step is (the run view's step column)."""
        ...


@dataclass
class PushReport:
    files: int = 0
    copied: int = 0
    skipped: int = 0
    round_trips: int = 0


@dataclass
class DscReport:
    push: PushReport = field(default_factory=PushReport)
    progress: ConfigurationProgress = field(default_factory=ConfigurationProgress)
    reboots: int = 0
    reboot_pending: bool = False
    drifted: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "changed": self.progress.of_state(ResourceState.CHANGED),
            "failed": self.progress.of_state(ResourceState.FAILED),
            "drifted": self.drifted,
            "in_desired_state": len(self.progress.of_state(ResourceState.IN_DESIRED_STATE)),
            "reboots": self.reboots,
            "reboot_pending": self.reboot_pending,
            "files_copied": self.push.copied,
            "files_skipped": self.push.skipped,
        }


# --- files ------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def staging_folder(job_id: int, step: str) -> str:
    return f"{DSC_STAGING_DIR}\\job-{job_id}-{step}"


def dsc_files(manifest: Manifest, step: DscStep, local_path: Callable[[str], Path], staging: str) -> list[GuestFile]:
    """Every file the step puts in the guest: module folders, then the MOF (and meta-MOF)."""
    if len(step.mofs) != 1:
        raise ConfigError("a dsc step applies one configuration; stage one MOF per step")
    files: list[GuestFile] = []
    for module in step.modules:
        folder = module.rstrip("/")
        name = folder.rsplit("/", 1)[-1]
        entries = manifest.module_files(folder)
        version = _module_version(folder, name, entries, local_path)
        for entry in entries:
            rel = entry.path.removeprefix(folder + "/")
            target = f"{name}/{rel}" if version is None else f"{name}/{version}/{rel}"
            files.append(
                GuestFile(local_path(entry.path), f"{MODULES_GUEST_DIR}\\{target.replace('/', chr(92))}", entry.sha256)
            )
    mof = manifest.file(step.mofs[0])
    files.append(GuestFile(local_path(mof.path), f"{staging}\\localhost.mof", mof.sha256))
    if step.meta_config is not None:
        meta = manifest.file(step.meta_config)
        files.append(GuestFile(local_path(meta.path), f"{staging}\\localhost.meta.mof", meta.sha256))
    return files


_VERSION_DIR = re.compile(r"[0-9]+(\.[0-9]+){1,3}")
_MODULE_VERSION = re.compile(r"""ModuleVersion\s*=\s*['"]([0-9]+(?:\.[0-9]+){1,3})['"]""", re.IGNORECASE)


def _module_version(folder: str, name: str, entries: Sequence[FileEntry], local_path: Callable[[str], Path]) -> str | None:
    """The version folder to copy a module into: None if the bundle's folder already has one,
    else the manifest's (``<Name>.psd1``) ModuleVersion, as PowerShell lays modules out."""
    firsts = {e.path.removeprefix(folder + "/").split("/", 1)[0] for e in entries}
    if firsts and all(_VERSION_DIR.fullmatch(f) for f in firsts):
        return None
    psd1 = f"{folder}/{name}.psd1"
    if not any(e.path == psd1 for e in entries):
        raise ConfigError(f"module folder {folder!r} has no {name}.psd1 module manifest")
    try:
        m = _MODULE_VERSION.search(local_path(psd1).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {psd1}: {exc}") from exc
    if m is None:
        raise ConfigError(f"{psd1} does not declare a ModuleVersion")
    return m[1]


async def ensure_guest_services(host: HyperVHost, vm: str, *, may_enable: bool) -> bool:
    """Make sure Copy-VMFile can work; True if this enabled the Guest Service Interface."""
    info = await host.get_vm(vm)
    if info.guest_services is not False:
        return False
    if not may_enable:
        raise GuestServicesDisabledError(
            f"{vm}: the Guest Service Interface is disabled, and the trust scope of this bundle does not "
            "allow vmbusops to enable it",
            vm=vm,
            hint=f"enable it on the host: Enable-VMIntegrationService -VMName '{vm}' -Name "
            f"'{GUEST_SERVICE_INTERFACE}', or allow it in trust.toml (enable_guest_services = true on the scope)",
        )
    await host.enable_guest_services(vm)
    return True


def hash_script(paths: Sequence[str]) -> str:
    """One Get-FileHash for many files. A missing file simply has no hash: -ErrorAction Ignore
    keeps the expected "cannot find path" errors out of the run's record and out of ``$Error``,
    where SilentlyContinue would leave them for the invoker to count as the step's errors."""
    listed = ",".join(_quote(p) for p in paths)
    return f"Get-FileHash -LiteralPath {listed} -Algorithm SHA256 -ErrorAction Ignore"


async def guest_hashes(channel: GuestChannel, paths: Sequence[str]) -> dict[str, str]:
    """SHA-256 (lower-case hex) of each path present in the guest, keyed by case-folded path."""
    if not paths:
        return {}
    run = await channel.run(hash_script(paths), quiet=True)
    if run.outcome.failure is not None:
        raise run.outcome.failure
    hashes: dict[str, str] = {}
    for value in run.outputs:
        if isinstance(value, PSObjectValue):
            path, digest = value.get("Path"), value.get("Hash")
            if isinstance(path, str) and isinstance(digest, str):
                hashes[path.casefold()] = digest.lower()
    return hashes


async def copy_files(host: HyperVHost, vm: str, files: Sequence[GuestFile], *, batch: int = COPY_BATCH,
                     parallel: int = COPY_PARALLEL) -> int:  # fmt: skip
    """Copy-VMFile every file, ``batch`` statements per pipeline, ``parallel`` pipelines at once.

    Returns the number of round trips (pipelines). The first error ends the copy, classified.
    Every destination is judged by the one rule of guest paths first (as
    :meth:`~vmbusops.guestops.host.HyperVHost.copy_file` judges one): a bad one copies nothing."""
    for f in files:
        problem = guest_path_problem(f.guest)
        if problem is not None:
            raise HostCommandError(
                f"{vm}: guest destination {f.guest!r} {problem}", hint="rename the file in the bundle"
            )
    chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
    limiter = trio.CapacityLimiter(max(1, parallel))
    errors: list[VmbusOpsError] = []

    async def one(chunk: Sequence[GuestFile]) -> None:
        statements = [
            [
                Command(
                    "Copy-VMFile",
                    {
                        "Name": vm,
                        "SourcePath": f.on_host or str(f.source),
                        "DestinationPath": f.guest,
                        "FileSource": "Host",
                        "CreateFullPath": True,
                        "Force": True,
                    },
                )
            ]
            for f in chunk
        ]
        async with limiter:
            if errors:
                return
            async with host.pool.invoke(statements) as pipe:
                async for record in pipe:
                    error = record.error if isinstance(record, PipelineStateRecord) else record
                    if isinstance(error, ErrorRecord) and not errors:
                        errors.append(classify(vm, error))

    async with trio.open_nursery() as nursery:
        for chunk in chunks:
            nursery.start_soon(one, chunk)
    if errors:
        raise errors[0]
    return len(chunks)


async def push_files(host: HyperVHost, vm: str, files: Sequence[GuestFile], channel: GuestChannel) -> PushReport:
    """Copy what the guest lacks, then verify every copied file's hash in the guest."""
    report = PushReport(files=len(files))
    present = await guest_hashes(channel, [f.guest for f in files])
    report.round_trips += 1
    todo = [f for f in files if present.get(f.guest.casefold()) != f.sha256]
    report.skipped = len(files) - len(todo)
    if todo:
        channel.progress(f"copying {len(todo)} of {len(files)} files")
        report.round_trips += await copy_files(host, vm, todo)
        after = await guest_hashes(channel, [f.guest for f in todo])
        report.round_trips += 1
        bad = [f.guest for f in todo if after.get(f.guest.casefold()) != f.sha256]
        if bad:
            shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise GuestFileMismatchError(
                f"{vm}: {len(bad)} file(s) copied with Copy-VMFile do not have the SHA-256 the bundle lists: {shown}",
                vm=vm,
                hint="nothing was applied; check the guest's disk and the Guest Service Interface, then run again",
            )
    report.copied = len(todo)
    await channel.note(
        f"vmbusops: {report.copied} file(s) copied into the guest, {report.skipped} already there "
        f"(SHA-256 verified, {report.round_trips} round trips)"
    )
    return report


# --- apply ------------------------------------------------------------------------------------


async def _lcm_run(channel: GuestChannel, script: str, progress: ConfigurationProgress) -> GuestRun:
    parser = LcmParser()
    progress.begin_run()
    last = [""]

    async def on_record(record: Record) -> None:
        if isinstance(record, VerboseRecord | WarningRecord | ErrorRecord):
            parser.receive_record(record.stream.value, record.message)
            changed = [progress.feed(e) for e in parser.events()]  # every event folds in
            if any(changed):
                line = progress.line()
                if line != last[0]:
                    last[0] = line
                    channel.progress(line)

    return await channel.run(script, on_record=on_record)


def _failure(vm: str, run: GuestRun, what: str) -> VmbusOpsError | None:
    if run.outcome.failure is not None:
        return run.outcome.failure
    if run.outcome.error_messages:
        return ConfigurationError(f"{vm}: {what}: {run.outcome.error_messages[-1]}", vm=vm)
    return None


def _lcm_busy(run: GuestRun) -> bool:
    """Whether the LCM refused the call because an operation of its own is in progress."""
    return any(_BUSY.search(m) for m in run.outcome.error_messages)


async def lcm_state(channel: GuestChannel, vm: str) -> str | None:
    """The LCM's ``LCMState``; None when the guest did not answer (it may be restarting)."""
    run = await channel.run("Get-DscLocalConfigurationManager", quiet=True)
    failure = run.outcome.failure
    if failure is not None:
        if failure.transient:
            return None
        raise failure
    info = next((v for v in run.outputs if isinstance(v, PSObjectValue)), None)
    state = info.get("LCMState") if info is not None else None
    if not isinstance(state, str):
        why = run.outcome.error_messages[-1] if run.outcome.error_messages else "no LCMState in its answer"
        raise ConfigurationError(f"{vm}: Get-DscLocalConfigurationManager failed: {why}", vm=vm)
    return state


async def wait_lcm(channel: GuestChannel, vm: str, *, deadline: float, leave: frozenset[str] = frozenset({"Busy"}),
                   why: str = "it is busy") -> str:  # fmt: skip
    """Poll the LCM until its state is not in ``leave``; return that state.

    A guest that does not answer (restarting) is waited for with the channel's ``wait_ready``.
    Raises LcmWaitTimeout at ``deadline`` (trio time)."""
    delay = LCM_POLL_FIRST
    told = False
    while True:
        state = await lcm_state(channel, vm)
        if state is None:
            await channel.wait_ready()
            continue
        if state not in leave:
            if told:
                await channel.note(f"vmbusops: the LCM on {vm} is {state} now")
            return state
        if not told:
            told = True
            await channel.note(f"vmbusops: the LCM on {vm} is {state}; waiting for it ({why})")
        if trio.current_time() + delay > deadline:
            raise LcmWaitTimeout(
                f"{vm}: the LCM was still {state} when the step's time to wait for it ran out",
                vm=vm,
                hint="Get-DscLocalConfigurationManager and Get-DscConfigurationStatus in the guest say what it is doing",
            )
        await trio.sleep(delay)
        delay = min(delay * 1.5, LCM_POLL_MAX)


async def _finished_by_lcm(channel: GuestChannel, vm: str, report: DscReport) -> None:
    """The LCM is Idle after a reboot: it finished the run by itself. Fold its status in; raise if
    it failed. (Idle also means no reboot is pending: a status's RebootRequested is history.)"""
    status = await channel.run("Get-DscConfigurationStatus", quiet=True)
    if status.outcome.failure is not None:
        raise status.outcome.failure
    latest = next((v for v in status.outputs if isinstance(v, PSObjectValue)), None)
    if latest is None:
        raise ConfigurationError(f"{vm}: Get-DscConfigurationStatus reports no run after the reboot", vm=vm)

    def ids(name: str) -> list[str]:
        items = latest.get(name)
        if not isinstance(items, tuple):
            return []
        return [str(v.get("ResourceId")) for v in items if isinstance(v, PSObjectValue) and v.get("ResourceId")]

    progress = report.progress
    for rid in ids("ResourcesInDesiredState"):
        if progress.resources.get(rid) not in (ResourceState.CHANGED, ResourceState.IN_DESIRED_STATE):
            progress.resources[rid] = ResourceState.IN_DESIRED_STATE
    not_in = ids("ResourcesNotInDesiredState")
    await channel.note(
        f"vmbusops: the LCM on {vm} finished the configuration by itself after the reboot "
        f"(Get-DscConfigurationStatus: {latest.get('Status')!s}, type {latest.get('Type')!s}, "
        f"{len(ids('ResourcesInDesiredState'))} resource(s) in desired state, {len(not_in)} not)"
    )
    channel.progress(progress.line())
    if latest.get("Status") == "Failure":
        for rid in not_in:
            progress.resources[rid] = ResourceState.FAILED
        raise ConfigurationError(
            f"{vm}: the configuration the LCM resumed after the reboot failed: {latest.get('Error')!s}", vm=vm
        )


async def _after_lcm(channel: GuestChannel, vm: str, state: str, report: DscReport) -> tuple[str | None, bool]:
    """What to do once the LCM is no longer busy after a reboot: (script to run next, done).

    ``None`` as the script means "reboot again" (the resumed run asked for one)."""
    report.progress.begin_run()
    if state == "PendingConfiguration":
        # ActionAfterReboot = StopConfiguration: the run waits for us.
        return "Start-DscConfiguration -UseExisting -Wait -Verbose", False
    if state == "PendingReboot":
        report.progress.reboot_required = True
        await channel.note(f"vmbusops: the LCM on {vm} asks for another reboot")
        return None, False
    await _finished_by_lcm(channel, vm, report)
    return None, True


async def _wait_lcm_restart(host: HyperVHost, vm: str, channel: GuestChannel, why: str, *, deadline: float) -> None:
    """RebootNodeIfNeeded: the LCM restarts the guest itself; wait until it has (the LCM no longer
    says PendingReboot), restarting it from the host only if it does not within the grace time."""
    await channel.note(f"vmbusops: the LCM restarts {vm} itself (RebootNodeIfNeeded): {why}")
    grace = min(deadline, trio.current_time() + LCM_REBOOT_GRACE)
    try:
        await wait_lcm(channel, vm, deadline=grace, leave=frozenset({"PendingReboot"}), why="the guest restarts")
    except LcmWaitTimeout:
        if trio.current_time() >= deadline:
            raise
        await restart_and_wait(host, vm, channel, f"the LCM did not restart it within {LCM_REBOOT_GRACE:g}s")


async def restart_and_wait(host: HyperVHost, vm: str, channel: GuestChannel, why: str) -> None:
    await channel.note(f"vmbusops: restarting {vm} from the host (Restart-VM): {why}")
    await host.restart_vm(vm)
    await channel.wait_ready()
    await channel.note(f"vmbusops: {vm} is back (heartbeat OK, PowerShell Direct answers)")


async def apply_dsc(
    host: HyperVHost,
    vm: str,
    step: DscStep,
    files: Sequence[GuestFile],
    channel: GuestChannel,
    *,
    staging: str,
    may_enable_guest_services: bool,
    report: DscReport | None = None,
) -> DscReport:
    """Carry out one dsc step in one guest; raises a GuestError when it fails.

    Pass ``report`` to keep what happened (resources changed and failed) when it raises."""
    report = report if report is not None else DscReport()
    mof = next(f for f in files if f.guest.endswith("\\localhost.mof"))
    meta_file = next((f for f in files if f.guest.endswith("\\localhost.meta.mof")), None)
    local = {step.mofs[0]: mof.source}
    if meta_file is not None and step.meta_config is not None:
        local[step.meta_config] = meta_file.source
    problem = documents_problem(step, lambda path: local[path].read_text(encoding="utf-8-sig"))
    if problem is not None:  # acceptance judged the same; this is the files as staged
        raise ConfigError(problem.message, hint=problem.hint)
    ids = resource_ids(mof.source.read_text(encoding="utf-8-sig"))
    report.progress = ConfigurationProgress.of(ids)
    meta: MetaSettings | None = None
    if meta_file is not None and step.mode is not DscMode.TEST:
        meta = MetaSettings.of(meta_file.source.read_text(encoding="utf-8-sig"))
    deadline = trio.current_time() + (step.timeout_seconds or LCM_BUSY_WAIT)
    if await ensure_guest_services(host, vm, may_enable=may_enable_guest_services):
        await channel.note(f"vmbusops: enabled the Guest Service Interface on {vm} (allowed by the trust scope)")
    report.push = await push_files(host, vm, files, channel)
    channel.progress(report.progress.line())
    await wait_lcm(channel, vm, deadline=deadline)

    if step.mode is DscMode.TEST:
        run = await _lcm_run(channel, f"Test-DscConfiguration -ReferenceConfiguration {_quote(mof.guest)} -Verbose", report.progress)
        if (failure := _failure(vm, run, "Test-DscConfiguration failed")) is not None:
            raise failure
        report.drifted = report.progress.of_state(ResourceState.DRIFTED)
        detail = next((v for v in run.outputs if isinstance(v, PSObjectValue)), None)
        if detail is not None:
            not_in = detail.get("ResourcesNotInDesiredState")
            ids_not_in = [v.get("ResourceId") for v in not_in if isinstance(v, PSObjectValue)] if isinstance(not_in, tuple) else []
            report.drifted = sorted({*report.drifted, *(str(i) for i in ids_not_in if i)})
        await channel.note(
            f"vmbusops: drift check: {len(report.drifted)} of {len(ids)} resource(s) not in desired state"
            + (f": {', '.join(report.drifted)}" if report.drifted else "")
        )
        return report

    if meta is not None:
        run = await channel.run(f"Set-DscLocalConfigurationManager -Path {_quote(staging)} -Verbose")
        if (failure := _failure(vm, run, "Set-DscLocalConfigurationManager failed")) is not None:
            raise failure
        await channel.note(
            f"vmbusops: LCM meta-configuration applied on {vm} (ActionAfterReboot = {meta.action_after_reboot}, "
            f"RebootNodeIfNeeded = {meta.reboot_node_if_needed})"
        )

    first = f"Start-DscConfiguration -Path {_quote(staging)} -Wait -Verbose -Force"
    script: str | None = first
    while True:
        if script is not None:
            run = await _lcm_run(channel, script, report.progress)
            if _lcm_busy(run):
                # The LCM started an operation of its own since we looked: wait, then decide again.
                state = await wait_lcm(channel, vm, deadline=deadline, why="it refused the call while busy")
                if script == first:
                    continue
                script, done = await _after_lcm(channel, vm, state, report)
                if done:
                    break
                continue
            failure = _failure(vm, run, "the configuration failed")
            lcm_restarts = meta is not None and meta.reboot_node_if_needed
            if failure is not None and not (
                # RebootNodeIfNeeded: the LCM may restart the guest under the session that watched it.
                lcm_restarts and report.progress.reboot_required and run.outcome.failure is failure and failure.transient
            ):
                report.progress.mark_failed_current()
                raise failure
            if not report.progress.reboot_required:
                break
        if not step.allow_reboot:
            report.reboot_pending = True
            await channel.note(f"vmbusops: {vm} needs a reboot to finish the configuration; the step does not allow one")
            return report
        if report.reboots >= step.max_reboots:
            report.reboot_pending = True
            raise ConfigurationError(
                f"{vm}: the configuration still asks for a reboot after {report.reboots} reboot(s) "
                f"(max_reboots = {step.max_reboots}); it does not converge",
                vm=vm,
                hint="look at the resource that keeps asking (the run's records); raise max_reboots only if it is expected",
            )
        report.reboots += 1
        why = f"the LCM asked for a reboot (reboot {report.reboots} of {step.max_reboots})"
        if meta is not None and meta.reboot_node_if_needed:
            await _wait_lcm_restart(host, vm, channel, why, deadline=deadline)
        else:
            await restart_and_wait(host, vm, channel, why)
        state = await wait_lcm(channel, vm, deadline=deadline, why="it resumes the configuration after the reboot")
        script, done = await _after_lcm(channel, vm, state, report)
        if done:
            break

    confirm = await channel.run("Test-DscConfiguration -Detailed", quiet=True)
    detail = next((v for v in confirm.outputs if isinstance(v, PSObjectValue)), None)
    if confirm.outcome.failure is not None:
        raise confirm.outcome.failure
    if detail is not None and detail.get("InDesiredState") is False:
        not_in = detail.get("ResourcesNotInDesiredState")
        names = [str(v.get("ResourceId")) for v in not_in if isinstance(v, PSObjectValue)] if isinstance(not_in, tuple) else []
        raise ConfigurationError(f"{vm}: after applying, Test-DscConfiguration reports {', '.join(names) or 'resources'} not in desired state", vm=vm)
    status = await channel.run("Get-DscConfigurationStatus", quiet=True)
    latest = next((v for v in status.outputs if isinstance(v, PSObjectValue)), None)
    if latest is not None and latest.get("Status") == "Failure":
        raise ConfigurationError(f"{vm}: Get-DscConfigurationStatus reports the last run failed: {latest.get('Error')!s}", vm=vm)
    await channel.note(f"vmbusops: configuration converged on {vm} ({report.progress.line()})")
    return report


__all__ = [
    "COPY_BATCH",
    "ConfigurationError",
    "DscReport",
    "GuestChannel",
    "GuestFile",
    "GuestFileMismatchError",
    "GuestRun",
    "LcmWaitTimeout",
    "MetaSettings",
    "PushReport",
    "apply_dsc",
    "copy_files",
    "dsc_files",
    "ensure_guest_services",
    "guest_hashes",
    "lcm_state",
    "push_files",
    "restart_and_wait",
    "staging_folder",
    "wait_lcm",
]
