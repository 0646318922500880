"""The agent's core: the engine, its jobs, their followers, and what the API may ask of them.

:class:`AgentService` is what the HTTP layer (:mod:`.app`) and the scheduler call; it knows
nothing of HTTP. Jobs run as tasks of the service's job nursery, beside (not inside) the request
that submitted them, so a client that disconnects never cancels a job. The host connection is
the :class:`~vmbusops.guestops.supervisor.HostSupervisor`'s: while it is being reopened, a
submission waits up to ``host_wait_seconds`` for it, then is refused with
:class:`~vmbusops.errors.HostDownError` before anything is verified or journaled. Journal reads go through
:class:`~vmbusops.engine.readers.JournalReaders` in worker threads, so they never wait behind the
engine's writer nor behind each other (a follower catching up a large job holds one connection of
several; a job's status, a small read, is made on the event loop's own connection). Followers are fed from the writer's commits (:meth:`AgentService.on_commit`): they see a
record once it is durable, numbered, and never before.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import trio

from vmbusops.api.auth import Principal, PrincipalStore
from vmbusops.api.broadcast import Broadcaster, JobEnded
from vmbusops.api.listing import MAX_SCAN, ListQuery
from vmbusops.api.metrics import AgentMetrics
from vmbusops.api.ratelimit import SubmitRateLimiter
from vmbusops.bundle.manifest import Manifest
from vmbusops.bundle.paths import accepted_bundles_dir
from vmbusops.bundle.verify import AcceptedBundle, read_unverified
from vmbusops.config import AgentConfig
from vmbusops.engine import Engine, JobSource, Journal, State, acceptance
from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import JobFilter, JobView, RunView, StoredRecord, VmRunView
from vmbusops.engine.readers import JournalReaders
from vmbusops.engine.targets import refuse_no_targets, resolve_on_host
from vmbusops.errors import JobStateError, VmbusOpsError
from vmbusops.guestops.supervisor import HostSupervisor
from vmbusops.home import private_dir

log = logging.getLogger("vmbusops.agent")
T = TypeVar("T")
#: Jobs whose targets a service keeps (the oldest read goes first): see
#: :meth:`AgentService.find_job_targets`.
TARGETS_KEPT = 1024


@dataclass(frozen=True, slots=True)
class TargetsOutOfScope(Exception):
    vms: tuple[str, ...]


class AgentStopping(Exception):
    pass


class NotActiveController(Exception):
    """A fleet controller on standby: it serves reads; submissions go to the active one."""

    def __init__(self, active_url: str | None) -> None:
        super().__init__(active_url)
        self.active_url = active_url


class AgentService:
    def __init__(
        self,
        *,
        engine: Engine,
        hosts: HostSupervisor,
        reader: Journal,
        readers: JournalReaders,
        jobs: trio.Nursery,
        principals: PrincipalStore,
        config: AgentConfig,
        broadcaster: Broadcaster,
        metrics: AgentMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.hosts = hosts
        #: The connection for the API's own writes (acceptance, cancel requests).
        self.reader = reader
        self.readers = readers
        #: Followers' catch-up pages are read and formatted on the event loop one at a time,
        #: whoever asks, each when the loop would rest (:func:`~vmbusops.api.idle.idle`): several
        #: woken by the same rest would run back to back before a status call that came meanwhile.
        #: The limiter is first come, first served.
        self.catch_up = trio.CapacityLimiter(1)
        self.jobs_nursery = jobs
        self.principals = principals
        self.config = config
        self.broadcaster = broadcaster
        self.metrics = metrics
        self.clock = clock
        self.limiter = SubmitRateLimiter(
            per_minute=config.submit_rate_per_minute, burst=config.submit_burst, clock=trio.current_time
        )
        self.ready = False
        self.stopping = False
        #: The jobs this service runs now (the fleet controller's: its active jobs). A follower of
        #: one of them waits for its commits on no timer, so a job leaves this set only through
        #: :meth:`job_left`, which wakes them.
        self.running: set[int] = set()
        self._idle = trio.Event()
        self._idle.set()
        self._accept_lock = trio.Lock()
        #: Interrupted jobs a request is resuming now (:meth:`resume_job`), until they run.
        self._resuming: set[int] = set()
        #: Set by the scheduler, if one runs: takes a scheduled bundle instead of running it now,
        #: and lists the schedules (each a JSON object with at least ``targets``).
        self.register_schedule: Callable[[AcceptedBundle], Awaitable[dict[str, Any]]] | None = None
        self.list_schedules: Callable[[], list[dict[str, Any]]] | None = None
        #: Set by the scheduler: forgets a schedule by name (whether there was one).
        self.remove_schedule: Callable[[str], bool] | None = None
        #: Job id -> the VMs it targets, as read once, and as JSON (see :meth:`find_job_targets`).
        self._targets: dict[int, tuple[list[str], str]] = {}

    # ------------------------------------------------------------------ engine events
    def on_commit(self, records: list[StoredRecord], events: list[RunChanged]) -> None:
        """A journal commit of the engine's writer: its records and state events, to the followers."""
        self.metrics.records.inc(len(records))
        self.broadcaster.publish_commit(records, events)

    # ------------------------------------------------------------------ reads
    async def read(self, fn: Callable[[Journal], T]) -> T:
        """``fn(journal)`` on a reading connection of its own, in a worker thread."""
        return await self.readers.run(fn)

    async def job_vms(self, job_id: int) -> list[str]:
        return list(await self.read(lambda j: j.run_ids(job_id)))

    async def find_job(self, job_id: int) -> tuple[JobView, list[RunView]] | None:
        """The job and its runs, whoever may see them; None if there is no such job. Callers
        answering a principal check :meth:`Principal.sees_job` and answer both cases alike."""

        def get(journal: Journal) -> tuple[JobView, list[RunView]] | None:
            found = journal.jobs(job_id=job_id, limit=1)
            if not found:
                return None
            return found[0], journal.runs(job_id)

        return await self.read(get)

    async def find_job_targets(self, job_id: int) -> tuple[JobView, list[str], str] | None:
        """The job and the VMs it targets, as a list and as JSON (what a status call needs), read
        on the event loop's own connection (:meth:`JournalReaders.run_here`), with no trip to a
        worker thread and back: each trip is a wait for the interpreter, which the engine's
        journal writer or another reader's thread may hold.

        A job's targets are read once and kept, and encoded once (the last :data:`TARGETS_KEPT`
        jobs'): its runs are made with it and never added to or renamed, and a job id is never
        used again (the journal numbers jobs with ``AUTOINCREMENT``), so a job pruned meanwhile is
        simply not found. A polled status then fetches the job's row and its runs' state counts,
        not its hundreds of runs' names: each row fetched gives up the interpreter, and while a
        worker thread holds it, every give-up costs the event loop a switch interval to get it
        back; and those names, most of the answer, are not encoded again."""
        kept = self._targets.get(job_id)

        def get(journal: Journal) -> tuple[JobView, list[str]] | None:
            found = journal.jobs(job_id=job_id, limit=1)
            if not found:
                return None
            return found[0], kept[0] if kept is not None else list(journal.run_ids(job_id))

        found = await self.readers.run_here(get)
        if found is None:
            return None
        if kept is None:
            if len(self._targets) >= TARGETS_KEPT:
                del self._targets[next(iter(self._targets))]
            kept = self._targets[job_id] = (found[1], json.dumps(found[1], ensure_ascii=False, separators=(",", ":")))
        return found[0], kept[0], kept[1]

    async def visible_jobs(self, who: Principal, query: ListQuery) -> tuple[list[JobView], int | None]:
        """A page of the jobs ``who`` may see that ``query`` picks, and the cursor of the next
        page (None at the end). At most :data:`.listing.MAX_SCAN` jobs are read per page: past
        them it ends early, with a cursor to continue from."""
        where = JobFilter(
            vm=query.vm, state=query.state, since=query.since, submitter=query.submitter, before=query.cursor
        )

        def get(journal: Journal) -> tuple[list[JobView], int | None]:
            out: list[JobView] = []
            before = query.cursor
            scanned = 0
            while scanned < MAX_SCAN:
                size = min(200, MAX_SCAN - scanned)
                batch = journal.jobs(limit=size, where=replace(where, before=before))
                for job in batch:
                    scanned += 1
                    before = job.id
                    if who.sees_job(list(journal.run_ids(job.id))):
                        out.append(job)
                        if len(out) == query.limit:
                            return out, job.id
                if len(batch) < size:
                    return out, None
            return out, before

        return await self.read(get)

    async def visible_vm_runs(self, who: Principal, vm: str, query: ListQuery) -> tuple[list[VmRunView], int | None]:
        """A page of ``vm``'s runs across the jobs ``who`` may see, newest job first, and the next
        page's cursor (a job id), as :meth:`visible_jobs`."""

        def get(journal: Journal) -> tuple[list[VmRunView], int | None]:
            out: list[VmRunView] = []
            before = query.cursor
            scanned = 0
            while scanned < MAX_SCAN:
                size = min(200, MAX_SCAN - scanned)
                batch = journal.vm_history(vm, limit=size, since=query.since, before=before, state=query.state)
                for entry in batch:
                    scanned += 1
                    before = entry.run.job_id
                    if who.sees_job(list(journal.run_ids(entry.run.job_id))):
                        out.append(entry)
                        if len(out) == query.limit:
                            return out, entry.run.job_id
                if len(batch) < size:
                    return out, None
            return out, before

        return await self.read(get)

    # ------------------------------------------------------------------ submit
    async def check_targets(self, manifest: Manifest, who: Principal) -> list[str]:
        """The VMs the bundle's targets select that ``who`` may run on. A name or glob of the
        bundle's ``vms`` reaching outside the caller's scope refuses the bundle; VMs that groups or
        tags alone select (no ``vms``) outside it are dropped unnamed: they are not the caller's
        to run on, nor to learn of. The signer's scope bounds the rest when the job starts."""
        host = await self.hosts.wait_current(self.config.host_wait_seconds)
        targets = await resolve_on_host(manifest, host)
        if not manifest.targets.vms:
            targets = [vm for vm in targets if who.covers_vm(vm)]
            if not targets:
                raise TargetsOutOfScope(())
        if any(not who.covers_vm(vm) for vm in targets) or (not targets and not who.sees_all_vms()):
            # Name the manifest's own patterns that reached outside, never the host's VMs: a
            # tenant's glob must not list another tenant's VM names back to it.
            raise TargetsOutOfScope(
                tuple(p for p in manifest.targets.vms if _reaches_outside(p, targets, who))
            )
        refuse_no_targets(manifest, targets)  # only now: a tenant learns nothing of VMs outside its scope
        return targets

    async def vm_listing(self, who: Principal) -> list[dict[str, Any]]:
        """The VMs ``who`` may see, as ``GET /v1/vms`` lists them."""
        host = await self.hosts.wait_current(self.config.host_wait_seconds)
        return [
            {"vm": v.name, "id": v.id, "state": v.state, "heartbeat": v.heartbeat,
             "guest_services": v.guest_services, "uptime": v.uptime}
            for v in await host.list_vms() if who.covers_vm(v.name)
        ]  # fmt: skip

    async def receive_bundle(self, chunks: AsyncIterator[bytes], limit: int) -> Path:
        """The request body in a private file; :class:`OverflowError` past ``limit`` bytes."""

        def make() -> Path:
            incoming = accepted_bundles_dir().parent / "incoming"
            private_dir(incoming)
            fd, name = tempfile.mkstemp(prefix="upload-", suffix=".vmb", dir=incoming)
            os.close(fd)
            return Path(name)

        path = await trio.to_thread.run_sync(make)
        try:
            async with await trio.open_file(path, "wb") as out:
                size = 0
                async for chunk in chunks:
                    size += len(chunk)
                    _check_size(size, limit)
                    await out.write(chunk)
        except BaseException:
            await trio.Path(path).unlink(missing_ok=True)
            raise
        return path

    async def accept(self, path: Path, who: Principal) -> tuple[AcceptedBundle, list[str]]:
        """Verify exactly as ``vmbusops run`` does; before that, refuse targets outside ``who``'s
        scope and a credential reference this host cannot resolve (from the unverified manifest:
        refusing early is safe, and a bundle refused so is not burnt in the replay store); asking
        the host for its VMs shows it answers. Returns the bundle, reserved for this process until
        :meth:`settle` (see :mod:`vmbusops.engine.acceptance`), and the VMs it targets, resolved
        once here for the job to run on."""
        _, unverified = await trio.to_thread.run_sync(read_unverified, path)
        targets = await self.check_targets(unverified, who)
        await trio.to_thread.run_sync(self.engine.credential_for, unverified.credential)
        async with self._accept_lock:
            bundle = await trio.to_thread.run_sync(acceptance.accept, path, self.reader)
        if bundle.manifest.targets != unverified.targets:  # the same file, so never; but be sure
            try:
                targets = await self.check_targets(bundle.manifest, who)
            except BaseException:
                await self.settle(bundle, made=False)
                raise
        return bundle, targets

    async def settle(self, bundle: AcceptedBundle, *, made: bool) -> None:
        """The bundle's job or schedule was ``made``: its acceptance stands; or it was not: the
        bundle is given back (it may be submitted again). Shielded: a cancelled request still
        settles what it reserved."""
        settle = acceptance.confirm if made else acceptance.release
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(settle, bundle, self.reader)

    async def start_job(self, source: JobSource, *, origin: str) -> int:
        """Start a job in the job nursery; returns its id once it is in the journal."""
        if self.stopping:
            raise AgentStopping()
        return int(await self.jobs_nursery.start(self._job_task, source, origin))

    async def resume_job(self, job_id: int, *, origin: str) -> None:
        """Resume an interrupted job in the job nursery, as ``vmbusops jobs resume`` would in its
        own process (:meth:`~vmbusops.engine.Engine.resume_job`: its bundle judged again first);
        returns once it is taken over and its bundle passed. Raises what refused it: a
        :class:`JobStateError` (not interrupted, owned by a live process, a fleet run, being
        resumed here already), or the :class:`BundleError` that ended it failed, nothing run."""
        if self.stopping:
            raise AgentStopping()
        if job_id in self.running or job_id in self._resuming:
            raise JobStateError(f"job {job_id} is running on this agent; only an interrupted job can be resumed")
        self._resuming.add(job_id)  # before any wait: a second request for it is refused above
        try:
            await self.hosts.wait_current(self.config.host_wait_seconds)
            await self.jobs_nursery.start(self._job_task, job_id, origin)
        finally:
            self._resuming.discard(job_id)

    async def _job_task(self, what: JobSource | int, origin: str, *, task_status: trio.TaskStatus[int]) -> None:
        """Run ``what``: a new job's source, or the id of an interrupted job to resume."""
        job_id = 0

        def created(new_id: int) -> None:
            nonlocal job_id
            job_id = new_id
            if not self.running:
                self._idle = trio.Event()
            self.running.add(new_id)
            self.metrics.jobs_running.set(len(self.running))
            task_status.started(new_id)

        try:
            if isinstance(what, int):
                result = await self.engine.resume_job(what, recheck=acceptance.recheck, on_resumed=created)
            else:
                result = await self.engine.run_job(what, on_created=created)
            log.info(
                "job finished",
                extra={
                    "event": "job-finished",
                    "job": result.job_id,
                    "state": result.state.value,
                    "origin": origin,
                },
            )
            self.broadcaster.publish(JobEnded(result.job_id, result.state))
            self.metrics.runs_ended(await self.read(lambda j: j.runs(result.job_id)))
        except VmbusOpsError as exc:
            if not job_id:
                raise
            log.warning("job failed", extra={"event": "job-failed", "job": job_id, "error": exc.message})
            self.broadcaster.publish(JobEnded(job_id, State.FAILED))
        finally:
            if job_id:
                self.job_left(job_id)
                if not self.running:
                    self._idle.set()

    def job_left(self, job_id: int) -> None:
        """The job no longer runs here (ended, or stopped with the agent): its followers wake
        and see to it (:class:`~vmbusops.api.follow.JobFollower` waits on no timer meanwhile)."""
        self.running.discard(job_id)
        self.metrics.jobs_running.set(len(self.running))
        self.broadcaster.wake(job_id)

    async def wait_idle(self) -> None:
        while self.running:
            await self._idle.wait()

    # ------------------------------------------------------------------ cancel
    async def cancel(self, job_id: int, vm: str | None) -> int:
        """Durable request in the journal (whoever owns the job acts on it), and at once if it
        runs here. Returns how many jobs/runs were marked."""
        marked = await trio.to_thread.run_sync(self.reader.request_cancel, job_id, vm)
        self.engine.cancel(job_id, vm)
        return int(marked)


def _reaches_outside(pattern: str, targets: list[str], who: Principal) -> bool:
    folded = pattern.casefold()
    matched = [vm for vm in targets if fnmatch.fnmatchcase(vm.casefold(), folded)]
    return not targets or any(not who.covers_vm(vm) for vm in matched)


def _check_size(size: int, limit: int) -> None:
    if size > limit:
        raise OverflowError(size)
