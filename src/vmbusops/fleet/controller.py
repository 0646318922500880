"""The fleet controller's trio side: follow the log into the projection, hold the lease, decide.

Theory of operation
-------------------
Every controller runs these tasks (:meth:`Controller.run`):

- **follow**: read the LOG stream in order from the projection's last applied sequence and
  apply each page of messages read (:meth:`.projection.Projection.apply_page`: one transaction
  per page, in a worker thread), the next page being read while one is applied; after each page,
  tell the API's followers what was committed (``on_commit``, once per page), which jobs ended
  (``on_ended``), and wake the planner if the page changed what it decides from. A standby does
  exactly this, so its journal is always the active one's, up to the log's head.
- **keep the lease**: every ``tick`` seconds, on its own timer, read the lease and renew or take
  it (:class:`.planner.Lease`), whatever a decision is doing meanwhile: a slow decision can
  neither let this controller's lease lapse nor keep a standby from taking a lease whose holder
  stopped. A new term starts a new :class:`.planner.Planner`; a lapsed lease drops it. The lease
  is only read, never taken, until the projection has applied the log as far as it was when the
  process started, and never again once the projection stopped at a newer protocol's fact.
- **govern**: every ``tick`` seconds read the hosts and the placement buckets (an entry is
  parsed again only when its revision changed). A standby notes
  the agent boot id each dispatched run is seen under (:func:`.planner.note_boots`), so the term
  it may take knows which agents restarted. The active one decides after each look and whenever
  the follower wakes it (at most every ``min_gap``), once its projection has applied the log as
  far as it was when its term began: it plans (a pure function of the projection, read on a
  connection of its own so that it never waits for a page being applied, the hosts and the
  placement), publishes the facts it decided on the log and sends what hosts must do on their
  work subjects (each batch pipelined, :meth:`.broker.Broker.publish_many`), waits until its own
  projection has applied its facts, and then plans again at once. A decision runs under a
  deadline, the moment the lease stops being this controller's by its own clock (``2 * ttl / 3``
  after the renewal was sent; each renewal moves it on): a controller that could not renew in
  time is cut off mid-decision, before any standby may take the lease (``ttl`` after it saw the
  last renewal).

A broker error is transient: it is logged once per kind and the task goes on at its next tick.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from vmbusops.engine.events import RunChanged
from vmbusops.engine.journal import StoredRecord
from vmbusops.engine.states import State
from vmbusops.errors import VmbusOpsError
from vmbusops.fleet.broker import Broker, BrokerError, StreamMessage
from vmbusops.fleet.messages import BatchesFact, BatchFact, encode
from vmbusops.fleet.names import (
    CONTROLLER_LEASE_KEY,
    CTL_SUBJECT,
    HOSTS_BUCKET,
    LEASES_BUCKET,
    PLACEMENT_BUCKET,
    work_subject,
)
from vmbusops.fleet.planner import (
    Decide,
    HostView,
    HostWatch,
    Lease,
    Placed,
    Planner,
    Send,
    note_boots,
    parse_placement,
    work_protocol,
)
from vmbusops.fleet.projection import Applied, Projection
from vmbusops.fleet.store import FleetJournal
from vmbusops.owner import current_owner

log = logging.getLogger("vmbusops.fleet")

LOG_PAGE = 256


@dataclass(frozen=True, slots=True)
class ControllerOptions:
    id: str
    #: Where this controller's API answers (kept in the lease, for a standby to point at).
    url: str
    canary: int = 1
    host_ttl: float = 10.0
    lease_ttl: float = 15.0
    placement_timeout: float = 300.0
    tick: float = 0.5
    #: The least time between two decisions woken by the log (what came meanwhile is decided together).
    min_gap: float = 0.05


class Controller:
    def __init__(
        self,
        broker: Broker,
        journal: FleetJournal,
        options: ControllerOptions,
        *,
        on_commit: Callable[[list[StoredRecord], list[RunChanged]], None] | None = None,
        on_ended: Callable[[int, State], None] | None = None,
        on_created: Callable[[int], None] | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.broker = broker
        self.journal = journal
        self.options = options
        self.projection = Projection(journal, current_owner())
        #: Where the planner reads the projection: while :meth:`run` runs, a connection of its
        #: own (WAL: it reads the last commit and never waits for a page being applied, nor
        #: holds one up).
        self.reads = journal
        self.on_commit = on_commit
        self.on_ended = on_ended
        self.on_created = on_created
        self.wall = wall
        self.lease = Lease(options.id, options.url, options.lease_ttl)
        self.watch = HostWatch(options.host_ttl)
        self.hosts: dict[str, HostView] = {}
        self.placement: dict[str, Placed] = {}
        self.planner: Planner | None = None
        #: Run id -> (host, agent boot) it was seen dispatched on, kept in either role.
        self.boots: dict[int, tuple[str, str]] = {}
        self.applied = journal.last_seq()
        self._progress = trio.Event()
        #: Set when the projection applied something the planner decides from.
        self._decide_wake = trio.Event()
        #: The log's last sequence when this term began (None: not read yet).
        self._term_head: int | None = None
        #: The log's last sequence when this process started: the lease is not taken before the
        #: projection has applied that far (see :meth:`_lease_pass`).
        self._start_head: int | None = None
        #: The decision under way (its deadline follows the lease), None between decisions.
        self._deciding: trio.CancelScope | None = None
        self._consumers: set[str] = set()
        self._complaints: set[str] = set()
        self.broker_up = False

    # ------------------------------------------------------------------ state
    def active(self) -> bool:
        return self.projection.halted is None and self.lease.active(trio.current_time())

    @property
    def leader_url(self) -> str | None:
        """The API address of the controller that holds the lease, as the lease says."""
        return self.lease.holder_url

    async def wait_applied(self, seq: int, timeout: float) -> bool:
        """Wait until the projection has applied the log up to ``seq``; False on timeout."""
        with trio.move_on_after(timeout):
            while self.applied < seq:
                await self._progress.wait()
        return self.applied >= seq

    async def publish_fact(self, fact: Decide) -> int:
        """Publish a fact on the controller subject; its stream sequence."""
        ack = await self.broker.publish(CTL_SUBJECT, encode(fact.fact), msg_id=fact.fact.msg_id())
        return ack.seq

    # ------------------------------------------------------------------ tasks
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._until_ok("create the fleet's streams and buckets", self.broker.ensure_fleet)
        await self._until_ok("read the log's head", self._read_start_head)
        await trio.to_thread.run_sync(self.journal.adopt, current_owner(), self.wall())
        self.reads = await trio.to_thread.run_sync(lambda: FleetJournal(self.journal.path, readonly=True))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.follow)
                nursery.start_soon(self.keep_lease)
                nursery.start_soon(self.govern)
                nursery.start_soon(self.heartbeat)
                task_status.started()
        finally:
            reads, self.reads = self.reads, self.journal
            reads.close()

    async def _read_start_head(self) -> None:
        self._start_head = await self.broker.last_log_seq()

    async def _until_ok(self, what: str, fn: Callable[[], Awaitable[object]]) -> None:
        while True:
            try:
                await fn()
            except BrokerError as exc:
                self._complain(what, exc)
                await trio.sleep(self.options.tick)
            else:
                self.broker_up = True
                return

    def _complain(self, what: str, exc: BrokerError) -> None:
        self.broker_up = False
        if what not in self._complaints:
            self._complaints.add(what)
            log.warning("broker error", extra={"event": "broker-error", "doing": what, "error": exc.message})

    async def follow(self) -> None:
        """Apply the log to the projection, in order, forever: each page read is applied in a
        worker thread while the next one is read (:meth:`_read_ahead`)."""
        send, receive = trio.open_memory_channel[list[StreamMessage]](1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_ahead, send)
            async for messages in receive:
                applied = await trio.to_thread.run_sync(self.projection.apply_page, messages)
                self._told(applied)
                halted = self.projection.halted
                self.applied = max(self.applied, messages[-1].seq if halted is None else halted[0] - 1)
                self._progress.set()
                self._progress = trio.Event()
                if halted is not None:
                    # A newer controller wrote it: this one can neither follow the log nor decide
                    # on it any more. It stops deciding now (a decision under way is cut off), lets
                    # the lease lapse (keep_lease), and says so until upgraded.
                    self.lease.let_go()
                    self._term_follows_lease()
                    log.error("log written by a newer vmbusops", extra={
                        "event": "newer-protocol", "seq": halted[0], "why": halted[1],
                    })  # fmt: skip
                    nursery.cancel_scope.cancel()
                    return

    async def _read_ahead(self, send: trio.MemorySendChannel[list[StreamMessage]]) -> None:
        """Read the log from the projection's last applied sequence on, a page at a time, and
        hand each page to :meth:`follow` (one page waits there at most)."""
        after = self.applied
        while True:
            try:
                messages = await self.broker.read_log(after=after, batch=LOG_PAGE, timeout=1.0)
            except BrokerError as exc:
                self._complain("read the log", exc)
                await trio.sleep(self.options.tick)
                continue
            self._complaints.discard("read the log")
            self.broker_up = True
            if messages:
                after = messages[-1].seq
                await send.send(messages)

    def _told(self, page: list[Applied]) -> None:
        """Tell the API what a page of the log did (:func:`in_log_order`), and wake the planner
        if it changed what the planner decides from."""
        for applied in page:
            if applied.created is not None and self.on_created is not None:
                self.on_created(applied.created)
            if _matters(applied):
                self._decide_wake.set()
        if self.on_commit is not None:
            for records, events in in_log_order(page):
                self.on_commit(records, events)
        if self.on_ended is not None:
            for applied in page:
                for job_id, state in applied.ended:
                    self.on_ended(job_id, state)

    async def heartbeat(self) -> None:
        """Keep this process the owner of the active fleet jobs in the journal (readers in other
        processes judge an active job by its owner's heartbeat)."""
        owner = current_owner()
        while True:
            await trio.sleep(5.0)
            jobs = await trio.to_thread.run_sync(self.reads.active_jobs)
            if jobs:
                await trio.to_thread.run_sync(self.journal.heartbeat, [j.job_id for j in jobs], owner, self.wall())

    async def keep_lease(self) -> None:
        """Read the lease every ``tick`` and renew or take it, on a timer of its own."""
        while True:
            try:
                await self._lease_pass()
            except BrokerError as exc:
                self._complain("keep the lease", exc)
            else:
                self._complaints.discard("keep the lease")
            self._term_follows_lease()
            await trio.sleep(self.options.tick)

    async def _lease_pass(self) -> None:
        broker = self.broker
        entry = await broker.kv_get(LEASES_BUCKET, CONTROLLER_LEASE_KEY)
        caught_up = self._start_head is not None and self.applied >= self._start_head
        if self.projection.halted is not None or not caught_up:
            # Read (so its holder is the one named to clients), neither taken nor renewed: a
            # controller that cannot read the log cannot decide, and one still applying what was
            # logged before it started (a restart after a long stop) could not decide yet. Taking
            # the lease then (even its own, from before a restart) would only keep a standby
            # that is up to date from taking over.
            self.lease.observe(entry, trio.current_time())
            self.lease.let_go()
            return
        # A standby's clock for "the revision has not moved" starts once it has the answer, and
        # a renewal counts from before it was sent: both err on the side of no split brain.
        write = self.lease.observe(entry, trio.current_time())
        if write is None:
            return
        sent = trio.current_time()
        if write.last is None:
            revision = await broker.kv_create(LEASES_BUCKET, CONTROLLER_LEASE_KEY, write.value)
        else:
            revision = await broker.kv_update(LEASES_BUCKET, CONTROLLER_LEASE_KEY, write.value, last=write.last)
        self.lease.written(write, revision, sent)

    def _term_follows_lease(self) -> None:
        """Start a planner for the lease's term, or drop it when the lease is not this
        controller's; move the deadline of the decision under way to the lease's end."""
        planner = self.planner
        if self.active():
            if planner is None or planner.term != self.lease.term:
                log.info("controller active", extra={"event": "active", "id": self.options.id, "term": self.lease.term})
                self.planner = Planner(
                    controller=self.options.id, canary=self.options.canary, host_ttl=self.options.host_ttl,
                    placement_timeout=self.options.placement_timeout, term=self.lease.term, boots=self.boots,
                )  # fmt: skip
                self._term_head = None
        elif planner is not None:
            log.info("controller standby", extra={"event": "standby", "id": self.options.id})
            self.planner = None
        if self._deciding is not None:
            self._deciding.deadline = self._lease_end()

    def _lease_end(self) -> float:
        end = self.lease.ends()
        return end if end is not None and self.planner is not None else -math.inf

    async def govern(self) -> None:
        """Look at the hosts and placement every ``tick``; decide after each look and whenever
        the projection applied something that changes a decision (a run ended or waits, a job
        came, a fact of the controller's own), at most every ``min_gap`` seconds, each decision
        cut off where the lease ends."""
        next_look = trio.current_time()
        while True:
            again = False
            try:
                if trio.current_time() >= next_look:
                    next_look = trio.current_time() + self.options.tick
                    await self._look()
                self._decide_wake = trio.Event()
                self._deciding = deciding = trio.CancelScope(deadline=self._lease_end())
                with deciding:
                    again = await self._decide()
                if deciding.cancelled_caught:
                    self._cut_off()
            except BrokerError as exc:
                self._complain("govern", exc)
            except VmbusOpsError as exc:
                log.warning("cannot decide now", extra={"event": "govern-failed", "error": exc.message})
            finally:
                self._deciding = None
            if again:
                continue  # what it decided is applied: decide again on it at once
            with trio.move_on_at(next_look):
                await self._decide_wake.wait()
                await trio.sleep(self.options.min_gap)

    def _cut_off(self) -> None:
        """A decision outlived the lease: what its planner believes it sent may not have gone,
        so the term's next planner starts afresh (repeats are harmless: same message ids)."""
        if self.planner is not None and self.lease.ends() is not None:
            log.warning("decision cut off", extra={"event": "decision-cut-off", "id": self.options.id})
        self.planner = None
        self._term_follows_lease()

    async def _look(self) -> None:
        broker = self.broker
        self.hosts = self.watch.update(await broker.kv_entries(HOSTS_BUCKET), trio.current_time())
        self.placement = parse_placement(await broker.kv_entries(PLACEMENT_BUCKET), self.placement)
        self._complaints.discard("govern")
        if self.planner is None or not self.active():
            jobs = await trio.to_thread.run_sync(self.reads.active_jobs)
            note_boots(self.boots, jobs, self.hosts)
            return
        for host in self.hosts:
            if host not in self._consumers:
                await broker.ensure_work_consumer(host)
                self._consumers.add(host)

    async def _decide(self) -> bool:
        """Plan once and carry it out; True if facts were published (and applied)."""
        broker = self.broker
        planner = self.planner
        if planner is None or not self.active():
            return False
        if self._term_head is None:
            self._term_head = await broker.last_log_seq()
        if self.applied < self._term_head:
            return False  # a new term decides only once it has applied the log as it found it
        jobs = await trio.to_thread.run_sync(self.reads.active_jobs)
        if not jobs:
            return False
        ids = [r.run_id for j in jobs for r in j.runs if planner.needs_start(r)]
        starts = await trio.to_thread.run_sync(self.reads.run_starts, ids)
        actions = planner.plan(jobs, self.hosts, self.placement, starts, now=trio.current_time(), wall=self.wall())
        facts = [a for a in actions if isinstance(a, Decide)]
        sends = [a for a in actions if isinstance(a, Send)]
        last = 0
        if facts:
            acks = await broker.publish_many([(CTL_SUBJECT, encode(a.fact), a.fact.msg_id()) for a in facts])
            # A fact the log had already (a decision the projection did not take) is no news.
            last = max((a.seq for a in acks if not a.duplicate), default=0)
            for fact in facts:
                log.info("decided", extra={"event": "decided", "fact": fact.fact.msg_id()})
        if sends:
            try:
                await broker.publish_many(
                    # Each host's work in the newest protocol its agent reads (a fleet upgraded
                    # host by host has several).
                    [
                        (work_subject(a.host), encode(a.work, work_protocol(self.hosts.get(a.host))), a.work.msg_id())
                        for a in sends
                    ]
                )
            except BrokerError:
                for send in sends:
                    planner.sent.discard(send.work.msg_id())  # sent again at the next pass
                raise
        if last:
            return await self.wait_applied(last, self.options.lease_ttl)
        return False


def in_log_order(page: list[Applied]) -> list[tuple[list[StoredRecord], list[RunChanged]]]:
    """What a page of the log tells the followers, as few calls as log order allows: each call
    carries records then events, as one commit of an agent does (an agent's ``batches`` message
    holds several), so a fact whose records come after events already gathered starts the next
    call; a step's start is never told after the records of that step."""
    calls: list[tuple[list[StoredRecord], list[RunChanged]]] = []
    records: list[StoredRecord] = []
    events: list[RunChanged] = []
    for applied in page:
        for got_records, got_events in applied.segments():
            if got_records and events:
                calls.append((records, events))
                records, events = [], []
            records += got_records
            events += got_events
    if records or events:
        calls.append((records, events))
    return calls


def _matters(applied: Applied) -> bool:
    """Whether a message the projection applied can change what the planner decides."""
    if applied.skipped is not None and not applied.records and not applied.events:
        return False
    if applied.created is not None or applied.ended:
        return True
    if not isinstance(applied.fact, BatchFact | BatchesFact):
        return True
    return any(e.state.terminal or e.state is State.DELAYED for e in applied.events)


__all__ = ["Controller", "ControllerOptions", "in_log_order"]
