"""What the active controller decides, as a pure function of what it knows (sans-IO).

Theory of operation
-------------------
The controller's trio loop (:mod:`.controller`) reads the projection (the fleet jobs that have
not ended, :class:`~.store.FleetJob`), the hosts bucket (through :class:`HostWatch`, which turns
revisions seen on the controller's own monotonic clock into alive/dead) and the placement bucket,
and asks :meth:`Planner.plan` what to do. The answer is a list of :class:`Decide` (a fact to
publish on the log) and :class:`Send` (a message for a host's work subject). The loop publishes
the facts, waits until its own projection has applied them, and plans again: every decision is
read back from the log before anything depends on it, so a standby that takes over finds the
same state and goes on from there.

The rules (docs/adr/0007-fleet.md):

- admission per job: at most ``max_concurrency`` runs dispatched at once and ``max_errors``
  failures, both taken over all the job's runs; a canary wave first (the first ``canary`` runs
  alone; the rest only once every one of them succeeded, else the rest are skipped,
  ``CanaryFailed``);
- dispatch where the run's VM is placed (by VM id) on a live host; a VM placed on no live host
  for ``placement_timeout`` is skipped (``NotPlaced``);
- a dispatched run whose host is dead, or whose host's agent restarted (a new boot id), is
  ``lost``; a run that waits (lost or moved) is dispatched again, epoch + 1, once its VM is seen
  on a live host: another host, the same host under a new boot id, or the same host alive again
  for ``host_ttl`` after the loss (its agent has stopped the old epoch's run by then); after a
  ``moved``, a placement entry naming the host the VM left is the one from before it left until it
  is written again or that host lists the VM in its second heartbeat since (:meth:`Planner._left_behind`);
- the WORK message of a dispatched run whose host has not reported on it is sent once per term
  (its message id makes a repeat harmless); so is a cancel to the host of a dispatched run whose
  job or run is marked cancelled.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmbusops.bundle.manifest import ExecutionPolicy, manifest_from_dict
from vmbusops.engine.states import ERRORS, State
from vmbusops.errors import FailureCode, VmbusOpsError
from vmbusops.fleet.broker import KvEntry
from vmbusops.fleet.messages import (
    OLDEST,
    VERSION,
    CancelWork,
    DispatchFact,
    DispatchWork,
    LogFact,
    LostFact,
    RunStartWire,
    SkipFact,
    Work,
    dispatch_work_id,
)
from vmbusops.fleet.names import check_host_name
from vmbusops.fleet.store import FleetJob, FleetRun

log = logging.getLogger("vmbusops.fleet")

CANARY_FAILED = "CanaryFailed"
NOT_PLACED = "NotPlaced"


# ---------------------------------------------------------------------- what it knows
@dataclass(frozen=True, slots=True)
class HostView:
    host: str
    cluster: str | None
    boot: str
    alive: bool
    #: When (controller monotonic clock) its entry's revision last changed.
    seen: float
    #: How many times this controller saw the entry's revision change (heartbeats seen).
    beats: int = 0
    #: The VM ids its last entry lists.
    vm_ids: frozenset[str] = frozenset()
    #: The newest fleet protocol its agent reads (its entry's ``protocol``; 1 when it has none).
    protocol: int = 1


@dataclass(frozen=True, slots=True)
class Placed:
    vm: str
    vm_id: str
    host: str
    cluster: str | None
    state: str
    boot: str | None
    #: The entry's revision in the placement bucket (every write makes a higher one).
    revision: int = 0


def parse_host_entry(entry: KvEntry) -> dict[str, Any] | None:
    """A host entry's JSON, if it is one (the broker is never trusted: None otherwise)."""
    try:
        body = json.loads(entry.value)
        check_host_name(str(body["host"]))
    except (ValueError, KeyError, TypeError, VmbusOpsError):
        return None
    if not isinstance(body, dict) or body["host"] != entry.key or not isinstance(body.get("boot"), str):
        return None
    return body


def parse_placement(entries: Mapping[str, KvEntry], known: Mapping[str, Placed] | None = None) -> dict[str, Placed]:
    """The placement bucket as VM id -> where it is; entries that do not parse are left out.
    ``known``: what an earlier call returned; an entry at the revision it was read at then is
    not parsed again."""
    out: dict[str, Placed] = {}
    for key, entry in entries.items():
        before = known.get(key.lower()) if known is not None else None
        if before is not None and before.revision == entry.revision:
            out[before.vm_id] = before
            continue
        try:
            body = json.loads(entry.value)
            placed = Placed(
                vm=str(body["vm"]), vm_id=str(body["vm_id"]).lower(), host=check_host_name(str(body["host"])),
                cluster=body.get("cluster") if isinstance(body.get("cluster"), str) else None,
                state=str(body.get("state", "")), boot=body.get("boot") if isinstance(body.get("boot"), str) else None,
                revision=entry.revision,
            )  # fmt: skip
        except (ValueError, KeyError, TypeError, VmbusOpsError):
            continue
        if placed.vm_id == key.lower():
            out[placed.vm_id] = placed
    return out


class HostWatch:
    """Hosts alive or dead, by their entries' revisions on this controller's own clock: a host is
    alive while its revision changed within ``host_ttl``."""

    def __init__(self, host_ttl: float) -> None:
        self.host_ttl = host_ttl
        #: Host -> (its entry's revision, when it was first seen at it, the entry, the VM ids it lists).
        self._seen: dict[str, tuple[int, float, dict[str, Any], frozenset[str]]] = {}
        self._beats: dict[str, int] = {}
        #: Hosts whose too-old protocol was logged (until their agent reads one again).
        self._told: set[str] = set()

    def update(self, entries: Mapping[str, KvEntry], now: float) -> dict[str, HostView]:
        for key, entry in entries.items():
            old = self._seen.get(key)
            if old is not None and old[0] == entry.revision:
                continue  # read at this revision already
            body = parse_host_entry(entry)
            if body is None:
                continue
            self._seen[key] = (entry.revision, now, body, _listed_ids(body))
            self._beats[key] = self._beats.get(key, 0) + 1
        for key in list(self._seen):
            if key not in entries:
                del self._seen[key]
                self._beats.pop(key, None)
                self._told.discard(key)
        return self.views(now)

    def views(self, now: float) -> dict[str, HostView]:
        """Each host as seen now. A host whose agent reads no protocol this controller writes
        (older than :data:`.messages.OLDEST`) can be given no work: it counts as dead, and is
        said once for as long as its agent stays so."""
        out: dict[str, HostView] = {}
        for host, (_, seen, body, vm_ids) in self._seen.items():
            protocol = host_protocol(body)
            if protocol >= OLDEST:
                self._told.discard(host)
            elif host not in self._told:
                self._told.add(host)
                log.warning("host's agent is too old for this controller", extra={
                    "event": "host-protocol", "host": host, "protocol": protocol,
                    "why": f"its agent reads fleet protocol {protocol}, this controller writes {OLDEST} to {VERSION}:"
                           " upgrade its agent",
                })  # fmt: skip
            out[host] = HostView(
                host=host, cluster=body.get("cluster") if isinstance(body.get("cluster"), str) else None,
                boot=str(body["boot"]), alive=now - seen < self.host_ttl and protocol >= OLDEST, seen=seen,
                beats=self._beats.get(host, 0), vm_ids=vm_ids, protocol=protocol,
            )  # fmt: skip
        return out


def host_protocol(body: Mapping[str, Any]) -> int:
    """The newest fleet protocol a host entry's agent reads: 1 for an entry that does not say
    (agents from before protocol 2), 0 for one that is not a whole number."""
    found = body.get("protocol", 1)
    return found if isinstance(found, int) and not isinstance(found, bool) and found >= 1 else 0


def work_protocol(host: HostView | None) -> int:
    """The protocol to write a host's work in: the newest both read."""
    return VERSION if host is None else max(OLDEST, min(VERSION, host.protocol))


def _listed_ids(body: dict[str, Any]) -> frozenset[str]:
    vms = body.get("vms")
    if not isinstance(vms, list):
        return frozenset()
    return frozenset(str(v["vm_id"]).lower() for v in vms if isinstance(v, dict) and isinstance(v.get("vm_id"), str))


# ---------------------------------------------------------------------- what it decides
@dataclass(frozen=True, slots=True)
class Decide:
    """Publish this fact on the log."""

    fact: LogFact


@dataclass(frozen=True, slots=True)
class Send:
    """Publish this message on ``host``'s work subject."""

    host: str
    work: Work


Action = Decide | Send

#: Where a dispatched run stands (from the projection): its steps' states and attempts, next seq.
StartOf = Mapping[int, tuple[tuple[str, ...], tuple[int, ...], int]]


@dataclass
class Planner:
    """One term's decisions. A new term starts with a new planner: what it sent is forgotten,
    so it sends the WORK of dispatched runs not started again (same message ids)."""

    controller: str
    canary: int = 1
    host_ttl: float = 10.0
    placement_timeout: float = 300.0
    #: The lease term this planner decides in.
    term: int = 0
    #: Work message ids sent in this term.
    sent: set[str] = field(default_factory=set)
    #: Run id -> (host, agent boot id) it was seen dispatched on; shared with the controller,
    #: which keeps it current on standby too (:func:`note_boots`), so a new term knows them.
    boots: dict[int, tuple[str, str]] = field(default_factory=dict)
    #: Run id -> (host, boot, when) it was judged lost.
    _lost: dict[int, tuple[str, str | None, float]] = field(default_factory=dict)
    #: Run id -> since when its VM has been placed on no live host.
    _unplaced: dict[int, float] = field(default_factory=dict)
    #: Run id -> (placement revision, host beats) when it was first seen waiting after a move:
    #: an entry no newer still names the host the VM left (see :meth:`_left_behind`).
    _left: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: Job id -> its manifest's execution settings (read once).
    _executions: dict[int, ExecutionPolicy] = field(default_factory=dict)

    def needs_start(self, run: FleetRun) -> bool:
        """Whether :meth:`plan` needs where ``run`` stands (``starts``): dispatched, not started,
        its work not sent in this term."""
        return run.dispatched and not run.started and dispatch_work_id(run.job_id, run.run_id, run.epoch) not in self.sent

    def plan(
        self,
        jobs: Sequence[FleetJob],
        hosts: Mapping[str, HostView],
        placement: Mapping[str, Placed],
        starts: StartOf,
        *,
        now: float,
        wall: float,
    ) -> list[Action]:
        out: list[Action] = []
        for gone in set(self._executions) - {j.job_id for j in jobs}:
            del self._executions[gone]
        for job in jobs:
            out += self._job(job, hosts, placement, starts, now=now, wall=wall)
        return out

    # ------------------------------------------------------------------ one job
    def _job(
        self,
        job: FleetJob,
        hosts: Mapping[str, HostView],
        placement: Mapping[str, Placed],
        starts: StartOf,
        *,
        now: float,
        wall: float,
    ) -> list[Action]:
        out: list[Action] = []
        execution = self._executions.get(job.job_id)
        if execution is None:
            try:
                execution = manifest_from_dict(json.loads(job.manifest)).execution
            except (ValueError, VmbusOpsError):
                return out
            self._executions[job.job_id] = execution
        runs = job.runs
        total = len(runs)
        max_concurrency = execution.max_concurrency.of(total)
        max_errors = (
            execution.max_errors.count if execution.max_errors.count is not None else execution.max_errors.of(total)
        )
        errors = sum(1 for r in runs if r.state in ERRORS)
        canary = runs[: self.canary] if 0 < self.canary < total else ()
        canary_failed = any(r.state.terminal and r.state is not State.SUCCESS for r in canary)
        canary_done = all(r.state is State.SUCCESS for r in canary)
        in_flight = sum(1 for r in runs if r.epoch > 0 and not r.state.terminal)

        for run in runs:
            if run.state.terminal:
                self._forget(run.run_id)
                continue
            if run.dispatched:
                out += self._dispatched(job, run, hosts, placement, starts, now=now, wall=wall)
            elif run.epoch > 0:
                out += self._waiting(run, hosts, placement, now=now, wall=wall)

        if job.cancel_requested:
            return out
        for run in runs:
            if run.state.terminal or run.epoch > 0:
                continue
            if errors > max_errors:
                why = f"{errors} runs failed, more than max errors ({max_errors})"
                out.append(Decide(SkipFact(job=job.job_id, run=run.run_id, reason=why, code=FailureCode.SKIPPED, time=wall)))
                continue
            is_canary = run in canary
            if canary and not is_canary:
                if canary_failed:
                    why = "a run of the canary wave did not succeed"
                    out.append(Decide(SkipFact(job=job.job_id, run=run.run_id, reason=why, code=CANARY_FAILED, time=wall)))
                    continue
                if not canary_done:
                    continue
            if run.cancel_requested:
                continue
            where = self._live_placement(run, hosts, placement)
            if where is None:
                since = self._unplaced.setdefault(run.run_id, now)
                if now - since >= self.placement_timeout:
                    why = f"{run.vm} was placed on no live host for {self.placement_timeout:g}s"
                    out.append(Decide(SkipFact(job=job.job_id, run=run.run_id, reason=why, code=NOT_PLACED, time=wall)))
                continue
            self._unplaced.pop(run.run_id, None)
            if in_flight >= max_concurrency:
                continue
            in_flight += 1
            out.append(Decide(DispatchFact(job=job.job_id, run=run.run_id, host=where.host, epoch=1, reason="first dispatch", time=wall)))
        return out

    def _dispatched(
        self,
        job: FleetJob,
        run: FleetRun,
        hosts: Mapping[str, HostView],
        placement: Mapping[str, Placed],
        starts: StartOf,
        *,
        now: float,
        wall: float,
    ) -> list[Action]:
        host = hosts.get(run.host)
        boot = self.boots.get(run.run_id)
        if host is not None and host.alive and (boot is None or boot[0] != run.host):
            self.boots[run.run_id] = (run.host, host.boot)
            boot = self.boots[run.run_id]
        if host is None or not host.alive or (boot is not None and boot[1] != host.boot):
            why = (
                f"host {run.host} lost its lease" if host is None or not host.alive
                else f"the agent of host {run.host} restarted"
            )  # fmt: skip
            self._lost[run.run_id] = (run.host, boot[1] if boot is not None else None, now)
            self.boots.pop(run.run_id, None)
            return [Decide(LostFact(job=job.job_id, run=run.run_id, epoch=run.epoch, reason=why, time=wall))]
        out: list[Action] = []
        if not run.started and run.run_id in starts:
            states, attempts, next_seq = starts[run.run_id]
            work = DispatchWork(
                job=job.job_id, run=run.run_id, vm=run.vm, vm_id=run.vm_id, epoch=run.epoch, bundle=job.bundle,
                start=RunStartWire(step_states=states, attempts=attempts, next_seq=next_seq),
                controller=self.controller, time=wall,
            )  # fmt: skip
            if work.msg_id() not in self.sent:
                self.sent.add(work.msg_id())
                out.append(Send(run.host, work))
        if job.cancel_requested or run.cancel_requested:
            # After its dispatch (if this term sends that): the host ends the run as cancelled.
            cancel = CancelWork(job=job.job_id, run=run.run_id, epoch=run.epoch)
            if cancel.msg_id() not in self.sent:
                self.sent.add(cancel.msg_id())
                out.append(Send(run.host, cancel))
        return out

    def _waiting(
        self, run: FleetRun, hosts: Mapping[str, HostView], placement: Mapping[str, Placed], *, now: float, wall: float
    ) -> list[Action]:
        """A run lost or moved: dispatch it again once its VM is on a live host it may go to."""
        where = None if self._left_behind(run, hosts, placement) else self._live_placement(run, hosts, placement)
        if where is None:
            since = self._unplaced.setdefault(run.run_id, now)
            if now - since >= self.placement_timeout:
                why = f"{run.vm} was placed on no live host for {self.placement_timeout:g}s"
                return [Decide(SkipFact(job=run.job_id, run=run.run_id, reason=why, code=NOT_PLACED, time=wall))]
            return []
        self._unplaced.pop(run.run_id, None)
        host = hosts[where.host]
        lost = self._lost.get(run.run_id)
        if where.host == run.host and lost is not None and run.waiting == "lost":
            _, boot, when = lost
            if host.boot == boot and now - when < self.host_ttl:
                return []
        if where.host == run.host:
            reason = f"host {run.host} is back" if run.waiting == "lost" else f"vm {run.vm} is back on {run.host}"
        else:
            reason = f"vm moved from {run.host} to {where.host}"
        if run.cancel_requested:
            return []
        self._lost.pop(run.run_id, None)
        self._left.pop(run.run_id, None)
        return [
            Decide(DispatchFact(job=run.job_id, run=run.run_id, host=where.host, epoch=run.epoch + 1, reason=reason, time=wall))
        ]

    def _left_behind(self, run: FleetRun, hosts: Mapping[str, HostView], placement: Mapping[str, Placed]) -> bool:
        """Whether the VM's placement is what it was before the VM left the run's host: after a
        ``moved``, the entry may name the host the VM left until its new host's agent writes it,
        and sending the run back there would only fail again. The entry counts again once it is
        newer than when this planner first saw the run wait, or once that host has listed the VM
        in its second heartbeat since (the first may have listed it before it left)."""
        if run.waiting != "moved":
            return False
        placed = placement.get(run.vm_id.lower())
        host = hosts.get(run.host)
        first = self._left.get(run.run_id)
        if first is None:
            stale = placed.revision if placed is not None and placed.host == run.host else 0
            first = self._left[run.run_id] = (stale, host.beats if host is not None else 0)
        if placed is None or placed.host != run.host or placed.revision > first[0]:
            return False
        return not (host is not None and host.beats >= first[1] + 2 and run.vm_id.lower() in host.vm_ids)

    def _live_placement(self, run: FleetRun, hosts: Mapping[str, HostView], placement: Mapping[str, Placed]) -> Placed | None:
        placed = placement.get(run.vm_id.lower())
        if placed is None:
            return None
        host = hosts.get(placed.host)
        return placed if host is not None and host.alive else None

    def _forget(self, run_id: int) -> None:
        self.boots.pop(run_id, None)
        self._lost.pop(run_id, None)
        self._unplaced.pop(run_id, None)
        self._left.pop(run_id, None)


def note_boots(boots: dict[int, tuple[str, str]], jobs: Sequence[FleetJob], hosts: Mapping[str, HostView]) -> None:
    """What a standby keeps for the term it may take: the agent boot id each dispatched run was
    first seen under (an agent that restarts does not resume its runs: they are lost)."""
    active = set()
    for job in jobs:
        for run in job.runs:
            if not run.dispatched or run.state.terminal:
                continue
            active.add(run.run_id)
            host = hosts.get(run.host)
            known = boots.get(run.run_id)
            if host is not None and host.alive and (known is None or known[0] != run.host):
                boots[run.run_id] = (run.host, host.boot)
    for run_id in set(boots) - active:
        del boots[run_id]


# ---------------------------------------------------------------------- the lease
@dataclass(frozen=True, slots=True)
class LeaseWrite:
    """Write the lease: create it (``last`` None) or compare-and-set on ``last``."""

    value: bytes
    last: int | None
    term: int


class Lease:
    """The controller lease (KV ``vmbusops_leases``/``controller``: {id, url, term}), sans-IO.

    The holder renews it (CAS on its revision) every ``ttl / 3``; a standby takes it (CAS) when its
    revision has not changed for ``ttl`` on the standby's own clock. The holder stops deciding
    once it has not renewed for ``2 * ttl / 3`` (before any standby may take it)."""

    def __init__(self, me: str, url: str, ttl: float) -> None:
        self.me = me
        self.url = url
        self.ttl = ttl
        self.term = 0
        self.revision: int | None = None
        self._seen: tuple[int | None, float] | None = None
        self._renewed: float | None = None
        self.holder: str | None = None
        #: The API address the lease's holder wrote.
        self.holder_url: str | None = None

    def active(self, now: float) -> bool:
        end = self.ends()
        return end is not None and now < end

    def ends(self) -> float | None:
        """When this controller stops acting as the holder, by its own clock (None: it does not
        hold the lease): ``2 * ttl / 3`` after its last renewal was sent."""
        return None if self._renewed is None else self._renewed + 2 * self.ttl / 3

    def observe(self, entry: KvEntry | None, now: float) -> LeaseWrite | None:
        """The lease as read now; what to write (None: nothing)."""
        rev = entry.revision if entry is not None else None
        body: dict[str, Any] = {}
        if entry is not None:
            try:
                loaded = json.loads(entry.value)
                body = loaded if isinstance(loaded, dict) else {}
            except ValueError:
                body = {}
        self.holder = body.get("id") if isinstance(body.get("id"), str) else None
        self.holder_url = body.get("url") if isinstance(body.get("url"), str) else None
        found = body.get("term")
        term = found if isinstance(found, int) else 0
        if self._seen is None or self._seen[0] != rev:
            self._seen = (rev, now)
        if entry is None:
            return self._write(None, max(self.term, 0) + 1)
        if self.holder == self.me and self.term == term and self.revision == rev:
            if self._renewed is not None and now - self._renewed >= self.ttl / 3:
                return self._write(rev, term)
            return None
        if self.holder == self.me and self._renewed is None:
            # This controller's own lease from before a restart: take it on with a new term.
            return self._write(rev, term + 1)
        self._renewed = None
        if now - self._seen[1] >= self.ttl:
            return self._write(rev, term + 1)
        return None

    def let_go(self) -> None:
        """Stop acting as the holder at once (renewing no more, the lease lapses for a standby)."""
        self._renewed = None

    def _write(self, last: int | None, term: int) -> LeaseWrite:
        value = json.dumps({"id": self.me, "url": self.url, "term": term}, separators=(",", ":")).encode()
        return LeaseWrite(value=value, last=last, term=term)

    def written(self, write: LeaseWrite, revision: int | None, now: float) -> bool:
        """The outcome of ``write`` (None: the compare-and-set lost), sent at ``now``; True if this
        one holds it."""
        if revision is None:
            self._renewed = None
            return False
        self.term = write.term
        self.revision = revision
        self.holder, self.holder_url = self.me, self.url
        self._renewed = now
        self._seen = (revision, now)
        return True


__all__ = [
    "CANARY_FAILED", "NOT_PLACED", "Action", "Decide", "HostView", "HostWatch", "Lease", "LeaseWrite", "Placed",
    "Planner", "Send", "host_protocol", "note_boots", "parse_placement", "work_protocol",
]  # fmt: skip
