"""The job engine: a job's runs, their steps, rate control, retries, cancellation, resumption.

Theory of operation
-------------------
:func:`open_engine` gives an :class:`Engine` bound to one host (one connection, or in the agent a
:class:`~vmbusops.guestops.supervisor.HostSupervisor` that reopens it; a job keeps the connection
it started on), one journal and one nursery, in
which two background tasks live: the journal writer (:mod:`.writer`) and the *keeper*, which every
``heartbeat_interval`` refreshes the owner's heartbeat on its jobs and VM leases and polls the
journal for cancel requests (``vmbusops jobs cancel`` only writes a flag; the owner acts on it).

The engine is the trio side of the work; what a job and its runs *are* lives in the sans-IO
machines of :mod:`.machine`, which decide every journal change and every watcher event; each step
kind is carried out by its executor (:mod:`.executors`). Here is only *when* things happen.

:meth:`Engine.run_job` resolves the bundle's targets against the host's VMs (unless the submission
already did) and bounds them by the signer's scope (:mod:`.targets`), writes a pending job with
one pending run per VM (and the VMs the scope left out), and runs every run as a task of its
own. :meth:`Engine.run_fleet_run` runs one run of a fleet job the same way, as a local job with
one run that goes on from where the fleet run stands (steps done on another host are not run
again; one running there is resumed as after a crash). A run goes through:

1. *delivery*: take the VM's lease (:mod:`.leases`: no other job and no other process touches the
   VM meanwhile), then a slot of the job's max concurrency; while it waits it is ``delayed``. Not
   started by the job's delivery deadline: ``delivery-timed-out``. Once it holds a slot it checks
   max errors: exceeded means ``skipped``, unless it is a resumed run whose first step had begun.
2. *execution*, under the run's execution timeout: the steps in order, as units planned by
   :mod:`.plan` (guest batches, host steps). Each step has its own timeout and retry policy:
   transient errors (``VmbusOpsError.transient``) wait out the backoff (``delayed``) and try
   again; anything else fails the step and the run at once with the real message. Guest
   invocations also hold a slot of the engine's PowerShell Direct session limit, across its jobs
   (``EngineOptions.max_sessions``, from ``[host] max_sessions``).

Cancellation is a cancel scope per run: leaving a guest pipeline's context sends the PSRP stop
signal and waits for the pipeline to end, so the guest command stops; the journal writes that
follow are shielded. Every change is queued to the journal behind the records that preceded it;
the end of each step is a commit point.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from vmbusops.bundle.manifest import Manifest, ResumePolicy
from vmbusops.config import DEFAULT_MAX_SESSIONS
from vmbusops.credentials import GuestCredential
from vmbusops.engine.context import RunContext, WaitReady, emit
from vmbusops.engine.events import EngineEvent, JobResult
from vmbusops.engine.executors import StepFailed, copied_files, executor_of
from vmbusops.engine.guard import RolledBack, RunGuards, is_open, rolls_back
from vmbusops.engine.journal import Journal
from vmbusops.engine.leases import VmLeases
from vmbusops.engine.machine import JobMachine, Output, RunMachine, StepInfo
from vmbusops.engine.plan import GuestBatch, plan_units
from vmbusops.engine.run_start import RunStart
from vmbusops.engine.source import FLEET_SOURCE_PREFIX, JobSource
from vmbusops.engine.staged import JobStaging
from vmbusops.engine.states import Event, State
from vmbusops.engine.writer import JournalWriter
from vmbusops.errors import BundleError, JobStateError, JournalError, VmbusOpsError
from vmbusops.guestops.host import HyperVHost
from vmbusops.guestops.supervisor import HostSupervisor
from vmbusops.owner import Owner, current_owner

#: How many manifests' JSON texts an engine keeps (:meth:`Engine._manifest_text`).
_MANIFEST_TEXTS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineOptions:
    #: PowerShell Direct sessions this engine opens at once, across all its jobs (``[host]
    #: max_sessions``; another process's engine has its own); a job's max concurrency is a limit under it.
    max_sessions: int = DEFAULT_MAX_SESSIONS
    flush_records: int = 1000
    #: The longest a record waits in memory before it is committed. An API follower sees a
    #: record when it is committed (followers are fed from commits), so while any follows, the
    #: writer commits at least every ``followed_flush_interval``; otherwise larger, cheaper
    #: batches (a commit's cost per record falls with its size). The agent's followers send
    #: once per such interval, after the first commit that ends it (the writer's ``on_tick``),
    #: at most one chunk each.
    flush_interval: float = 0.05
    followed_flush_interval: float = 0.03
    max_buffer: int = 20_000
    heartbeat_interval: float = 1.0
    #: How often a waiting run looks at a VM lease held by another process.
    lease_poll_interval: float = 0.25
    excerpt_lines: int = 10
    wait_ready_timeout: float = 300.0
    wait_ready_poll: float = 1.0


@dataclass(eq=False)
class _Job:
    machine: JobMachine
    #: The host connection the job started on; all its runs use it (see :attr:`Engine.host`).
    host: HyperVHost
    source: JobSource
    credential: GuestCredential
    staging: JobStaging
    limiter: trio.CapacityLimiter
    #: Per run id: its cancel scope, and whether someone asked to cancel it.
    scopes: dict[int, trio.CancelScope]
    cancelled: set[int]
    #: When a run still waiting for its lease or slot times out (trio's clock): the delivery
    #: timeout from the job's start here, and never past the source's ``start_by``...
    delivery_deadline: float = 0.0
    #: ... but for a resumed run that had begun before (it is not starting now): the timeout alone.
    resumed_deadline: float = 0.0

    @property
    def runs(self) -> list[RunMachine]:
        return self.machine.runs


class Engine:
    """Runs jobs on one host, journaling everything. Make one with :func:`open_engine`."""

    def __init__(
        self,
        host: HyperVHost | HostSupervisor,
        journal: Journal,
        writer: JournalWriter,
        *,
        credential_for: Callable[[str], GuestCredential],
        host_name: str,
        options: EngineOptions,
        on_event: Callable[[EngineEvent], None] | None,
    ) -> None:
        self._host = host
        self.journal = journal
        self.writer = writer
        self.credential_for = credential_for
        self.host_name = host_name
        self.options = options
        self.on_event = on_event
        self.owner: Owner = current_owner()
        self.sessions = trio.CapacityLimiter(max(1, options.max_sessions))
        self.leases = VmLeases(journal, writer, self.owner, poll_interval=options.lease_poll_interval)
        self._jobs: dict[int, _Job] = {}
        #: Called once a run's end is committed (the agent and `vmbusops run` write its signed
        #: receipt there, :func:`vmbusops.receipts.receipt_hook`): host, job id, run id, VM.
        self.after_run: Callable[[HyperVHost, int, int, str], Awaitable[None]] | None = None
        #: The JSON text of the last few manifests a job was made of, by identity: a fleet agent
        #: makes a local job for each run of one bundle, and the text is the same every time.
        self._manifest_texts: dict[int, tuple[Manifest, str]] = {}

    @property
    def host(self) -> HyperVHost:
        """The host to start new work on. Under a :class:`HostSupervisor` that is the current
        connection, or :class:`~vmbusops.errors.HostDownError` while it is being reopened. A job
        takes it once, before anything is journaled, and keeps it: its runs (and its staged
        files) belong to that connection and fail with its error if it dies."""
        if isinstance(self._host, HostSupervisor):
            return self._host.current()
        return self._host

    # ------------------------------------------------------------------ jobs
    async def run_job(
        self, source: JobSource, *, on_created: Callable[[int], None] | None = None
    ) -> JobResult:
        """Resolve the targets (unless the submission did), journal a new job, run it to its end."""
        manifest = source.manifest
        credential = self.credential_for(manifest.credential)
        host = self.host
        host.refuse_steps((s.name, s.kind.value) for s in manifest.steps)
        source = await source.resolved_on(host)  # the targets, bounded by the signer's scope
        vms = list(source.targets or ())
        job_id, run_ids = await self._create_job(source, vms)
        if on_created is not None:
            on_created(job_id)
        runs = [self._run_machine(job_id, source, run_ids[vm], vm) for vm in vms]
        return await self._execute(self._job(job_id, host, source, credential, runs))

    async def run_fleet_run(
        self,
        source: JobSource,
        vm: str,
        start: RunStart | None,
        *,
        on_created: Callable[[int], None] | None = None,
    ) -> JobResult:
        """Run one run of a fleet job here, as a local job with one run for ``vm``, going on from
        where the fleet run stands (``start``; None: from the beginning).

        Its steps that succeeded elsewhere stay succeeded and are not run again; one that was
        running there is resumed or abandoned by the bundle's resume rules exactly as after a
        crash (:meth:`.machine.RunMachine.carry_on`); its records are numbered on from
        ``start.next_seq``. That preset is committed to the journal before the run starts, and
        the run then goes as any other (leases, ``max_sessions``, timeouts, :meth:`cancel`).
        A ``start`` that does not fit the bundle's steps raises ValueError before anything is
        journaled; ``on_created`` is called with the local job's id once it is journaled.
        """
        manifest = source.manifest
        if start is not None:
            start.check(len(manifest.steps))
        source = dataclasses.replace(source, targets=(vm,))
        credential = self.credential_for(manifest.credential)
        host = self.host
        job_id, run_ids = await self._create_job(source, [vm])
        if on_created is not None:
            on_created(job_id)
        run = self._run_machine(job_id, source, run_ids[vm], vm)
        if start is not None:
            self._emit(
                run.carry_on(
                    start.step_states,
                    start.attempts,
                    start.next_seq,
                    abandon=manifest.execution.resume is ResumePolicy.ABANDON,
                    cause="the run left its previous host while it ran",
                )
            )
            await self.writer.commit()
        return await self._execute(self._job(job_id, host, source, credential, [run]))

    def _manifest_text(self, manifest: Manifest) -> str:
        kept = self._manifest_texts.get(id(manifest))
        if kept is not None and kept[0] is manifest:
            return kept[1]
        text = manifest.to_json().decode("utf-8")
        if len(self._manifest_texts) >= _MANIFEST_TEXTS:
            del self._manifest_texts[next(iter(self._manifest_texts))]
        self._manifest_texts[id(manifest)] = (manifest, text)  # the reference keeps the id unique
        return text

    async def _create_job(self, source: JobSource, vms: list[str]) -> tuple[int, dict[str, int]]:
        """Journal a pending job of ``source`` with a pending run per VM; its id and run ids."""
        manifest = source.manifest
        return await self.writer.call(
            lambda: self.journal.create_job(
                bundle_name=manifest.name,
                bundle_version=manifest.version,
                bundle_id=manifest.id,
                source=source.source,
                manifest=self._manifest_text(manifest),
                bundle_dir=str(source.directory) if source.directory is not None else None,
                enable_guest_services=source.enable_guest_services,
                envelope=source.envelope.decode("utf-8") if source.envelope is not None else None,
                submitter=source.submitter,
                start_by=source.start_by,
                host=self.host_name,
                vms=vms,
                left_out=source.left_out,
                steps=[(s.name, s.kind.value) for s in manifest.steps],
                owner=self.owner,
                now=time.time(),
            )
        )

    async def resume_job(
        self,
        job_id: int,
        source: JobSource | None = None,
        *,
        recheck: Callable[[JobSource], object] | None,
        on_resumed: Callable[[int], None] | None = None,
    ) -> JobResult:
        """Take over an interrupted job and finish it according to its bundle's resume policy.

        ``on_resumed`` is called once the job is taken over and its bundle passed, before it runs.

        ``recheck`` judges the job's bundle again first (in a worker thread; the callers pass
        :func:`.acceptance.recheck`: today's trust policy, scope, expiry, the kept files). If it
        raises a :class:`BundleError`, nothing runs: the job and its interrupted runs end failed
        with the reason in the journal, and the error is raised. ``None`` only where the bundle's
        trust is not in question (tests of the engine alone).
        """
        host = self.host
        await self.writer.call(self.journal.reconcile)
        view = await self.writer.call(self.journal.job, job_id)
        if view.source.startswith(FLEET_SOURCE_PREFIX):
            raise JobStateError(
                f"job {job_id} ran a fleet run ({view.source}); the fleet's controller dispatches it again",
                hint="a fleet run is not resumed on its host; see it on the controller",
            )
        if view.stored_state is not State.INTERRUPTED:
            raise JobStateError(
                f"job {job_id} is {view.state.value}; only an interrupted job can be resumed",
                hint="see it with: vmbusops jobs show " + str(job_id),
            )
        if view.host != self.host_name:
            # Its runs are VMs of that host: the same names on another host are other machines.
            raise JobStateError(
                f"job {job_id} ran on host {view.host!r}, not on {self.host_name!r}; it is resumed on its own host",
                hint=f"resume it there: vmbusops jobs resume {job_id} --host {view.host}",
            )
        await self.writer.call(self.journal.claim_job, job_id, self.owner, time.time())
        source = source if source is not None else JobSource.from_journal(view)
        refused: BundleError | None = None
        if recheck is not None:
            try:
                await trio.to_thread.run_sync(recheck, source)
            except BundleError as exc:
                refused = exc
        if refused is not None:
            await self._refuse_resume(job_id, source, f"not resumed: {refused.message}")
            raise refused
        credential = self.credential_for(source.manifest.credential)
        abandon = source.manifest.execution.resume is ResumePolicy.ABANDON
        runs = await self._stored_runs(job_id, source)
        # A run with a checkpoint open resumes whatever its policy says: its guard settles it
        # (restores, removes) when it starts again (see .guard).
        rows = {r.id: await self.writer.call(self.journal.checkpoints, r.id) for r in runs}
        guarded = {run_id for run_id, checkpoints in rows.items() if any(map(is_open, checkpoints))}
        for run in runs:
            if run.id in guarded:
                run.steps = [dataclasses.replace(s, resumable=True) for s in run.steps]
        outputs = [
            out
            for run in runs
            for out in run.resume(abandon=abandon and run.id not in guarded, rolling_back=rolls_back(rows[run.id]))
        ]
        job = self._job(job_id, host, source, credential, runs)
        job.machine.state = State.INTERRUPTED
        self._emit([*outputs, *job.machine.resume()])
        await self.writer.commit()
        if on_resumed is not None:
            on_resumed(job_id)
        return await self._execute(job)

    async def _refuse_resume(self, job_id: int, source: JobSource, message: str) -> None:
        """The interrupted job's bundle failed verification again: end it, and its runs, with why."""
        runs = await self._stored_runs(job_id, source)
        outputs = [out for run in runs for out in run.refuse(message)]
        job = JobMachine(id=job_id, runs=runs, max_errors=0, state=State.INTERRUPTED)
        self._emit([*outputs, *job.refuse(message)])
        await self.writer.commit()

    async def _stored_runs(self, job_id: int, source: JobSource) -> list[RunMachine]:
        """The job's runs as the journal left them (to resume or refuse an interrupted job)."""
        runs: list[RunMachine] = []
        for rv in await self.writer.call(self.journal.runs, job_id):
            steps = await self.writer.call(self.journal.steps, rv.id)
            run = self._run_machine(job_id, source, rv.id, rv.vm)
            run.state = rv.stored_state
            run.step_states = [s.state for s in steps]
            run.attempts = [s.attempts for s in steps]
            run.next_seq = await self.writer.call(self.journal.next_seq, rv.id)
            run.error = rv.error
            runs.append(run)
        return runs

    def _run_machine(self, job_id: int, source: JobSource, run_id: int, vm: str) -> RunMachine:
        restart = source.manifest.execution.resume is ResumePolicy.RESTART
        steps = [
            StepInfo(s.name, resumable=restart or s.idempotent or executor_of(s).always_resumable)
            for s in source.manifest.steps
        ]
        return RunMachine(
            job_id=job_id, id=run_id, vm=vm, steps=steps, excerpt_lines=self.options.excerpt_lines
        )

    def _job(
        self,
        job_id: int,
        host: HyperVHost,
        source: JobSource,
        credential: GuestCredential,
        runs: list[RunMachine],
    ) -> _Job:
        execution = source.manifest.execution
        total = len(runs)
        max_errors = (
            execution.max_errors.of(total)
            if execution.max_errors.count is None
            else execution.max_errors.count
        )
        return _Job(
            machine=JobMachine(id=job_id, runs=runs, max_errors=max_errors),
            host=host,
            source=source,
            credential=credential,
            staging=JobStaging(host, job_id, source, copied_files(source.manifest)),
            limiter=trio.CapacityLimiter(max(1, execution.max_concurrency.of(total))),
            scopes={run.id: trio.CancelScope() for run in runs},
            cancelled=set(),
        )

    async def _execute(self, job: _Job) -> JobResult:
        job_id = job.machine.id
        self._jobs[job_id] = job
        try:
            # From now, resumed or not; a schedule tick's job never past its cut-off (start_by).
            wait = job.source.manifest.execution.delivery_timeout_seconds
            job.resumed_deadline = trio.current_time() + wait
            if job.source.start_by is not None:
                wait = min(wait, job.source.start_by - time.time())
            job.delivery_deadline = trio.current_time() + wait
            self._emit(job.machine.start())
            await self.writer.commit()
            # The job's staged files (remote hosts) outlive every run and go when the job ends.
            try:
                async with job.staging, trio.open_nursery() as nursery:
                    for run in job.runs:
                        if run.state is State.PENDING:
                            nursery.start_soon(self._run_target, job, run)
            except BaseException:
                # This process stops under the job (Ctrl-C, SIGTERM, the agent stopping; the
                # cancellation may come wrapped in the nurseries' groups): it is interrupted now,
                # as it stands, for `jobs resume`; readers see when it stopped.
                if cancelled_here() and self.writer.failure is None:
                    with contextlib.suppress(JournalError):  # unwritable: readers still say interrupted
                        await self.writer.call(self.journal.interrupt, [job_id], time.time())
                raise
            self._emit(job.machine.finish())
            await self.writer.commit()
        finally:
            del self._jobs[job_id]
        return JobResult(
            job_id=job_id,
            state=job.machine.state,
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
            job.machine.cancel_requested = True
        for run in job.runs:
            if vm is None or run.vm.casefold() == vm.casefold():
                self._cancel_run(job, run.id)

    def _cancel_run(self, job: _Job, run_id: int) -> None:
        job.cancelled.add(run_id)
        job.scopes[run_id].cancel()

    def _emit(self, outputs: list[Output]) -> None:
        emit(self.writer, self.on_event, outputs)

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
                if job is not None and not job.machine.cancel_requested:
                    self.cancel(job_id)
            for job in list(self._jobs.values()):
                for run in job.runs:
                    if run.id in runs and run.id not in job.cancelled:
                        self._cancel_run(job, run.id)

    # ------------------------------------------------------------------ one run
    async def _run_target(self, job: _Job, run: RunMachine) -> None:
        ctx = RunContext(
            machine=run,
            host=job.host,
            source=job.source,
            credential=job.credential,
            staging=job.staging,
            writer=self.writer,
            sessions=self.sessions,
            wait=WaitReady(timeout=self.options.wait_ready_timeout, poll=self.options.wait_ready_poll),
            on_event=self.on_event,
        )
        scope = job.scopes[run.id]
        lease = False
        slot = False
        try:
            with scope:
                begun = any(run.attempts)  # resumed after its first step had started: not starting now
                with trio.move_on_at(job.resumed_deadline if begun else job.delivery_deadline) as delivery:
                    await self.leases.take(run.vm, run.id, waiting=lambda: ctx.emit(run.wait()))
                    lease = True
                    if job.limiter.available_tokens == 0:
                        ctx.emit(run.wait())
                    await job.limiter.acquire_on_behalf_of(run)
                    slot = True
                if delivery.cancelled_caught:
                    timeout = job.source.manifest.execution.delivery_timeout_seconds
                    self._end(job, ctx, run.delivery_timed_out(timeout, start_by=job.source.start_by))
                    return
                if job.machine.over_max_errors and not begun:
                    # Max errors keeps runs from starting; one resumed under way is not starting,
                    # and goes on as it would have had its process lived.
                    self._end(job, ctx, run.skip(job.machine.errors, job.machine.max_errors))
                    return
                await self._execute_run(job, ctx)
            if scope.cancelled_caught and not run.state.terminal:
                self._end(job, ctx, run.cancel())
        except VmbusOpsError as exc:
            if exc is self.writer.failure:
                # The journal cannot be written: the run stops as it is there (interrupted once
                # this process is gone), not failed by a state that could never be written.
                raise
            # Something outside any step (the journal, the host connection): the run fails with it.
            if not run.state.terminal:
                self._end(job, ctx, run.fail_outside_steps(str(exc), exc.code))
        finally:
            with trio.CancelScope(shield=True):
                if slot:
                    job.limiter.release_on_behalf_of(run)
                if lease:
                    await self.leases.release(run.vm, run.id)
                await self.writer.commit()
                if self.after_run is not None and run.state.terminal and self.writer.failure is None:
                    await self.after_run(job.host, job.machine.id, run.id, run.vm)

    def _end(self, job: _Job, ctx: RunContext, outputs: list[Output]) -> None:
        ctx.emit(outputs)
        job.machine.run_ended(ctx.machine)

    async def _execute_run(self, job: _Job, ctx: RunContext) -> None:
        run = ctx.machine
        # Durable with the first step's start (or the writer's next batch, if sooner): nothing
        # has happened in the guest until then, and a run that never got further resumes the same.
        ctx.emit(run.start())
        timeout = job.source.manifest.execution.target_timeout_seconds
        with trio.move_on_after(timeout) as scope:
            try:
                await self._execute_steps(ctx, await self._guards(job, ctx, scope, timeout))
            except StepFailed as failed:
                self._end(job, ctx, run.fail(failed.event, failed.message, failed.code))
                return
            except RolledBack as rolled:
                self._end(job, ctx, run.roll_back(rolled.message, rolled.event))
                return
        if scope.cancelled_caught:
            if not run.state.terminal:  # a guard that rolled back has ended it
                self._end(job, ctx, run.execution_timed_out(timeout))
            return
        self._end(job, ctx, run.succeed())

    async def _guards(self, job: _Job, ctx: RunContext, scope: trio.CancelScope, timeout: float) -> RunGuards | None:
        """The run's checkpoint guards, with what the journal says of them, settled after a crash."""
        manifest = ctx.source.manifest
        if manifest.guard is None:
            return None
        rows = await self.writer.call(self.journal.checkpoints, ctx.machine.id)

        def why_cancelled() -> tuple[str, Event]:
            if ctx.machine.id in job.cancelled:
                return "cancelled", Event.CANCEL
            if scope.cancel_called:
                return f"the run did not finish within its execution timeout ({timeout:g}s)", Event.EXECUTION_TIMEOUT
            return "the agent stopped under the run", Event.CANCEL

        guards = RunGuards(
            ctx, manifest.guard, manifest.guarded_spans(), {r.span: r for r in rows},
            end=lambda outputs: self._end(job, ctx, outputs), why_cancelled=why_cancelled,
        )  # fmt: skip
        await guards.settle()
        return guards

    async def _execute_steps(self, ctx: RunContext, guards: RunGuards | None = None, last: int | None = None) -> None:
        """The run's steps from the first not done (to ``last``), each guarded span under its guard."""
        steps = ctx.steps
        while (index := ctx.machine.next_step()) is not None and (last is None or index <= last):
            span = guards.span_of(index) if guards is not None and last is None else None
            if guards is not None and span is not None:
                await guards.run_span(span, functools.partial(self._execute_steps, ctx, guards, span.last))
                continue
            limit = guards.limit(index) if guards is not None else len(steps)
            unit = plan_units(steps[:limit], index, ctx.source.script_of)[0]
            indices = unit.steps if isinstance(unit, GuestBatch) else (unit.index,)
            await executor_of(steps[index]).run(ctx, indices)


@asynccontextmanager
async def open_engine(
    host: HyperVHost | HostSupervisor,
    journal: Journal,
    *,
    credential_for: Callable[[str], GuestCredential],
    host_name: str = "sim",
    options: EngineOptions | None = None,
    on_event: Callable[[EngineEvent], None] | None = None,
) -> AsyncIterator[Engine]:
    """An engine with its journal writer and keeper running; both stop (flushed) on exit.

    ``host`` is one connection (the command line), or a :class:`HostSupervisor` that reopens it
    when it dies (the agent)."""
    options = options or EngineOptions()
    writer = JournalWriter(
        journal,
        flush_records=options.flush_records,
        flush_interval=options.flush_interval,
        followed_interval=options.followed_flush_interval,
        max_buffer=options.max_buffer,
    )
    await trio.to_thread.run_sync(journal.reconcile)
    try:
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
    except BaseExceptionGroup as group:
        # Once the journal cannot be written, every task that writes fails the same way (the
        # writer refuses all later writes): one cause, said once.
        failure = writer.failure
        if failure is not None and _only_journal_errors(group):
            raise failure from failure.__cause__
        raise


def cancelled_here() -> bool:
    """Whether the calling task is being cancelled (its effective deadline has passed)."""
    return trio.current_effective_deadline() == -math.inf


def _only_journal_errors(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_journal_errors(e) for e in exc.exceptions)
    return isinstance(exc, JournalError)


__all__ = ["Engine", "EngineOptions", "cancelled_here", "open_engine"]
