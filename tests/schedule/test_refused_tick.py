"""A tick whose bundle no longer passes verification is refused, logged, and the schedule goes on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import trio
from tests.schedule.test_scheduler import T0, Host, advance_to, scheduled

from vmbusops.bundle.errors import UntrustedSignerError
from vmbusops.engine.targets import refuse_no_targets
from vmbusops.schedule.clock import ManualClock
from vmbusops.schedule.plan import Window
from vmbusops.schedule.scheduler import Scheduler
from vmbusops.schedule.store import ScheduleEntry, ScheduleStore


class DistrustingHost(Host):
    """The agent's launcher while the signer is out of the trust policy: it verifies, and refuses."""

    trusted = False

    async def launch(self, entry: ScheduleEntry, window: Window) -> int:
        if not self.trusted:
            raise UntrustedSignerError("no signature from a trusted key (signed by: 3f1c)")
        return await super().launch(entry, window)


@asynccontextmanager
async def scheduling(tmp_path: Path, host: Host) -> AsyncIterator[tuple[Scheduler, ScheduleStore]]:
    """The nightly schedule registered and its scheduler running on ``host``'s clock."""
    store = ScheduleStore(tmp_path / "schedules.sqlite")
    scheduler = Scheduler(store, launch=host.launch, job_active=host.job_active, clock=host.clock, poll=60)
    store.register(scheduled(jitter=0), bundle_dir=None, source="test", now=T0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        yield scheduler, store
        nursery.cancel_scope.cancel()


async def test_a_refused_tick_is_its_outcome_and_later_ticks_still_run(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    host = DistrustingHost(clock)
    async with scheduling(tmp_path, host) as (scheduler, store):
        await advance_to(clock, T0 + timedelta(hours=1, minutes=1))
        assert host.launched == []
        outcome = scheduler.history[-1][2]
        assert outcome == "refused: no signature from a trusted key (signed by: 3f1c)"
        assert store.get("nightly-patch").last_outcome == outcome
        host.trusted = True
        await advance_to(clock, T0 + timedelta(days=1, hours=1, minutes=1))
        assert len(host.launched) == 1
        assert scheduler.history[-1][2] == "started"


class VanishedHost(Host):
    """The agent's launcher once the VMs the schedule's globs named are gone: the job is refused
    as the engine refuses it (targets.refuse_no_targets), before any job is made."""

    gone = True

    async def launch(self, entry: ScheduleEntry, window: Window) -> int:
        if self.gone:
            refuse_no_targets(entry.manifest, [])
        return await super().launch(entry, window)


async def test_a_tick_whose_targets_select_no_vm_is_refused_and_the_schedule_goes_on(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    host = VanishedHost(clock)
    async with scheduling(tmp_path, host) as (scheduler, _):
        await advance_to(clock, T0 + timedelta(hours=1, minutes=1))
        outcome = scheduler.history[-1][2]
        assert outcome.startswith("refused: nightly-patch: the bundle's targets") and "select no VM" in outcome
        host.gone = False
        await advance_to(clock, T0 + timedelta(days=1, hours=1, minutes=1))
        assert scheduler.history[-1][2] == "started"
