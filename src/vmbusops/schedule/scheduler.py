"""The scheduler: one task per registered schedule, starting each tick's job in the agent.

For each tick (see :mod:`.plan`): sleep until the run's start (tick + jitter); if the previous
run of the same schedule is still active, wait for it until the cut-off (no overlap), else skip
the tick; never start after the cut-off; never start from an expired bundle. The job's delivery
timeout is capped at the cut-off, so no target starts after it either. Every tick ends as one
outcome in the store (``started``, ``skipped: ...``, ``refused: ...``, ``missed``), and every skip
is logged. Before each tick's job the kept bundle is verified again against today's trust policy
(the launcher does it): a refusal is the tick's outcome and is logged, and the schedule keeps its
next ticks, which run again once the bundle passes (an expired bundle ends the schedule, which is
then removed from the store, as ``schedule remove`` removes one; a task that wakes for a tick of a
schedule no longer in the store starts nothing). A job
that cannot start on the host at its tick (its targets select no VM there now, its credential is
gone) is refused the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from vmbusops.errors import BundleError, ConfigError, CredentialStoreError, HostDownError
from vmbusops.schedule.clock import Clock, SystemClock
from vmbusops.schedule.plan import Window, catch_up, next_window
from vmbusops.schedule.store import ScheduleEntry, ScheduleStore

if TYPE_CHECKING:
    from vmbusops.api.service import AgentService
    from vmbusops.bundle.verify import AcceptedBundle

log = logging.getLogger("vmbusops.schedule")

Launch = Callable[[ScheduleEntry, Window], Awaitable[int]]
JobActive = Callable[[int], Awaitable[bool]]


def entry_json(entry: ScheduleEntry, clock: Clock) -> dict[str, Any]:
    """A schedule as ``schedule list`` and the API show it; one whose bundle has expired has no
    next run (the agent forgets it at its next tick, or at its start)."""
    s = entry.manifest.schedule
    assert s is not None
    expired = entry.manifest.is_expired(clock.now())
    upcoming = None if expired else next_window(entry.name, s, max(entry.last_tick, clock.now()))
    return {
        "name": entry.name,
        "version": entry.version,
        "cron": s.cron,
        "timezone": s.timezone,
        "window_seconds": s.window_seconds,
        "cutoff_seconds": s.cutoff_seconds,
        "jitter_seconds": s.jitter_seconds,
        "missed_policy": s.missed.value,
        "targets": list(entry.manifest.targets.vms),
        "next_run": upcoming.start_at.isoformat() if upcoming is not None else None,
        "next_cutoff": upcoming.cutoff_at.isoformat() if upcoming is not None else None,
        "expires": entry.manifest.expires.isoformat(),
        "expired": expired,
        "last_tick": entry.last_tick.isoformat(),
        "last_job": entry.last_job,
        "last_outcome": entry.last_outcome,
        "missed": entry.missed,
    }


class Scheduler:
    def __init__(
        self,
        store: ScheduleStore,
        *,
        launch: Launch,
        job_active: JobActive,
        clock: Clock,
        poll: float = 1.0,
    ) -> None:
        self.store = store
        self.launch = launch
        self.job_active = job_active
        self.clock = clock
        self.poll = poll
        self._makeup: dict[str, Window] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery: trio.Nursery | None = None
        #: (schedule, tick, outcome) of every handled tick, newest last.
        self.history: list[tuple[str, Any, str]] = []

    @classmethod
    def for_service(cls, service: AgentService) -> Scheduler:
        from vmbusops.engine import JobSource
        from vmbusops.engine.acceptance import recheck_kept

        clock = SystemClock()
        store = ScheduleStore()

        async def launch(entry: ScheduleEntry, window: Window) -> int:
            directory = Path(entry.bundle_dir) if entry.bundle_dir else None
            verified = await trio.to_thread.run_sync(recheck_kept, entry.envelope, entry.manifest, directory)
            execution = entry.manifest.execution
            left = (window.cutoff_at - clock.now()).total_seconds()
            capped = replace(
                execution, delivery_timeout_seconds=max(1.0, min(execution.delivery_timeout_seconds, left))
            )
            source = JobSource.from_schedule(
                entry.manifest,
                bundle_dir=entry.bundle_dir,
                source=entry.source,
                enable_guest_services=entry.enable_guest_services,
                execution=capped,
                envelope=entry.envelope,
                schedule=entry.name,
                scope_vms=verified.scope.vms,
                start_by=window.cutoff_at.timestamp(),
            )
            # A host being reopened may come back within the window: wait for it until the cut-off.
            await service.hosts.wait_current(max(0.0, left))
            service.metrics.scheduled_runs.labels("started").inc()
            return await service.start_job(source, origin=f"schedule:{entry.name}")

        async def job_active(job_id: int) -> bool:
            return (await service.read(lambda j: j.job(job_id))).state.active

        scheduler = cls(store, launch=launch, job_active=job_active, clock=clock)
        service.register_schedule = scheduler.register
        service.list_schedules = scheduler.listing
        service.remove_schedule = scheduler.remove
        return scheduler

    def listing(self) -> list[dict[str, Any]]:
        return [entry_json(e, self.clock) for e in self.store.all()]

    def remove(self, name: str) -> bool:
        """Forget the schedule ``name`` and stop its task (a job it started goes on); whether
        there was one."""
        removed = self.store.remove(name)
        scope = self._scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        if removed:
            log.info("schedule removed", extra={"event": "schedule-removed", "schedule": name})
        return removed

    def _expired(self, entry: ScheduleEntry) -> None:
        """The schedule's bundle has expired: no tick of it can ever run, so it is forgotten."""
        self.store.remove(entry.name)
        log.warning(
            "schedule's bundle expired; no more runs, the schedule is removed",
            extra={"event": "schedule-expired", "schedule": entry.name, "expires": entry.manifest.expires.isoformat()},
        )

    # ------------------------------------------------------------------ start-up
    async def load(self) -> None:
        """Report (and per policy, make up) the ticks missed while no agent ran."""
        now = self.clock.now()
        for entry in self.store.all():
            schedule = entry.manifest.schedule
            if schedule is None:
                continue
            if entry.manifest.is_expired(now):
                self._expired(entry)
                continue
            caught = catch_up(entry.name, schedule, entry.last_tick, now)
            if not caught.missed:
                continue
            log.warning(
                "missed scheduled runs while the agent was down",
                extra={
                    "event": "schedule-missed", "schedule": entry.name, "missed": len(caught.missed),
                    "first": caught.missed[0].isoformat(), "last": caught.missed[-1].isoformat(),
                    "policy": schedule.missed.value,
                },
            )  # fmt: skip
            for tick in caught.missed:
                self.history.append((entry.name, tick, "missed"))
            self.store.handled(entry.name, caught.resume_after, outcome="missed", missed=len(caught.missed))
            if caught.makeup is not None:
                self._makeup[entry.name] = caught.makeup

    # ------------------------------------------------------------------ running
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for entry in self.store.all():
                self._start(entry.name)
            await trio.sleep_forever()

    def _start(self, name: str) -> None:
        old = self._scopes.pop(name, None)
        if old is not None:
            old.cancel()
        scope = trio.CancelScope()
        self._scopes[name] = scope
        assert self._nursery is not None
        self._nursery.start_soon(self._loop, name, scope)

    async def register(self, bundle: AcceptedBundle) -> dict[str, Any]:
        entry = self.store.register(
            bundle.manifest,
            bundle_dir=str(bundle.directory),
            source=bundle.source,
            enable_guest_services=bundle.scope.enable_guest_services,
            envelope=bundle.envelope.to_json(),
            now=self.clock.now(),
        )
        if self._nursery is not None:
            self._start(entry.name)
        return entry_json(entry, self.clock)

    async def _loop(self, name: str, scope: trio.CancelScope) -> None:
        with scope:
            while True:
                entries = [e for e in self.store.all() if e.name == name]
                if not entries:
                    return
                entry = entries[0]
                schedule = entry.manifest.schedule
                if schedule is None:
                    return
                window = self._makeup.pop(name, None) or next_window(name, schedule, entry.last_tick)
                await self.clock.sleep_until(window.start_at)
                if not any(e.name == name and e.bundle_id == entry.bundle_id for e in self.store.all()):
                    return  # removed (schedule remove, here or in another process) while it slept
                outcome, job = await self._fire(entry, window)
                self.history.append((name, window.tick, outcome))
                if outcome == "expired":
                    self._expired(entry)
                    return
                missed = 0 if outcome == "started" else 1
                self.store.handled(name, window.tick, outcome=outcome, job=job, missed=missed)

    async def _fire(self, entry: ScheduleEntry, window: Window) -> tuple[str, int | None]:
        now = self.clock.now()
        fields = {"schedule": entry.name, "tick": window.tick.isoformat()}
        if entry.manifest.is_expired(now):
            return "expired", None
        if entry.last_job is not None:
            while await self.job_active(entry.last_job):
                if self.clock.now() >= window.cutoff_at:
                    log.warning(
                        "tick skipped: the previous run is still active at the cut-off",
                        extra={
                            "event": "schedule-skipped",
                            "why": "overlap",
                            "previous_job": entry.last_job,
                            **fields,
                        },
                    )
                    return "skipped: previous run still active", None
                await self.clock.sleep_until(
                    min(self.clock.now() + timedelta(seconds=self.poll), window.cutoff_at)
                )
        if self.clock.now() >= window.cutoff_at:
            log.warning(
                "tick skipped: past the cut-off",
                extra={"event": "schedule-skipped", "why": "cutoff", **fields},
            )
            return "skipped: past the cut-off", None
        try:
            job = await self.launch(entry, window)
        except HostDownError as exc:
            # The agent is reopening its host and it did not come back before the cut-off.
            log.warning(
                "tick skipped: the host is down",
                extra={"event": "schedule-skipped", "why": "host-down", "host": exc.host, **fields},
            )
            return "skipped: host down", None
        except BundleError as exc:
            log.warning(
                "tick refused: the schedule's bundle failed verification again",
                extra={"event": "schedule-refused", "why": exc.message, **fields},
            )
            return f"refused: {exc.message}", None
        except (ConfigError, CredentialStoreError) as exc:
            # The job cannot start on this host now (its targets select no VM, its credential is
            # gone): this tick is refused, the schedule goes on, and so does the agent.
            log.warning(
                "tick refused: the job cannot start on this host",
                extra={"event": "schedule-refused", "why": exc.message, **fields},
            )
            return f"refused: {exc.message}", None
        log.info("scheduled run started", extra={"event": "schedule-run", "job": job, **fields})
        return "started", job
