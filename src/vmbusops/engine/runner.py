"""The job engine: a job's runs, their steps, rate control, retries, cancellation, resumption.

Theory of operation
-------------------
:func:`open_engine` gives an :class:`Engine` bound to one host, one journal and one nursery, in
which two background tasks live: the journal writer (:mod:`.writer`) and the *keeper*, which every
``heartbeat_interval`` refreshes the owner's heartbeat on its jobs and VM leases and polls the
journal for cancel requests (``vmbusops jobs cancel`` only writes a flag; the owner acts on it).

:meth:`Engine.run_job` resolves the bundle's targets against the host's VMs, writes a pending job
with one pending run per VM, and runs every run as a task of its own. A run goes through:

1. *delivery*: take the VM's lease (process-wide, then in the journal, so no other job and no
   other process touches the VM meanwhile), then a slot of the job's max concurrency; while it
   waits it is ``delayed``. Not started by the job's delivery deadline: ``delivery-timed-out``.
   Once it holds a slot it checks max errors: exceeded means ``skipped``.
2. *execution*, under the run's execution timeout: the steps in order, as units planned by
   :mod:`.plan` (guest batches, host steps). Each step has its own timeout and retry policy:
   transient errors (``VmbusOpsError.transient``) wait out the backoff (``delayed``) and try
   again; anything else fails the step and the run at once with the real message. Guest
   invocations also hold a slot of the host-wide PowerShell Direct session limit.

Cancellation is a cancel scope per run: leaving a guest pipeline's context sends the PSRP stop
signal and waits for the pipeline to end, so the guest command stops; the journal writes that
follow are shielded. Every state change goes through :func:`.states.next_state` and is queued to
the journal behind the records that preceded it; the end of each step is a commit point.
"""

from __future__ import annotations

import fnmatch
import json
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import trio

from vmbusops.bundle.manifest import (
    CopyStep,
    DscStep,
    Manifest,
    PatchStep,
    RebootStep,
    ResumePolicy,
    ScriptStep,
    Step,
    WaitReadyStep,
    manifest_from_dict,
)
from vmbusops.bundle.verify import AcceptedBundle
from vmbusops.credentials import GuestCredential
from vmbusops.engine.journal import Journal
from vmbusops.engine.owner import Owner, current_owner
from vmbusops.engine.plan import REBOOT_EXIT_CODES, GuestBatch, parse_marker, plan_units
from vmbusops.engine.staged import JobStaging
from vmbusops.engine.states import ERRORS, Event, Level, State, job_outcome, next_state
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import (
    ConfigError,
    GuestNotReadyError,
    JournalError,
    VmbusOpsError,
    VMNotRunningError,
)
from vmbusops.guestops.dsc import (
    DscReport,
    GuestRun,
    apply_dsc,
    dsc_files,
    restart_and_wait,
    staging_folder,
)
from vmbusops.guestops.host import HyperVHost, InvokeOutcome
from vmbusops.guestops.patch import apply_patch
from vmbusops.records import (
    ErrorRecord,
    GuestRecord,
    InformationRecord,
    PipelineState,
    PipelineStateRecord,
    ProgressRecord,
    Record,
    display_text,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    #: PowerShell Direct sessions open at once on this host, across all jobs.
    max_sessions: int = 32
    flush_records: int = 1000
    flush_interval: float = 0.05
    max_buffer: int = 20_000
    heartbeat_interval: float = 1.0
    #: How often a waiting run looks at a VM lease held by another process.
    lease_poll_interval: float = 0.25
    excerpt_lines: int = 10
    wait_ready_timeout: float = 300.0
    wait_ready_poll: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSource:
    """What a job runs: a manifest, and the directory its files were extracted to (if any)."""

    manifest: Manifest
    directory: Path | None
    source: str
    #: The trust scope that accepted the bundle lets steps enable the Guest Service Interface.
    enable_guest_services: bool = False

    @classmethod
    def from_accepted(cls, bundle: AcceptedBundle) -> JobSource:
        return cls(
            manifest=bundle.manifest,
            directory=bundle.directory,
            source=bundle.source,
            enable_guest_services=bundle.scope.enable_guest_services,
        )

    def local_path(self, bundle_path: str) -> Path:
        if self.directory is None:
            raise ConfigError(f"the job has no bundle files, but a step needs {bundle_path!r}")
        return self.directory.joinpath(*bundle_path.split("/"))

    def script_of(self, step: ScriptStep) -> str:
        if step.inline is not None:
            return step.inline
        assert step.file is not None
        try:
            return self.local_path(step.file).read_text(encoding="utf-8-sig")
        except OSError as exc:
            raise ConfigError(
                f"cannot read the script {step.file!r} of step {step.name}: {exc.strerror}"
            ) from exc


@dataclass(frozen=True, slots=True)
class RunChanged:
    job_id: int
    vm: str
    state: State
    step: str | None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordArrived:
    job_id: int
    record: GuestRecord


EngineEvent = RunChanged | RecordArrived


@dataclass(frozen=True, slots=True)
class JobResult:
    job_id: int
    state: State
    runs: dict[str, State]
    errors: dict[str, str]
    #: Per VM, what its dsc and patch steps did (resources changed and failed, reboot pending, ...).
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


class StepFailed(Exception):
    def __init__(self, event: Event, message: str) -> None:
        super().__init__(message)
        self.event = event
        self.message = message


@dataclass(eq=False)
class _Run:
    id: int
    vm: str
    state: State
    steps: list[State]
    attempts: list[int]
    next_seq: int = 1
    current: int | None = None
    error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancelled: bool = False
    head: list[str] = field(default_factory=list)
    tail: deque[Record] = field(default_factory=lambda: deque(maxlen=10))
    dropped: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    #: (step index, exit code) of a script step that exited asking for a reboot it may have.
    reboot_for: tuple[int, int] | None = None


@dataclass(eq=False)
class _Job:
    id: int
    source: JobSource
    credential: GuestCredential
    runs: list[_Run]
    limiter: trio.CapacityLimiter
    max_errors: int
    staging: JobStaging
    delivery_deadline: float = math.inf
    errors: int = 0
    cancel_requested: bool = False
    state: State = State.PENDING

    @property
    def manifest(self) -> Manifest:
        return self.source.manifest


# VM leases held by this process: (journal file, VM) -> run id. The journal-level lease covers
# other processes; this covers two jobs of this process racing for the same VM.
_PROCESS_LEASES: dict[tuple[str, str], int] = {}


def resolve_targets(manifest: Manifest, host_vms: Sequence[str]) -> list[str]:
    """The VMs a bundle targets on this host, in the manifest's order, each once.

    A pattern with wildcards matches VM names case-insensitively; a plain name is kept even if the
    host has no such VM, so that its run fails with Hyper-V's own message rather than vanishing.
    """
    if manifest.targets.groups or manifest.targets.tags:
        raise ConfigError(
            f"{manifest.name}: target groups and tags are not supported on this host",
            hint="name the VMs (globs allowed) in targets.vms",
        )
    chosen: list[str] = []
    seen: set[str] = set()
    for pattern in manifest.targets.vms:
        if any(c in pattern for c in "*?["):
            names = [vm for vm in host_vms if fnmatch.fnmatchcase(vm.casefold(), pattern.casefold())]
        else:
            names = [next((vm for vm in host_vms if vm.casefold() == pattern.casefold()), pattern)]
        for name in names:
            if name.casefold() not in seen:
                seen.add(name.casefold())
                chosen.append(name)
    return chosen


class Engine:
    """Runs jobs on one host, journaling everything. Make one with :func:`open_engine`."""

    def __init__(
        self,
        host: HyperVHost,
        journal: Journal,
        writer: JournalWriter,
        *,
        credential_for: Callable[[str], GuestCredential],
        host_name: str,
        options: EngineOptions,
        on_event: Callable[[EngineEvent], None] | None,
    ) -> None:
        self.host = host
        self.journal = journal
        self.writer = writer
        self.credential_for = credential_for
        self.host_name = host_name
        self.options = options
        self.on_event = on_event
        self.owner: Owner = current_owner()
        self.sessions = trio.CapacityLimiter(max(1, options.max_sessions))
        self._jobs: dict[int, _Job] = {}
        self._lease_key = str(journal.path.resolve())

    # ------------------------------------------------------------------ jobs
    async def run_job(
        self, source: JobSource, *, on_created: Callable[[int], None] | None = None
    ) -> JobResult:
        """Resolve the targets, journal a new job, run it to its end."""
        manifest = source.manifest
        credential = self.credential_for(manifest.credential)
        host_vms = [vm.name for vm in await self.host.list_vms()]
        vms = resolve_targets(manifest, host_vms)
        job_id, run_ids = await self.writer.call(
            lambda: self.journal.create_job(
                bundle_name=manifest.name,
                bundle_version=manifest.version,
                bundle_id=manifest.id,
                source=source.source,
                manifest=manifest.to_json().decode("utf-8"),
                bundle_dir=str(source.directory) if source.directory is not None else None,
                host=self.host_name,
                vms=vms,
                steps=[(s.name, s.kind.value) for s in manifest.steps],
                owner=self.owner,
                now=time.time(),
            )
        )
        if on_created is not None:
            on_created(job_id)
        n = len(manifest.steps)
        runs = [
            _Run(id=run_ids[vm], vm=vm, state=State.PENDING, steps=[State.PENDING] * n, attempts=[0] * n)
            for vm in vms
        ]
        job = self._job(job_id, source, credential, runs)
        return await self._execute(job)

    async def resume_job(self, job_id: int, source: JobSource | None = None) -> JobResult:
        """Take over an interrupted job and finish it according to its bundle's resume policy."""
        await self.writer.call(self.journal.reconcile)
        view = await self.writer.call(self.journal.job, job_id)
        if view.stored_state is not State.INTERRUPTED:
            raise JournalError(
                f"job {job_id} is {view.state.value}; only an interrupted job can be resumed",
            )
        await self.writer.call(self.journal.claim_job, job_id, self.owner, time.time())
        if source is None:
            manifest = manifest_from_dict(json.loads(view.manifest))
            directory = Path(view.bundle_dir) if view.bundle_dir else None
            source = JobSource(manifest=manifest, directory=directory, source=view.source)
        manifest = source.manifest
        credential = self.credential_for(manifest.credential)
        policy = manifest.execution.resume
        runs: list[_Run] = []
        for rv in await self.writer.call(self.journal.runs, job_id):
            steps = await self.writer.call(self.journal.steps, rv.id)
            run = _Run(
                id=rv.id,
                vm=rv.vm,
                state=rv.stored_state,
                steps=[s.state for s in steps],
                attempts=[s.attempts for s in steps],
                next_seq=await self.writer.call(self.journal.next_seq, rv.id),
            )
            run.error = rv.error
            if run.state is State.INTERRUPTED:
                self._resume_run(run, manifest.steps, policy)
            runs.append(run)
        job = self._job(job_id, source, credential, runs)
        job.state = State.INTERRUPTED
        self._job_event(job, Event.RESUME)
        await self.writer.commit()
        return await self._execute(job)

    def _resume_run(self, run: _Run, steps: Sequence[Step], policy: ResumePolicy) -> None:
        interrupted = [i for i, s in enumerate(run.steps) if s is State.INTERRUPTED]
        if policy is ResumePolicy.ABANDON:
            self._abandon(run, "the agent stopped under this run and the bundle's resume policy is abandon")
            return
        for i in interrupted:
            step = steps[i]
            if policy is ResumePolicy.RESTART or step.idempotent or isinstance(step, DscStep):
                self._step_event(run, i, Event.RESUME)
            else:
                self._abandon(
                    run,
                    f"step {step.name} was interrupted and is not idempotent, so it is not run again",
                )
                return
        self._run_event(run, Event.RESUME)

    def _abandon(self, run: _Run, message: str) -> None:
        for i, s in enumerate(run.steps):
            if s is State.INTERRUPTED:
                self._step_event(run, i, Event.ABANDON, error=message)
            elif s in (State.PENDING, State.DELAYED):
                self._step_event(run, i, Event.SKIP)
        run.error = message
        self._run_event(run, Event.ABANDON, error=message, finished=True)

    def _job(self, job_id: int, source: JobSource, credential: GuestCredential, runs: list[_Run]) -> _Job:
        execution = source.manifest.execution
        total = len(runs)
        for run in runs:
            run.tail = deque(maxlen=self.options.excerpt_lines)
        return _Job(
            id=job_id,
            source=source,
            credential=credential,
            runs=runs,
            limiter=trio.CapacityLimiter(max(1, execution.max_concurrency.of(total))),
            max_errors=execution.max_errors.of(total)
            if execution.max_errors.count is None
            else execution.max_errors.count,
            errors=sum(1 for r in runs if r.state in ERRORS),
            staging=JobStaging(self.host, job_id, source),
        )

    async def _execute(self, job: _Job) -> JobResult:
        self._jobs[job.id] = job
        try:
            job.delivery_deadline = trio.current_time() + job.manifest.execution.delivery_timeout_seconds
            self._job_event(job, Event.START, started=True)
            await self.writer.commit()
            # The job's staged files (remote hosts) outlive every run and go when the job ends.
            async with job.staging, trio.open_nursery() as nursery:
                for run in job.runs:
                    if run.state is State.PENDING:
                        nursery.start_soon(self._run_target, job, run)
            outcome = job_outcome((r.state for r in job.runs), cancel_requested=job.cancel_requested)
            self._job_event(job, outcome, finished=True)
            await self.writer.commit()
        finally:
            del self._jobs[job.id]
        return JobResult(
            job_id=job.id,
            state=job.state,
            runs={r.vm: r.state for r in job.runs},
            errors={r.vm: r.error for r in job.runs if r.error},
            details={r.vm: r.details for r in job.runs if r.details},
        )

    def cancel(self, job_id: int, vm: str | None = None) -> None:
        """Cancel a job of this engine (or one VM's run): stops its guest pipelines."""
        job = self._jobs.get(job_id)
        if job is None:
            return
        if vm is None:
            job.cancel_requested = True
        for run in job.runs:
            if vm is None or run.vm.casefold() == vm.casefold():
                run.cancelled = True
                run.scope.cancel()

    # ------------------------------------------------------------------ journal plumbing
    def _job_event(self, job: _Job, event: Event, *, started: bool = False, finished: bool = False) -> None:
        job.state = next_state(Level.JOB, job.state, event)
        sets = ["state = ?"]
        params: list[Any] = [job.state.value]
        if started:
            sets.append("started_at = COALESCE(started_at, ?)")
            params.append(time.time())
        if finished:
            sets.append("finished_at = ?")
            params.append(time.time())
        self.writer.update(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", [*params, job.id])  # noqa: S608

    def _run_event(
        self,
        run: _Run,
        event: Event,
        *,
        error: str | None = None,
        started: bool = False,
        finished: bool = False,
        job_id: int = 0,
    ) -> None:
        run.state = next_state(Level.RUN, run.state, event)
        step = self._current_step_name(run)
        sets = ["state = ?", "current_step = ?", "records = ?"]
        params: list[Any] = [run.state.value, step, run.next_seq - 1]
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        if started:
            sets.append("started_at = ?")
            params.append(time.time())
        if finished:
            sets += ["finished_at = ?", "excerpt = ?"]
            params += [time.time(), json.dumps(self._excerpt(run))]
        self.writer.update(f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", [*params, run.id])  # noqa: S608
        if self.on_event is not None and job_id:
            self.on_event(RunChanged(job_id, run.vm, run.state, step, error))

    def _step_event(self, run: _Run, index: int, event: Event, *, error: str | None = None) -> None:
        new = next_state(Level.STEP, run.steps[index], event)
        run.steps[index] = new
        sets = ["state = ?"]
        params: list[Any] = [new.value]
        if event is Event.START:
            run.attempts[index] += 1
            sets += ["attempts = ?", "started_at = ?", "finished_at = NULL", "error = NULL"]
            params += [run.attempts[index], time.time()]
        if new.terminal:
            sets.append("finished_at = ?")
            params.append(time.time())
        if error is not None:
            sets.append("error = ?")
            params.append(error)
        self.writer.update(
            f"UPDATE steps SET {', '.join(sets)} WHERE run_id = ? AND idx = ?",  # noqa: S608
            [*params, run.id, index],
        )

    def _current_step_name(self, run: _Run) -> str | None:
        job = next((j for j in self._jobs.values() if run in j.runs), None)
        if job is None or run.current is None:
            return None
        return job.manifest.steps[run.current].name

    def _excerpt(self, run: _Run) -> list[str]:
        tail = [line for r in run.tail for line in (display_text(r).splitlines() or [""])]
        tail = tail[-self.options.excerpt_lines :]
        if run.dropped:
            return [*run.head, f"... ({run.dropped} records not shown) ...", *tail]
        return [*run.head, *tail]

    async def _record(self, job: _Job, run: _Run, rec: GuestRecord, step: int | None) -> None:
        """Number a record in the run, queue it for the journal, keep it for the excerpt, pass it on.

        This is on the path of every record, so it does as little as it can: JSON and display
        text are made later (in the journal flush, and for the excerpt when the run ends).
        """
        seq = run.next_seq
        run.next_seq = seq + 1
        name = job.manifest.steps[step].name if step is not None else None
        record = rec.record
        await self.writer.add_record(
            (run.id, seq, name, run.attempts[step] if step is not None else 0, record, rec.time)
        )
        if not isinstance(record, PipelineStateRecord | ProgressRecord):
            if len(run.head) < self.options.excerpt_lines:
                run.head.extend(display_text(record).splitlines() or [""])
            else:
                if len(run.tail) == run.tail.maxlen:
                    run.dropped += 1
                run.tail.append(record)
        if self.on_event is not None:
            self.on_event(
                RecordArrived(
                    job.id, GuestRecord(vm=run.vm, seq=seq, time=rec.time, record=record, step=name)
                )
            )

    # ------------------------------------------------------------------ keeper
    async def _keep(self) -> None:
        """Heartbeat the owner's jobs and leases; act on cancel requests from the journal."""
        while True:
            await trio.sleep(self.options.heartbeat_interval)
            ids = list(self._jobs)
            await self.writer.call(self.journal.heartbeat, ids, self.owner, time.time())
            if not ids:
                continue
            jobs, runs = await self.writer.call(self.journal.cancel_requests, ids)
            for job_id in jobs:
                job = self._jobs.get(job_id)
                if job is not None and not job.cancel_requested:
                    self.cancel(job_id)
            for job in list(self._jobs.values()):
                for run in job.runs:
                    if run.id in runs and not run.cancelled:
                        run.cancelled = True
                        run.scope.cancel()

    # ------------------------------------------------------------------ one run
    async def _run_target(self, job: _Job, run: _Run) -> None:
        lease = False
        slot = False
        try:
            with run.scope:
                with trio.move_on_at(job.delivery_deadline) as delivery:
                    await self._take_vm(job, run)
                    lease = True
                    if job.limiter.available_tokens == 0 and run.state is State.PENDING:
                        self._run_event(run, Event.WAIT, job_id=job.id)
                    await job.limiter.acquire_on_behalf_of(run)
                    slot = True
                if delivery.cancelled_caught:
                    timeout = job.manifest.execution.delivery_timeout_seconds
                    self._finish_run(
                        job, run, Event.DELIVERY_TIMEOUT,
                        f"{run.vm}: not started within the delivery timeout ({timeout:g}s)",
                    )  # fmt: skip
                    return
                if job.errors > job.max_errors:
                    self._skip_steps(run)
                    self._finish_run(
                        job, run, Event.SKIP,
                        f"not started: {job.errors} runs failed, more than max errors ({job.max_errors})",
                    )  # fmt: skip
                    return
                await self._execute_run(job, run)
            if run.scope.cancelled_caught and not run.state.terminal:
                self._cancel_run(job, run)
        except VmbusOpsError as exc:
            # Something outside any step (the journal, the host connection): the run fails with it.
            if not run.state.terminal:
                self._end_current_step(run, Event.FAIL, str(exc))
                self._finish_run(job, run, Event.FAIL, str(exc))
        finally:
            with trio.CancelScope(shield=True):
                if slot:
                    job.limiter.release_on_behalf_of(run)
                if lease:
                    await self._release_vm(run)
                await self.writer.commit()

    def _finish_run(self, job: _Job, run: _Run, event: Event, error: str | None = None) -> None:
        run.error = error if event is not Event.SUCCEED else None
        self._run_event(run, event, error=run.error, finished=True, job_id=job.id)
        if run.state in ERRORS:
            job.errors += 1

    def _cancel_run(self, job: _Job, run: _Run) -> None:
        self._end_current_step(run, Event.CANCEL, "cancelled")
        self._skip_steps(run)
        self._finish_run(job, run, Event.CANCEL, f"{run.vm}: cancelled")

    def _skip_steps(self, run: _Run) -> None:
        for i, s in enumerate(run.steps):
            if s in (State.PENDING, State.DELAYED):
                self._step_event(run, i, Event.SKIP)

    def _end_current_step(self, run: _Run, event: Event, error: str) -> None:
        if run.current is not None and run.steps[run.current] in (State.IN_PROGRESS, State.DELAYED):
            if run.steps[run.current] is State.DELAYED and event is Event.FAIL:
                self._step_event(run, run.current, Event.START)
            self._step_event(run, run.current, event, error=error)

    async def _take_vm(self, job: _Job, run: _Run) -> None:
        key = (self._lease_key, run.vm.casefold())
        while True:
            if key not in _PROCESS_LEASES:
                _PROCESS_LEASES[key] = run.id
                try:
                    holder = await self.writer.call(
                        self.journal.try_lease_vm, run.vm, run.id, self.owner, time.time()
                    )
                except BaseException:
                    del _PROCESS_LEASES[key]
                    raise
                if holder is None:
                    return
                del _PROCESS_LEASES[key]
            if run.state is State.PENDING:
                self._run_event(run, Event.WAIT, job_id=job.id)
            await trio.sleep(self.options.lease_poll_interval)

    async def _release_vm(self, run: _Run) -> None:
        key = (self._lease_key, run.vm.casefold())
        try:
            await self.writer.call(self.journal.release_vm, run.vm, run.id)
        finally:
            if _PROCESS_LEASES.get(key) == run.id:
                del _PROCESS_LEASES[key]

    async def _execute_run(self, job: _Job, run: _Run) -> None:
        self._run_event(run, Event.START, started=True, job_id=job.id)
        await self.writer.commit()
        timeout = job.manifest.execution.target_timeout_seconds
        with trio.move_on_after(timeout) as scope:
            try:
                await self._execute_steps(job, run)
            except StepFailed as failed:
                self._skip_steps(run)
                self._finish_run(job, run, failed.event, failed.message)
                return
        if scope.cancelled_caught:
            message = f"{run.vm}: the run did not finish within its execution timeout ({timeout:g}s)"
            self._end_current_step(run, Event.EXECUTION_TIMEOUT, message)
            self._skip_steps(run)
            self._finish_run(job, run, Event.EXECUTION_TIMEOUT, message)
            return
        run.current = None
        self._finish_run(job, run, Event.SUCCEED)

    async def _execute_steps(self, job: _Job, run: _Run) -> None:
        steps = job.manifest.steps
        while True:
            index = next((i for i, s in enumerate(run.steps) if s in (State.PENDING, State.DELAYED)), None)
            if index is None:
                return
            unit = plan_units(steps, index, job.source.script_of)[0]
            if isinstance(unit, GuestBatch):
                await self._guest_batch(job, run, unit)
            else:
                await self._host_step(job, run, unit.index)

    # ------------------------------------------------------------------ steps
    async def _begin_step(self, job: _Job, run: _Run, index: int) -> None:
        run.current = index
        self._step_event(run, index, Event.START)
        self._touch_run(job, run)
        await self.writer.commit()

    def _touch_run(self, job: _Job, run: _Run) -> None:
        step = self._current_step_name(run)
        self.writer.update(
            "UPDATE runs SET current_step = ?, records = ? WHERE id = ?", [step, run.next_seq - 1, run.id]
        )
        if self.on_event is not None:
            self.on_event(RunChanged(job.id, run.vm, run.state, step))

    async def _succeed_step(self, run: _Run, index: int) -> None:
        self._step_event(run, index, Event.SUCCEED)
        # The commit point: the step's records and its success are durable before anything else.
        await self.writer.commit()

    async def _step_failed(
        self, job: _Job, run: _Run, index: int, exc: VmbusOpsError | None, message: str
    ) -> None:
        """A step's attempt failed: wait and let the caller try again, or raise StepFailed."""
        step = job.manifest.steps[index]
        if exc is not None and exc.transient and run.attempts[index] < step.retry.attempts:
            self._step_event(run, index, Event.WAIT, error=message)
            await self.writer.commit()
            await trio.sleep(step.retry.delay_before_retry(run.attempts[index]))
            return
        self._step_event(run, index, Event.FAIL, error=message)
        raise StepFailed(Event.FAIL, f"step {step.name}: {message}")

    def _step_timed_out(self, job: _Job, run: _Run, index: int) -> StepFailed:
        step = job.manifest.steps[index]
        message = f"step {step.name}: did not finish within its timeout ({step.timeout_seconds:g}s)"
        self._step_event(run, index, Event.EXECUTION_TIMEOUT, error=message)
        return StepFailed(Event.EXECUTION_TIMEOUT, message)

    async def _host_step(self, job: _Job, run: _Run, index: int) -> None:
        step = job.manifest.steps[index]
        await self._begin_step(job, run, index)
        timeout = step.timeout_seconds if step.timeout_seconds is not None else math.inf
        try:
            with trio.move_on_after(timeout) as scope:
                await self._carry_out(job, run, index, step)
        except VmbusOpsError as exc:
            await self._step_failed(job, run, index, exc, str(exc))
            return
        if scope.cancelled_caught:
            raise self._step_timed_out(job, run, index)
        await self._succeed_step(run, index)

    async def _carry_out(self, job: _Job, run: _Run, index: int, step: Step) -> None:
        vm = run.vm
        match step:
            case CopyStep():
                await self.host.copy_to_guest(
                    vm,
                    await job.staging.host_path(job.source.local_path(step.source)),
                    step.destination,
                    create_full_path=step.create_full_path,
                    force=step.overwrite,
                )
            case RebootStep():
                await self.host.restart_vm(vm)
                await self._wait_ready(job, run, index)
            case WaitReadyStep():
                await self._wait_ready(job, run, index)
            case DscStep():
                await self._apply_dsc(job, run, index, step)
            case PatchStep():
                channel = _StepChannel(self, job, run, index)
                try:
                    patched = await apply_patch(self.host, run.vm, step, channel)
                except VmbusOpsError:
                    run.details[step.name] = {"failed": True}
                    raise
                run.details[step.name] = patched.summary()
            case ScriptStep():
                raise AssertionError("script steps run in guest batches")

    async def _apply_dsc(self, job: _Job, run: _Run, index: int, step: DscStep) -> None:
        staging = staging_folder(job.id, step.name)
        files = [
            replace(f, on_host=await job.staging.host_path(f.source))
            for f in dsc_files(job.manifest, step, job.source.local_path, staging)
        ]
        report = DscReport()
        try:
            await apply_dsc(
                self.host,
                run.vm,
                step,
                files,
                _StepChannel(self, job, run, index),
                staging=staging,
                may_enable_guest_services=job.source.enable_guest_services,
                report=report,
            )
        finally:
            run.details[step.name] = report.summary()

    async def _wait_ready(self, job: _Job, run: _Run, index: int) -> None:
        """Until the heartbeat is OK and PowerShell Direct answers (a probe that prints nothing)."""
        timeout = self.options.wait_ready_timeout
        deadline = trio.current_time() + timeout
        last = "no answer yet"
        while True:
            info = await self.host.get_vm(run.vm)
            if not info.running:
                raise VMNotRunningError(
                    f"{run.vm}: the VM is {info.state}, it will not become ready", vm=run.vm
                )
            if info.heartbeat_ok:
                async with self.sessions:
                    _, outcome = await self.host.run_in_guest(run.vm, "hostname", job.credential)
                if outcome.ok:
                    return
                if outcome.failure is not None and not outcome.failure.transient:
                    raise outcome.failure
                last = str(outcome.failure) if outcome.failure else "; ".join(outcome.error_messages)
            else:
                last = f"heartbeat is {info.heartbeat or 'not reported'}"
            if trio.current_time() + self.options.wait_ready_poll > deadline:
                raise GuestNotReadyError(
                    f"{run.vm}: the guest did not become ready within {timeout:g}s ({last})", vm=run.vm
                )
            await trio.sleep(self.options.wait_ready_poll)

    async def _guest_batch(self, job: _Job, run: _Run, batch: GuestBatch) -> None:
        parts = [(i, job.source.script_of(job.manifest.steps[i])) for i in batch.steps]  # type: ignore[arg-type]
        failure = await self._invoke(job, run, parts)
        reboot_for, run.reboot_for = run.reboot_for, None
        if failure is None and reboot_for is not None:
            failure = await self._reboot_for_script(job, run, *reboot_for)
        if failure is None:
            return
        exc, message, index = failure
        await self._step_failed(job, run, index, exc, message)

    async def _reboot_for_script(
        self, job: _Job, run: _Run, index: int, code: int
    ) -> tuple[VmbusOpsError | None, str, int] | None:
        """Restart the VM a script step asked to reboot, within the step's budget; then it succeeded.

        The batch ended with that step (see :mod:`.plan`), so nothing else ran in the guest since.
        """
        step = job.manifest.steps[index]
        assert isinstance(step, ScriptStep)
        details = run.details.setdefault(step.name, {"exit_code": code, "reboots": 0, "reboot_pending": True})
        details["exit_code"] = code
        if details["reboots"] >= step.max_reboots:
            return (
                None,
                f"the script asked for a reboot (exit code {code}) after {details['reboots']} reboot(s) "
                f"(max_reboots = {step.max_reboots})",
                index,
            )
        details["reboots"] += 1
        why = f"step {step.name} exited with {code} (reboot {details['reboots']} of {step.max_reboots})"
        try:
            await restart_and_wait(self.host, run.vm, _StepChannel(self, job, run, index), why)
        except VmbusOpsError as exc:
            return exc, str(exc), index
        details["reboot_pending"] = False
        await self._succeed_step(run, index)
        return None

    async def _script_exited(self, job: _Job, run: _Run, index: int, code: int) -> str | None:
        """What a script step's exit code means: None if it succeeded (perhaps reboot pending)."""
        if code == 0:
            return None
        step = job.manifest.steps[index]
        assert isinstance(step, ScriptStep)
        if code not in REBOOT_EXIT_CODES:
            return f"the script ended with exit code {code}"
        if step.allow_reboot:
            run.reboot_for = (index, code)
            return None
        run.details[step.name] = {"exit_code": code, "reboots": 0, "reboot_pending": True}
        await _StepChannel(self, job, run, index).note(
            f"vmbusops: {run.vm} needs a reboot (step {step.name} exited with {code}); "
            "the step does not allow one"
        )
        return None

    async def _invoke(
        self, job: _Job, run: _Run, parts: list[tuple[int, str]]
    ) -> tuple[VmbusOpsError | None, str, int] | None:
        """Run steps in one guest invocation; mark each begun / succeeded; return the first failure.

        A step fails by its exit code (see :mod:`.plan`); error records it wrote are journaled
        and shown but do not fail it. Returns None when every step in ``parts`` succeeded or when
        some never began (the caller plans again from the first that did not begin).
        """
        steps = job.manifest.steps
        indices = [i for i, _ in parts]
        single = len(parts) == 1
        first = steps[indices[0]]
        arguments = first.arguments if isinstance(first, ScriptStep) and single else ()
        errors: dict[int, str] = {}
        first_error: dict[int, str] = {}
        ended: set[int] = set()
        current: int | None = None
        step_scope = trio.CancelScope()
        if single:
            if run.steps[indices[0]] is not State.IN_PROGRESS:
                await self._begin_step(job, run, indices[0])
            current = indices[0]
            t = steps[current].timeout_seconds
            step_scope.deadline = trio.current_time() + t if t is not None else math.inf
        failure: VmbusOpsError | None = None
        state: PipelineState | None = None
        with step_scope:
            async with self.sessions:
                try:
                    async with self.host.invoke_steps(
                        run.vm, parts, job.credential, arguments=arguments
                    ) as inv:
                        async for rec in inv:
                            mark = parse_marker(rec.record)
                            if mark is not None:
                                kind, index = mark.kind, mark.index
                                if index not in indices:
                                    continue
                                if kind == "begin":
                                    if current is not None and current != index and current in errors:
                                        break  # the guest went on after a failed step: stop it here
                                    if run.steps[index] is not State.IN_PROGRESS:
                                        await self._begin_step(job, run, index)
                                    current = index
                                    t = steps[index].timeout_seconds
                                    step_scope.deadline = (
                                        trio.current_time() + t if t is not None else math.inf
                                    )
                                else:
                                    if index in errors:
                                        break
                                    ended.add(index)
                                    exited = await self._script_exited(job, run, index, mark.exit_code or 0)
                                    if exited is None and mark.errors:
                                        exited = f"the script wrote {mark.errors} error record(s)"
                                    if exited is not None:
                                        said = first_error.get(index)
                                        errors[index] = f"{said} ({exited})" if said else exited
                                        break  # stop the batch before the next step begins
                                    if run.reboot_for is None:
                                        await self._succeed_step(run, index)
                                    # else it succeeds once the VM is back; it ends its batch
                                    current = None
                                    step_scope.deadline = math.inf
                                continue
                            await self._record(job, run, rec, current)
                            if isinstance(rec.record, ErrorRecord) and current is not None:
                                first_error.setdefault(current, rec.record.message)
                    failure = inv.outcome.failure
                    state = inv.outcome.state
                except VmbusOpsError as exc:
                    failure = exc
        if step_scope.cancelled_caught and current is not None:
            raise self._step_timed_out(job, run, current)
        if failure is not None:
            index = current if current is not None else next(i for i in indices if i not in ended)
            if run.steps[index] is not State.IN_PROGRESS:
                await self._begin_step(job, run, index)
            return failure, str(failure), index
        if current is not None:
            if current in errors:
                return None, errors[current], current
            if state is PipelineState.COMPLETED:
                await self._succeed_step(run, current)
                return None
            return None, f"the pipeline ended {state.value if state else 'without a state'}", current
        bad = next((i for i in indices if i in errors), None)
        if bad is not None:
            return None, errors[bad], bad
        return None


class _StepChannel:
    """A host step's way into its guest: every record journaled under the step, live."""

    def __init__(self, engine: Engine, job: _Job, run: _Run, index: int) -> None:
        self.engine = engine
        self.job = job
        self.run_ = run
        self.index = index
        self.step = job.manifest.steps[index].name

    async def run(
        self,
        script: str,
        *,
        arguments: Sequence[Any] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
    ) -> GuestRun:
        records: list[Record] = []
        outcome = InvokeOutcome()
        async with self.engine.sessions:
            try:
                async with self.engine.host.invoke_in_guest(
                    self.run_.vm, script, self.job.credential, arguments=arguments
                ) as inv:
                    async for rec in inv:
                        records.append(rec.record)
                        await self.engine._record(self.job, self.run_, rec, self.index)
                        if on_record is not None:
                            await on_record(rec.record)
                    outcome = inv.outcome
            except VmbusOpsError as exc:
                outcome.failure = outcome.failure or exc
        return GuestRun(outcome, records)

    async def wait_ready(self) -> None:
        await self.engine._wait_ready(self.job, self.run_, self.index)

    async def note(self, text: str) -> None:
        record = InformationRecord(message_data=text, source="vmbusops", tags=("vmbusops.agent",))
        rec = GuestRecord(vm=self.run_.vm, seq=0, time=time.time(), record=record, step=self.step)
        await self.engine._record(self.job, self.run_, rec, self.index)

    def progress(self, text: str) -> None:
        if self.engine.on_event is not None:
            self.engine.on_event(RunChanged(self.job.id, self.run_.vm, self.run_.state, f"{self.step}: {text}"))


@asynccontextmanager
async def open_engine(
    host: HyperVHost,
    journal: Journal,
    *,
    credential_for: Callable[[str], GuestCredential],
    host_name: str = "sim",
    options: EngineOptions | None = None,
    on_event: Callable[[EngineEvent], None] | None = None,
) -> AsyncIterator[Engine]:
    """An engine with its journal writer and keeper running; both stop (flushed) on exit."""
    options = options or EngineOptions()
    writer = JournalWriter(
        journal,
        flush_records=options.flush_records,
        flush_interval=options.flush_interval,
        max_buffer=options.max_buffer,
    )
    await trio.to_thread.run_sync(journal.reconcile)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        engine = Engine(
            host,
            journal,
            writer,
            credential_for=credential_for,
            host_name=host_name,
            options=options,
            on_event=on_event,
        )
        nursery.start_soon(engine._keep)
        try:
            yield engine
        finally:
            nursery.cancel_scope.cancel()


__all__ = [
    "Engine",
    "EngineEvent",
    "EngineOptions",
    "JobResult",
    "JobSource",
    "RecordArrived",
    "RunChanged",
    "open_engine",
    "resolve_targets",
]
