"""The fleet worker inside ``vmbusops agent --fleet``: :class:`FleetAgent`.

Theory of operation
-------------------
The agent process keeps its engine, journal, jobs nursery and HTTP API; the fleet worker adds
three tasks beside them (see ``docs/adr/0007-fleet.md`` for the whole fleet):

- **presence** (:mod:`.agent_presence`): every ``heartbeat`` the host entry is put (host, cluster,
  this process's boot id, a sequence number, the host's VMs as last listed, ``max_sessions``);
  apart from the beats, the VMs are listed (``Get-VM``, which is not free on a host with many
  VMs) every ``list_every`` (``[fleet] list_seconds``, 5 s; at most ``host_ttl / 2``, never more
  often than the beats), and at once when a run's VM is found gone (before its ``moved`` fact, so
  the beats after it no longer claim the VM); the placement of each VM the host lists is written
  when it changed (compare-and-set), so a host slow to list never delays a beat. A finished run's
  receipt takes its VM's id from that listing too (:class:`.agent_presence.LastListing`), rather
  than listing again as runs end. If no beat could be written for ``host_ttl``, the agent has
  lost the broker: the controller will judge this host dead and dispatch its runs elsewhere, so
  every fleet run here is cancelled now (their later facts carry the old epoch, which the
  controller's projection fences off). Beats go on being tried, and resume once the broker
  answers.
- **work**: the host's durable pull consumer is read in order. A ``dispatch`` is taken once per
  (job, run, epoch) (:class:`.agent_store.FleetStore`); its bundle is fetched by digest, hashed
  again and verified with this host's own trust policy (once per digest and policy text, the
  runs of a job sharing it), and judged for each run on scope by the run's VM name and expiry
  (:mod:`.agent_bundles`); replay: a bundle id serves every run of one fleet job and never a
  second one (:mod:`.agent_take`; the host's replay store also records it, so ``vmbusops run``
  of that bundle here is refused, and a bundle run here before is refused to the fleet). A
  refusal is published as a ``refused`` fact and nothing runs. Otherwise the local job is created
  (one run, going on from the dispatch's step states, or fresh when nothing of it ran anywhere:
  :meth:`Engine.run_fleet_run`), the message is acked, and the run goes in the agent's jobs
  nursery under the agent's own ``max_sessions``. A ``cancel`` cancels
  that local run. A message that does not parse is logged in one line and terminated.
- **forwarding** (:mod:`.agent_batches`): the journal writer's ``on_applied`` tap turns each
  commit into one ``batch`` per fleet run it touched, queued in order; one task publishes them in
  that order at the writer's ticks (its ``on_tick``, every ``flush_interval``: the commits of its
  rhythm carry the records) and at once for a batch that ends a run, what was queued since the
  last message going in one ``batches`` message (so many commits of many runs, a run's own
  commits between ticks among them, cost one publish and one acknowledgement), each message
  awaited, retried with the same message id (so a retry is never a duplicate) with backoff on a
  broker error, never dropped nor reordered while the process lives. A batch
  that ends a run failed is held until the VM is looked up by name on this host: if the host no
  longer has it (live migration, failover), the run's terminal failure is left out of the batch
  and a ``moved`` fact follows it, for the controller to dispatch the run where the VM is now.

On start, fleet runs an earlier agent process left unfinished are not resumed here: their rows
become ``stale`` and their local jobs, if interrupted, are ended with a line saying so (and
``vmbusops jobs resume`` refuses any fleet job); the controller dispatches them again, with a new
epoch, once it sees this process's new boot id.

No message carries a secret: a run's guest credential is resolved here, by the manifest's
credential reference, from this agent's own store, as for a local job.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import trio

from vmbusops.engine.changes import Change
from vmbusops.engine.engine import Engine
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.run_start import RunStart
from vmbusops.engine.source import FLEET_SOURCE_PREFIX, JobSource
from vmbusops.engine.states import State
from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.fleet import messages
from vmbusops.fleet.agent_batches import (
    BatchBuilder,
    FleetRunKey,
    PendingBatch,
    Tracked,
    moved_split,
    wire_changes,
)
from vmbusops.fleet.agent_bundles import FleetBundle, Refusal
from vmbusops.fleet.agent_presence import LastListing, Placement, host_entry, put_host_entry
from vmbusops.fleet.agent_store import REFUSED, RUNNING, STALE, FleetStore
from vmbusops.fleet.agent_take import BundleTaker
from vmbusops.fleet.broker import Broker, BrokerError, Delivery
from vmbusops.fleet.names import PLACEMENT_BUCKET, check_host_name, host_log_subject
from vmbusops.fleet.vm_labels import GROUPS_EVERY, group_names, labels_of
from vmbusops.guestops.host import HyperVHost, VMInfo
from vmbusops.guestops.vm_groups import VMGroupInfo
from vmbusops.owner import current_owner

log = logging.getLogger("vmbusops.fleet.agent")

AfterRun = Callable[[HyperVHost, int, int, str], Awaitable[None]]

#: At most this many batches, of about this many bytes, go in one message (NATS's default
#: max_payload is 1 MiB).
MAX_GROUP_BATCHES = 256
MAX_GROUP_BYTES = 256 << 10


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetAgentOptions:
    host: str
    cluster: str | None = None
    #: Seconds between heartbeats.
    heartbeat: float = 1.0
    #: Seconds between listings of the host's VMs (``Get-VM``), bounded by heartbeat and
    #: host_ttl / 2; a run whose VM left this host has the host listed again at once.
    list_every: float = 5.0
    #: No heartbeat written for this long: the broker is lost, this host's fleet runs stop.
    host_ttl: float = 10.0
    max_sessions: int = 32
    #: The largest bundle archive taken from the broker.
    max_bundle_bytes: int = 256 << 20
    #: Records kept in memory for batches not yet published; beyond, read back from the journal.
    max_inline_records: int = 20_000
    #: Messages taken from the work consumer at once, and how long one fetch waits.
    work_batch: int = 16
    work_wait: float = 1.0
    #: The longest queued batches wait for the journal writer's next tick (it ticks every
    #: ``flush_interval``; this bound is for a writer that does not).
    forward_wait: float = 0.1
    #: Backoff between retries of a publish or a fetch the broker failed.
    retry_min: float = 0.05
    retry_max: float = 2.0


class FleetAgent:
    def __init__(
        self,
        broker: Broker,
        engine: Engine,
        store: FleetStore,
        jobs: trio.Nursery,
        options: FleetAgentOptions,
    ) -> None:
        self.broker = broker
        self.engine = engine
        self.store = store
        self.jobs = jobs
        self.options = options
        self.host = check_host_name(options.host)
        self.subject = host_log_subject(self.host)
        self.boot = uuid.uuid4().hex
        self.owner = current_owner()
        self.builder = BatchBuilder(max_inline_records=options.max_inline_records)
        self.placement = Placement(broker, self.host, options.cluster, self.boot)
        self.taker = BundleTaker(
            broker, engine, store, self.owner, max_bundle_bytes=options.max_bundle_bytes,
            retrying=lambda call: self._retrying(call, attempts=5),
        )  # fmt: skip
        #: Fleet runs of this process, by key, while they run.
        self.running: dict[FleetRunKey, Tracked] = {}
        self._wake = trio.Event()
        #: Set at the writer's tick, or when a queued batch is due (see :meth:`_forward_loop`).
        self._go = trio.Event()
        self._chained: Callable[[list[StoredRecord], list[Change]], None] | None = None
        self._chained_tick: Callable[[], None] | None = None
        self.seq = 0
        self.last_beat_ok = 0.0
        self.lost = False
        #: The host's VMs as last listed (by :meth:`_list_loop`); each beat carries them.
        self.vms: list[VMInfo] = []
        self.listed = trio.Event()
        self._relist = trio.Event()
        #: Listings begun and ended (tests read them too).
        self.list_started = 0
        self.list_done = 0
        #: The host's VM groups as last listed, when; the groups and tags of its VMs.
        self.groups: list[VMGroupInfo] | None = None
        self.groups_at = 0.0
        self.labels: dict[str, dict[str, list[str]]] = {}
        self.beat_failing = False
        self.stopping = False
        self._scope = trio.CancelScope()
        #: Set (and replaced) whenever a run ends or a batch was published.
        self._changed = trio.Event()
        #: Counters (tests and the logs read them).
        self.published = 0
        self.refused = 0
        self.moved = 0
        self.duplicates = 0
        #: Runs the controller cancelled before their local job existed.
        self.cancelled: set[FleetRunKey] = set()

    # ------------------------------------------------------------------ life
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Settle what an earlier process left, then heartbeat, take work and forward commits
        until :meth:`stop` (or cancelled)."""
        await self._settle_stale()
        writer = self.engine.writer
        self._chained = writer.on_applied
        writer.on_applied = self._applied
        self._chained_tick = writer.on_tick
        writer.on_tick = self._ticked
        receipt = self.engine.after_run
        if receipt is not None:
            self.engine.after_run = partial(self._after_run, receipt)
        self.last_beat_ok = trio.current_time()
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._list_loop)
                    nursery.start_soon(self._beat_loop)
                    nursery.start_soon(self._watch_lease)
                    nursery.start_soon(self._forward_loop)
                    nursery.start_soon(self._work_loop)
                    log.info("fleet agent started", extra={
                        "event": "fleet-started", "host": self.host, "cluster": self.options.cluster,
                        "boot": self.boot,
                    })  # fmt: skip
                    task_status.started()
        finally:
            writer.on_applied = self._chained
            writer.on_tick = self._chained_tick
            self.engine.after_run = receipt

    async def _after_run(self, receipt: AfterRun, host: HyperVHost, job_id: int, run_id: int, vm: str) -> None:
        """A finished run's receipt, its VM's id from the last listing when the VM is in it."""
        if any(v.name.casefold() == vm.casefold() for v in self.vms):
            host = cast("HyperVHost", LastListing(host, self.vms))  # the receipt only lists VMs
        await receipt(host, job_id, run_id, vm)

    async def stop(self, drain: float) -> None:
        """Take no more work; publish what is queued (for at most ``drain`` seconds); stop."""
        self.stopping = True
        with trio.move_on_after(drain):
            while self.builder.queue:
                await self._changed.wait()
        if self.builder.queue:
            log.warning("stopping with batches unpublished", extra={
                "event": "fleet-unpublished", "batches": len(self.builder.queue),
            })  # fmt: skip
        self._scope.cancel()

    async def _settle_stale(self) -> None:
        """Fleet runs an earlier process took and did not finish: not resumed here (see the
        module's docstring)."""
        for row in await trio.to_thread.run_sync(self.store.left_by_others, self.owner):
            self.store.set_state(row.job, row.run, row.epoch, STALE)
            if row.local_job is None:
                continue
            try:
                await abandon_local_job(self.engine, row.local_job, row.job, row.run, row.epoch)
            except VmbusOpsError as exc:
                log.warning("cannot end a stale fleet job", extra={
                    "event": "fleet-stale-failed", "job": row.local_job, "error": exc.message,
                })  # fmt: skip
            log.info("fleet run of an earlier agent process left to the controller", extra={
                "event": "fleet-stale", "fleet_job": row.job, "run": row.run, "epoch": row.epoch,
                "local_job": row.local_job,
            })  # fmt: skip

    # ------------------------------------------------------------------ presence
    async def _list_vms(self) -> list[VMInfo]:
        """The host's VMs now; none while the host cannot be asked (a VM this host cannot see is
        claimed neither in its entry nor in placement, where another host may have it by now)."""
        self.list_started += 1
        try:
            self.vms = await self.engine.host.list_vms(fresh=True)
        except VmbusOpsError as exc:
            if self.vms:
                log.info("cannot list the host's VMs", extra={"event": "fleet-list-failed", "error": exc.message})
            self.vms = []
        self.listed.set()
        return self.vms

    async def _list_loop(self) -> None:
        """List the VMs (and write the placement that implies) every ``list_every`` and whenever
        :meth:`relist` asks, apart from the beats: a host slow to answer ``Get-VM`` under load must
        not make the controller think it lost, so each beat carries the last listing this loop got."""
        options = self.options
        every = max(options.heartbeat, min(options.list_every, options.host_ttl / 2))
        while True:
            started = trio.current_time()
            self._relist = trio.Event()
            vms = await self._list_vms()
            await self._label(vms)
            if not self.beat_failing:
                try:
                    with trio.fail_after(max(options.host_ttl / 2, options.heartbeat)):
                        await self.placement.update(vms)
                except (BrokerError, trio.TooSlowError) as exc:
                    log.info("placement not written; next listing", extra={
                        "event": "fleet-placement-failed", "error": str(exc) or "timed out",
                    })  # fmt: skip
            self.list_done = self.list_started
            self._notify()
            with trio.move_on_at(started + every):
                await self._relist.wait()
            await trio.sleep_until(started + options.heartbeat)  # never more often than the beats

    async def relist(self) -> None:
        """Return once a listing that began after this call has ended (and been written)."""
        wanted = self.list_started + 1
        self._relist.set()
        while self.list_done < wanted:
            await self._changed.wait()

    async def _label(self, vms: list[VMInfo]) -> None:
        """The groups and tags of ``vms`` for the beats (groups listed every ``GROUPS_EVERY``)."""
        if self.groups is None or trio.current_time() - self.groups_at >= GROUPS_EVERY:
            self.groups_at = trio.current_time()
            try:
                self.groups = await self.engine.host.list_vm_groups()
            except VmbusOpsError as exc:
                if self.groups is None or self.groups:
                    log.info("cannot list the host's VM groups", extra={"event": "fleet-groups-failed", "error": exc.message})
                self.groups = []
        self.labels = labels_of(vms, self.groups)

    async def _beat_loop(self) -> None:
        # The first beat waits a little for the first listing, so it can say which VMs are here.
        with trio.move_on_after(self.options.heartbeat):
            await self.listed.wait()
        while True:
            started = trio.current_time()
            self.seq += 1
            entry = host_entry(
                host=self.host, cluster=self.options.cluster, boot=self.boot, seq=self.seq, vms=self.vms,
                max_sessions=self.options.max_sessions, labels=self.labels, groups=group_names(self.groups or []),
            )  # fmt: skip
            try:
                with trio.fail_after(max(self.options.host_ttl / 2, self.options.heartbeat)):
                    await put_host_entry(self.broker, self.host, entry)
                    self.last_beat_ok = trio.current_time()
                    if self.beat_failing or self.lost:
                        log.info("the broker takes heartbeats again", extra={"event": "fleet-broker-back"})
                    self.beat_failing = False
                    self.lost = False
            except (BrokerError, trio.TooSlowError) as exc:
                if not self.beat_failing:
                    log.warning("cannot write the heartbeat", extra={
                        "event": "fleet-heartbeat-failed", "error": str(exc) or "timed out",
                    })  # fmt: skip
                self.beat_failing = True
            await trio.sleep_until(started + self.options.heartbeat)

    async def _watch_lease(self) -> None:
        """No heartbeat for ``host_ttl``: the controller will call this host dead, so its fleet
        runs stop here now."""
        while True:
            await trio.sleep(min(self.options.heartbeat, self.options.host_ttl / 4))
            if self.lost or trio.current_time() - self.last_beat_ok < self.options.host_ttl:
                continue
            self.lost = True
            log.warning("lost the broker: cancelling this host's fleet runs", extra={
                "event": "fleet-broker-lost", "runs": len(self.running),
            })  # fmt: skip
            for tracked in list(self.running.values()):
                tracked.broker_lost = True
                self.engine.cancel(tracked.local_job)

    # ------------------------------------------------------------------ work
    async def _work_loop(self) -> None:
        delay = self.options.retry_min
        while not self.stopping:
            try:
                deliveries = await self.broker.fetch_work(
                    self.host, batch=self.options.work_batch, timeout=self.options.work_wait
                )
            except BrokerError:
                await trio.sleep(delay)
                delay = min(delay * 2, self.options.retry_max)
                continue
            delay = self.options.retry_min
            for delivery in deliveries:
                await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        try:
            work, version = messages.parse_work_versioned(delivery.data)
        except messages.FleetMessageError as exc:
            log.warning("dropped a work message", extra={"event": "fleet-bad-work", "error": exc.message})
            await self._settle(delivery, term=True)
            return
        if isinstance(work, messages.CancelWork):
            await self._cancel(work)
            await self._settle(delivery)
            return
        try:
            await self._dispatch(work, delivery, version)
        except VmbusOpsError as exc:
            # The broker or the host could not answer: left unacked, the broker delivers it
            # again after its ack wait, and it is judged afresh then.
            log.warning("dispatch left for redelivery", extra={
                "event": "fleet-dispatch-retry", "fleet_job": work.job, "run": work.run, "error": exc.message,
            })  # fmt: skip

    async def _settle(self, delivery: Delivery, *, term: bool = False) -> None:
        try:
            await (self.broker.term(delivery) if term else self.broker.ack(delivery))
        except BrokerError as exc:
            # Delivered again later, and then found taken (or cancelled) already.
            log.info("cannot ack a work message", extra={"event": "fleet-ack-failed", "error": exc.message})

    async def _cancel(self, work: messages.CancelWork) -> None:
        key = FleetRunKey(work.job, work.run, work.epoch)
        tracked = self.running.get(key)
        log.info("cancel from the controller", extra={
            "event": "fleet-cancel", "fleet_job": work.job, "run": work.run, "epoch": work.epoch,
            "local_job": tracked.local_job if tracked else None,
        })  # fmt: skip
        if tracked is not None:
            self.engine.cancel(tracked.local_job)  # at once, if the engine runs it already
            # and durably, for the engine's keeper to act on if it is only about to.
            await self.engine.writer.call(self.engine.journal.request_cancel, tracked.local_job)
        else:
            # Taken, its local job not made yet: cancelled as soon as it is (see _run_one).
            self.cancelled.add(key)

    async def _dispatch(self, work: messages.DispatchWork, delivery: Delivery, version: int) -> None:
        key = FleetRunKey(work.job, work.run, work.epoch)
        if self.store.taken(work.job, work.run, work.epoch):
            self.duplicates += 1
            log.info("dispatch taken before: not run again", extra={
                "event": "fleet-duplicate", "fleet_job": work.job, "run": work.run, "epoch": work.epoch,
            })  # fmt: skip
            await self._settle(delivery)
            return
        for older in [t for k, t in self.running.items() if (k.job, k.run) == (key.job, key.run)]:
            self.engine.cancel(older.local_job)  # the controller moved the run on from that epoch
        try:
            bundle, start = await self.taker.take(work)
        except Refusal as refusal:
            await self._refuse(work, refusal, version)
            self.store.take(work.job, work.run, work.epoch, work.vm, self.owner)
            self.store.set_state(work.job, work.run, work.epoch, REFUSED)
            await self._settle(delivery)
            return
        try:
            # A durable write: off the event loop, which the host's runs share.
            await trio.to_thread.run_sync(self.store.take, work.job, work.run, work.epoch, work.vm, self.owner)
        except BaseException:
            self.taker.release(bundle)
            raise
        self.jobs.start_soon(self._run_one, work, bundle, start, delivery, version)

    async def _refuse(self, work: messages.DispatchWork, refusal: Refusal, version: int) -> None:
        self.refused += 1
        log.warning("refused a dispatched run's bundle", extra={
            "event": "fleet-refused", "fleet_job": work.job, "run": work.run, "epoch": work.epoch,
            "code": refusal.code, "reason": refusal.reason,
        })  # fmt: skip
        await self._publish(messages.RefusedFact(
            host=self.host, job=work.job, run=work.run, epoch=work.epoch, code=refusal.code,
            reason=refusal.reason, time=time.time(),
        ), version)  # fmt: skip

    async def _run_one(
        self, work: messages.DispatchWork, bundle: FleetBundle, start: RunStart | None, delivery: Delivery, version: int
    ) -> None:
        key = FleetRunKey(work.job, work.run, work.epoch)
        verified = bundle.verified
        source = JobSource(
            manifest=verified.manifest,
            directory=bundle.directory,
            source=f"{FLEET_SOURCE_PREFIX}job {work.job} run {work.run} epoch {work.epoch}",
            enable_guest_services=verified.scope.enable_guest_services,
            targets=(work.vm,),
            envelope=bundle.envelope_json or verified.envelope.to_json(),
            submitter=f"fleet:{work.controller}",
        )
        created = trio.Event()

        def on_created(local_job: int) -> None:
            # Before the job's first commit: the tap must know the run from its first change.
            local_run = self.engine.journal.run_ids(local_job)[work.vm]
            tracked = Tracked(key=key, vm=work.vm, vm_id=work.vm_id, local_job=local_job, local_run=local_run,
                              protocol=version)  # fmt: skip
            self.builder.track(tracked)
            self.running[key] = tracked
            self.store.set_state(work.job, work.run, work.epoch, RUNNING, local_job=local_job)
            created.set()
            log.info("fleet run started", extra={
                "event": "fleet-run", "fleet_job": work.job, "run": work.run, "epoch": work.epoch,
                "vm": work.vm, "local_job": local_job,
            })  # fmt: skip

        async with trio.open_nursery() as nursery:

            async def ack_once_created() -> None:
                await created.wait()
                tracked = self.running.get(key)
                if key in self.cancelled and tracked is not None:
                    # A cancel that came before the job: the durable request the engine's keeper
                    # acts on once the job runs (its next heartbeat), as `jobs cancel` does.
                    self.cancelled.discard(key)
                    journal = self.engine.journal
                    await self.engine.writer.call(journal.request_cancel, tracked.local_job)
                await self._settle(delivery)

            nursery.start_soon(ack_once_created)
            try:
                await self.engine.run_fleet_run(source, work.vm, start, on_created=on_created)
            except VmbusOpsError as exc:
                log.warning("fleet run could not run", extra={
                    "event": "fleet-run-failed", "fleet_job": work.job, "run": work.run, "error": exc.message,
                })  # fmt: skip
            finally:
                self.running.pop(key, None)
                self._notify()
                self.taker.release(bundle)
                if not created.is_set():
                    # Nothing was journaled (the host being reopened, say): forget the dispatch,
                    # unacked, so that its redelivery is taken again.
                    nursery.cancel_scope.cancel()
                    self.store.forget(work.job, work.run, work.epoch)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_idle(self) -> None:
        """Return once no fleet run runs here."""
        while self.running:
            await self._changed.wait()

    # ------------------------------------------------------------------ forwarding
    def _applied(self, stored: list[StoredRecord], changes: list[Change]) -> None:
        try:
            if self.builder.applied(stored, changes, time.time()):
                self._wake.set()
                if self.builder.due(MAX_GROUP_BATCHES):
                    self._go.set()
        except Exception:  # the tap must never fail the journal's committer
            log.exception("cannot queue a fleet batch", extra={"event": "fleet-batch-failed"})
        if self._chained is not None:
            self._chained(stored, changes)

    def _ticked(self) -> None:
        if self._chained_tick is not None:
            self._chained_tick()
        if self.builder.queue:
            self._go.set()

    async def _forward_loop(self) -> None:
        while True:
            if not self.builder.queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if not self.builder.due(MAX_GROUP_BATCHES):
                # Paced by the writer: the records of a run come in the commits of its rhythm
                # (every flush_interval), each going out at once, and what the run's own commits
                # queued in between (its start, a step's) goes with the next, in one message,
                # rather than a message each. A run's end goes at once.
                with trio.move_on_after(self.options.forward_wait):
                    await self._go.wait()
            self._go = trio.Event()
            group = self.builder.next_group(MAX_GROUP_BATCHES, MAX_GROUP_BYTES)
            if len(group) == 1:
                await self._forward(group[0])
            else:
                await self._forward_group(group)
            for pending in group:
                self.builder.sent(pending)
            self._notify()

    async def _forward_group(self, group: list[PendingBatch]) -> None:
        version = group[0].tracked.protocol  # one for the group (BatchBuilder.next_group)
        batches = tuple(self._batch_fact(p, p.changes, p.records or [], version) for p in group)
        await self._publish(messages.BatchesFact(host=self.host, batches=batches), version)
        await self._ended([p for p in group if p.ends])

    def _batch_fact(
        self, pending: PendingBatch, changes: Sequence[Change], records: Sequence[messages.WireRecord], version: int
    ) -> messages.BatchFact:
        key = pending.tracked.key
        return messages.BatchFact(
            host=self.host, job=key.job, run=key.run, epoch=key.epoch, n=pending.n, records=tuple(records),
            changes=tuple(wire_changes(changes, version)), time=pending.time,
        )  # fmt: skip

    async def _ended(self, ended: list[PendingBatch]) -> None:
        for pending in ended:
            self.builder.untrack(pending.tracked)
        if ended:
            rows = [(p.tracked.key.job, p.tracked.key.run, p.tracked.key.epoch, p.n) for p in ended]
            await trio.to_thread.run_sync(self.store.done, rows)

    async def _forward(self, pending: PendingBatch) -> None:
        tracked = pending.tracked
        key = tracked.key
        changes: Sequence[Change] = pending.changes
        # A run stopped for losing the broker did not end: if the whole fleet lost it, no host was
        # judged dead, and the cancel would stand as its end. Handed back as a moved run is.
        lost = pending.hands_back
        moved = lost or (pending.ends_failed and not await self._vm_here(tracked))
        if moved:
            changes = moved_split(changes)
        records = pending.records if pending.records is not None else await self._read_back(pending)
        if records or changes or not moved:
            await self._publish(self._batch_fact(pending, changes, records, tracked.protocol), tracked.protocol)
        if moved:
            self.moved += 1
            if lost:
                reason = f"host {self.host} lost the broker for {self.options.host_ttl:g} s and stopped the run"
            else:
                # Listed again first, so that the beats after the fact no longer claim the VM.
                with trio.move_on_after(self.options.host_ttl / 2):
                    await self.relist()
                reason = f"VM {tracked.vm} is no longer on host {self.host}"
            log.info("fleet run handed back", extra={"event": "fleet-moved", "fleet_job": key.job, "run": key.run,
                                                      "epoch": key.epoch, "vm": tracked.vm, "reason": reason})  # fmt: skip
            await self._publish(messages.MovedFact(
                host=self.host, job=key.job, run=key.run, epoch=key.epoch, reason=reason, time=time.time(),
            ), tracked.protocol)  # fmt: skip
        if pending.ends:
            await self._ended([pending])

    async def _read_back(self, pending: PendingBatch) -> list[messages.WireRecord]:
        """The records of a batch queued while too many waited, from the local journal."""
        after, last = pending.spilled
        if last <= after:
            return []
        journal = self.engine.journal
        rows = await trio.to_thread.run_sync(
            lambda: journal.stored_records(pending.tracked.local_job, after=after, limit=last - after)
        )
        return [(r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows if r[1] <= last]

    async def _vm_here(self, tracked: Tracked) -> bool:
        """Whether this host still has the run's VM: asked now, by name, not from a listing.

        When the host cannot say (its connection is down: the node itself may have failed while
        this agent runs elsewhere), the fleet's placement decides: the VM is gone if, within
        ``host_ttl``, another host's agent says it has it; otherwise the failure stands."""
        for attempt in range(3):
            try:
                found = await self.engine.host.list_vms([tracked.vm])
            except VmbusOpsError as exc:
                if exc.code is FailureCode.VM_NOT_FOUND:
                    return False
                await trio.sleep(self.options.retry_max * (attempt + 1) / 2)
                continue
            return any(
                vm.name.casefold() == tracked.vm.casefold() and (not tracked.vm_id or vm.id.lower() == tracked.vm_id.lower())
                for vm in found
            )
        with trio.move_on_after(self.options.host_ttl):
            while True:
                if await self._placed_elsewhere(tracked):
                    return False
                await trio.sleep(self.options.heartbeat)
        return True

    async def _placed_elsewhere(self, tracked: Tracked) -> bool:
        try:
            entry = await self.broker.kv_get(PLACEMENT_BUCKET, tracked.vm_id.lower()) if tracked.vm_id else None
        except BrokerError:
            return False
        if entry is None:
            return False
        try:
            host = json.loads(entry.value).get("host")
        except (ValueError, AttributeError):
            return False
        return isinstance(host, str) and host != self.host

    async def _publish(self, fact: messages.HostFact, version: int) -> None:
        """Publish in fleet protocol ``version`` (that of the work that dispatched the run),
        retried with the same message id until the broker takes it."""
        data = messages.encode(fact, version)
        msg_id = fact.msg_id()
        await self._retrying(lambda: self.broker.publish(self.subject, data, msg_id=msg_id), attempts=None)
        self.published += 1

    async def _retrying(self, call: Callable[[], Any], *, attempts: int | None) -> Any:
        delay = self.options.retry_min
        tried = 0
        while True:
            try:
                return await call()
            except BrokerError:
                tried += 1
                if attempts is not None and tried >= attempts:
                    raise
                await trio.sleep(delay)
                delay = min(delay * 2, self.options.retry_max)


async def abandon_local_job(engine: Engine, local_job: int, job: int, run: int, epoch: int) -> None:
    """End an interrupted local job of a fleet run with a line saying why it is not resumed here."""
    journal = engine.journal
    view = await engine.writer.call(journal.job, local_job)
    if view.stored_state is not State.INTERRUPTED:
        return
    await engine.writer.call(journal.claim_job, local_job, engine.owner, time.time())
    message = (
        f"fleet job {job} run {run} (epoch {epoch}) stopped with the agent process that ran it;"
        " the fleet controller dispatches it again, it is not resumed here"
    )
    await engine._refuse_resume(local_job, JobSource.from_journal(view), message)


__all__ = ["FleetAgent", "FleetAgentOptions", "abandon_local_job"]
