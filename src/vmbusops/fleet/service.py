"""The controller behind the agent's HTTP API: :class:`FleetService`.

The API (:mod:`vmbusops.api.app`) is the agent's, unchanged: it asks its service to verify a
submission, resolve its targets, start its job, cancel, list VMs, and it reads jobs, runs and
records from the journal through the service's readers. :class:`FleetService` answers those
from the fleet:

- a submission is verified with this controller's trust policy and replay store
  (:mod:`vmbusops.engine.acceptance`, as the agent does) and, once the projection has applied the
  log as it stands, refused if the fleet ran the bundle (or a higher version of its name) before,
  whichever controller accepted it; its targets resolved against placement
  (names and globs as one agent resolves them against its VMs; groups and tags from what the live
  hosts report, :mod:`vmbusops.fleet.vm_labels`; the caller's scope checked by VM name, the
  signer's scope bounding what groups and tags selected, the rest left out), the archive's bytes put in the object store under their SHA-256, and a ``job`` fact
  published; the answer waits until the projection has applied that fact, which gives the id;
- a standby controller refuses submissions (503, ``Retry-After``) and serves everything else;
- cancel publishes a ``cancel`` fact (the active controller takes it to the hosts);
- ``GET /v1/vms`` is the placement: VM, id, host, cluster, state.

Jobs, runs, records and their SSE followers read the controller's journal exactly as the agent
reads its own (a job's targets, which never change, read once and kept); the projection feeds the
followers (:meth:`FleetService.on_commit`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import trio

from vmbusops.api.auth import Principal
from vmbusops.api.broadcast import JobEnded
from vmbusops.api.service import AgentService, NotActiveController, TargetsOutOfScope, _reaches_outside
from vmbusops.bundle.manifest import Manifest
from vmbusops.bundle.replay import refuse_replay
from vmbusops.bundle.verify import AcceptedBundle, read_unverified
from vmbusops.engine import JobSource, acceptance, resolve_targets
from vmbusops.engine.states import State
from vmbusops.engine.targets import within_scope
from vmbusops.errors import ConfigError, JobStateError, VmbusOpsError
from vmbusops.fleet.messages import CancelFact, JobFact, RunPlacement
from vmbusops.fleet.names import HOSTS_BUCKET
from vmbusops.fleet.planner import Decide, Placed, parse_host_entry
from vmbusops.fleet.vm_labels import resolve_in_fleet
from vmbusops.guestops.supervisor import HostStatus

if TYPE_CHECKING:
    from vmbusops.api.auth import PrincipalStore
    from vmbusops.api.broadcast import Broadcaster
    from vmbusops.api.metrics import AgentMetrics
    from vmbusops.config import AgentConfig
    from vmbusops.engine import Engine
    from vmbusops.engine.journal import Journal
    from vmbusops.engine.readers import JournalReaders
    from vmbusops.fleet.controller import Controller
    from vmbusops.guestops.supervisor import HostSupervisor

#: How long a submission or a cancel waits for the projection to apply its fact.
APPLY_WAIT_SECONDS = 30.0


def _out_of_scope() -> list[str]:
    raise TargetsOutOfScope(())


class FleetNotReady(VmbusOpsError):
    """The fleet could not take the request now (the broker, or the log, is behind)."""

    transient = True


@dataclass
class FleetHosts:
    """What ``/v1/health`` asks of "the host": here, the broker."""

    controller: Controller
    since: float

    @property
    def status(self) -> HostStatus:
        halted = self.controller.projection.halted
        up = self.controller.broker_up and halted is None
        reason = None if up else "the broker cannot be reached"
        if halted is not None:
            reason = f"this controller cannot follow the fleet's log: {halted[1]}"
        return HostStatus(name="fleet", up=up, since=self.since, reason=reason, reconnects=0)

    @property
    def retry_after(self) -> float:
        return 0.0 if self.status.up else 2.0


class FleetService(AgentService):
    """:class:`AgentService`'s interface over the fleet controller (no engine, no host)."""

    def __init__(
        self,
        *,
        controller: Controller,
        reader: Journal,
        readers: JournalReaders,
        principals: PrincipalStore,
        config: AgentConfig,
        broadcaster: Broadcaster,
        metrics: AgentMetrics,
    ) -> None:
        # The agent's engine, host and job nursery have no part here: every method that used
        # them is answered below from the controller.
        super().__init__(
            engine=cast("Engine", None), hosts=cast("HostSupervisor", FleetHosts(controller, time.time())),
            reader=reader, readers=readers, jobs=cast(trio.Nursery, None), principals=principals, config=config,
            broadcaster=broadcaster, metrics=metrics,
        )  # fmt: skip
        self.controller = controller
        #: Bundle id -> the archive's SHA-256, between acceptance and the job fact.
        self._digests: dict[str, str] = {}

    # ------------------------------------------------------------------ from the projection
    def job_created(self, job_id: int) -> None:
        self.running.add(job_id)
        self.metrics.jobs_running.set(len(self.running))

    def job_ended(self, job_id: int, state: State) -> None:
        self.job_left(job_id)
        self.broadcaster.publish(JobEnded(job_id, state))

    # ------------------------------------------------------------------ placement
    def _placed_by_name(self) -> dict[str, list[Placed]]:
        by_name: dict[str, list[Placed]] = {}
        for placed in self.controller.placement.values():
            by_name.setdefault(placed.vm.casefold(), []).append(placed)
        return by_name

    async def check_targets(self, manifest: Manifest, who: Principal) -> list[str]:
        by_name = self._placed_by_name()
        names = sorted({p[0].vm for p in by_name.values()}, key=str.casefold)
        if manifest.targets.groups or manifest.targets.tags:
            targets = await self._by_groups_or_tags(manifest)
            if not manifest.targets.vms:
                # As on one agent: VMs groups or tags alone select outside the caller's scope
                # are dropped unnamed (not the caller's to run on, nor to learn of).
                targets = [vm for vm in targets if who.covers_vm(vm)] or _out_of_scope()
        else:
            targets = resolve_targets(manifest, names)
        if any(not who.covers_vm(vm) for vm in targets) or (not targets and not who.sees_all_vms()):
            raise TargetsOutOfScope(tuple(p for p in manifest.targets.vms if _reaches_outside(p, targets, who)))
        if not targets:
            raise ConfigError(
                f"the bundle's targets ({', '.join(manifest.targets.vms)}) match no VM on a host of the fleet",
                hint="name VMs the fleet's agents report (see GET /v1/vms)",
            )
        unplaced = [vm for vm in targets if vm.casefold() not in by_name]
        if unplaced:
            raise ConfigError(
                f"VM {unplaced[0]} is on no host of the fleet",
                hint="name VMs the fleet's agents report (see GET /v1/vms)",
            )
        twice = [vm for vm in targets if len(by_name[vm.casefold()]) > 1]
        if twice:
            raise ConfigError(
                f"the name {twice[0]} is used by VMs on several hosts of the fleet",
                hint="rename one of them; a fleet job names each VM once",
            )
        return targets

    async def _by_groups_or_tags(self, manifest: Manifest) -> list[str]:
        """The VMs on live hosts that the bundle's groups and tags select, from the hosts' own
        reports (read now: a submission is rare, the entries change every beat)."""
        live = {h for h, view in self.controller.hosts.items() if view.alive}
        entries = {}
        for key, entry in (await self.controller.broker.kv_entries(HOSTS_BUCKET)).items():
            body = parse_host_entry(entry)
            if body is not None and key in live:
                entries[key] = body
        placed = [(p.vm, p.vm_id, p.host) for p in self.controller.placement.values() if p.host in live]
        return resolve_in_fleet(manifest, placed, entries)

    async def vm_listing(self, who: Principal) -> list[dict[str, Any]]:
        return [
            {"vm": p.vm, "id": p.vm_id, "host": p.host, "cluster": p.cluster, "state": p.state,
             "alive": bool(self.controller.hosts.get(p.host) and self.controller.hosts[p.host].alive),
             # What one agent's listing also has, unknown to the fleet (the console shows "unknown").
             "heartbeat": None, "guest_services": None, "uptime": None}
            for p in sorted(self.controller.placement.values(), key=lambda p: (p.vm.casefold(), p.vm_id))
            if who.covers_vm(p.vm)
        ]  # fmt: skip

    # ------------------------------------------------------------------ submit
    def _refuse_if_standby(self) -> None:
        if not self.controller.active():
            raise NotActiveController(self.controller.leader_url)

    async def accept(self, path: Path, who: Principal) -> tuple[AcceptedBundle, list[str]]:
        """Verify as the agent does (this controller's trust policy and replay store), refuse a
        bundle the fleet ran before (whichever controller accepted it), resolve the targets
        against placement, and put the archive in the object store."""
        self._refuse_if_standby()
        _, unverified = await trio.to_thread.run_sync(read_unverified, path)
        targets = await self.check_targets(unverified, who)
        async with self._accept_lock:
            bundle = await trio.to_thread.run_sync(acceptance.accept, path, self.reader)
            try:
                await self._refuse_if_the_fleet_had_it(bundle.manifest)
            except BaseException:
                await self.settle(bundle, made=False)
                raise
        try:
            data = await trio.Path(path).read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            await self.controller.broker.put_bundle(digest, data)
        except BaseException:
            await self.settle(bundle, made=False)
            raise
        self._digests[bundle.manifest.id] = digest
        return bundle, targets

    async def _refuse_if_the_fleet_had_it(self, manifest: Manifest) -> None:
        """This controller's replay store knows only what this controller accepted; after a
        failover, the bundles the other one accepted are in the log alone. So once the
        projection has applied the log as it stands now, a job of the same bundle id, or a
        higher version of the same bundle name, refuses it here as the replay store would."""
        head = await self.controller.broker.last_log_seq()
        if not await self.controller.wait_applied(head, APPLY_WAIT_SECONDS):
            raise FleetNotReady(
                f"this controller has not yet read the fleet's log up to sequence {head}",
                hint="submit again in a moment",
            )
        accepted, last = await self.read(lambda j: (j.has_bundle(manifest.id), j.last_bundle_version(manifest.name)))
        refuse_replay(
            bundle_id=manifest.id, name=manifest.name, version=manifest.version, accepted=accepted, last=last,
            where="by the fleet",
        )  # fmt: skip

    async def start_job(self, source: JobSource, *, origin: str) -> int:
        """Publish the job fact; its id once this controller's projection has applied it."""
        digest = self._digests.pop(source.manifest.id, None)
        if digest is None or source.targets is None:
            raise FleetNotReady("the submission was not accepted by this controller")
        self._refuse_if_standby()
        # The signer's scope bounds what groups and tags selected, by VM name (a bundle's own
        # names were checked against it when it was accepted); the rest is left out, with why.
        kept, left_out = within_scope(source.targets, source.scope_vms)
        by_name = self._placed_by_name()
        runs = tuple(
            RunPlacement(vm=vm, vm_id=by_name[vm.casefold()][0].vm_id, host=by_name[vm.casefold()][0].host)
            for vm in kept
        )
        fact = JobFact(
            submission=uuid.uuid4().hex, bundle=digest,
            envelope=source.envelope.decode("utf-8") if source.envelope is not None else "",
            manifest=source.manifest.to_json().decode("utf-8"), source=source.source, submitter=source.submitter,
            enable_guest_services=source.enable_guest_services, runs=runs, time=time.time(),
            left_out=json.dumps([lo.to_json() for lo in left_out]) if left_out else None,
        )  # fmt: skip
        seq = await self.controller.publish_fact(Decide(fact))
        if not await self.controller.wait_applied(seq, APPLY_WAIT_SECONDS):
            raise FleetNotReady(
                f"the job was submitted (log sequence {seq}) but this controller has not applied it yet",
                hint="list jobs in a moment: it will be there",
            )
        job_id = await trio.to_thread.run_sync(self.controller.journal.job_of_submission, fact.submission)
        if job_id is None:
            raise FleetNotReady("the job fact was not applied (see the controller's log)")
        return int(job_id)

    async def settle(self, bundle: AcceptedBundle, *, made: bool) -> None:
        await super().settle(bundle, made=made)
        # The hosts run the bundle from the object store; this copy was only for verifying it.
        await trio.to_thread.run_sync(lambda: shutil.rmtree(bundle.directory, ignore_errors=True))

    # ------------------------------------------------------------------ cancel
    async def cancel(self, job_id: int, vm: str | None) -> int:
        run_id = None
        if vm is not None:
            runs = await self.read(lambda j: j.run_ids(job_id))
            run_id = next((i for name, i in runs.items() if name.casefold() == vm.casefold()), None)
            if run_id is None:
                return 0
        seq = await self.controller.publish_fact(Decide(CancelFact(job=job_id, run=run_id, time=time.time())))
        if self.controller.projection.halted is None:  # a halted one never applies it: the others do
            await self.controller.wait_applied(seq, APPLY_WAIT_SECONDS)
        return 1

    async def resume_job(self, job_id: int, *, origin: str) -> None:
        """Nothing to resume here: a fleet job's run whose host was lost is dispatched again by the
        controller once its VM is seen (``docs/adr/0007-fleet.md``)."""
        raise JobStateError(
            f"job {job_id} is a fleet job; the controller resumes its runs itself, once their VMs are seen",
            hint=f"see where its runs stand with: vmbusops jobs show {job_id} --agent URL",
        )


__all__ = ["FleetHosts", "FleetNotReady", "FleetService"]
