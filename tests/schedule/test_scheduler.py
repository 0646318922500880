"""Schedules on a manual clock: windows, jitter, cut-off, no overlap, missed runs, expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import trio
import trio.testing
from tests.builders import manifest, script

from vmbusops.bundle.manifest import Manifest
from vmbusops.errors import HostDownError
from vmbusops.schedule.clock import ManualClock
from vmbusops.schedule.plan import Window, catch_up, next_window, window_of
from vmbusops.schedule.scheduler import Scheduler
from vmbusops.schedule.store import ScheduleEntry, ScheduleStore

T0 = datetime(2026, 3, 1, 1, 0, tzinfo=UTC)


def scheduled(
    *, missed: str = "skip", jitter: float = 300, expires: datetime | None = None, tz: str = "UTC"
) -> Manifest:
    return manifest(
        ["a-*"], [script("s", "Write-Output 1")], name="nightly-patch",
        issued=T0 - timedelta(days=1), expires=expires or T0 + timedelta(days=30),
        schedule={"cron": "0 2 * * *", "window_seconds": 3600, "cutoff_seconds": 600,
                  "jitter_seconds": jitter, "missed": missed, "timezone": tz},
    )  # fmt: skip


class Host:
    """Stands in for the agent: records launches; the test says which jobs are still active."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.launched: list[tuple[datetime, Window]] = []
        self.active: set[int] = set()

    async def launch(self, entry: ScheduleEntry, window: Window) -> int:
        assert window.start_at <= self.clock.now() < window.cutoff_at
        self.launched.append((self.clock.now(), window))
        job = len(self.launched)
        self.active.add(job)
        return job

    async def job_active(self, job: int) -> bool:
        return job in self.active


def make(tmp_path: Path, clock: ManualClock) -> tuple[Scheduler, Host, ScheduleStore]:
    host = Host(clock)
    store = ScheduleStore(tmp_path / "schedules.sqlite")
    return Scheduler(store, launch=host.launch, job_active=host.job_active, clock=clock, poll=60), host, store


async def advance_to(clock: ManualClock, when: datetime) -> None:
    await trio.testing.wait_all_tasks_blocked()
    clock.set(when)
    await trio.testing.wait_all_tasks_blocked()


def test_windows_jitter_and_time_zones() -> None:
    m = scheduled()
    assert m.schedule is not None
    w = next_window("nightly-patch", m.schedule, T0)
    assert w.tick == datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    assert w.tick <= w.start_at <= w.tick + timedelta(seconds=300)
    assert w.cutoff_at == w.tick + timedelta(seconds=3000) and w.end_at == w.tick + timedelta(hours=1)
    assert window_of("nightly-patch", w.tick, m.schedule) == w  # the same after a restart
    other = [window_of(f"s{i}", w.tick, m.schedule).start_at for i in range(20)]
    assert len(set(other)) > 10  # spread over the jitter
    paris = scheduled(tz="Europe/Paris").schedule
    assert paris is not None
    assert next_window("x", paris, T0).tick == datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # 02:00 CET


async def test_runs_in_window_never_overlaps_and_never_starts_after_cutoff(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    scheduler, host, store = make(tmp_path, clock)
    m = scheduled()
    store.register(m, bundle_dir=None, source="test", now=T0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        day1 = next_window("nightly-patch", m.schedule, T0)  # type: ignore[arg-type]
        await advance_to(clock, day1.tick)
        assert len(host.launched) == (0 if day1.start_at > day1.tick else 1)
        await advance_to(clock, day1.start_at)
        assert len(host.launched) == 1 and host.launched[0][1].tick == day1.tick

        # Day 2: job 1 is still running; the tick waits for it, then is skipped at the cut-off.
        day2 = window_of("nightly-patch", day1.tick + timedelta(days=1), m.schedule)  # type: ignore[arg-type]
        await advance_to(clock, day2.start_at)
        assert len(host.launched) == 1
        await advance_to(clock, day2.start_at + timedelta(minutes=20))
        assert len(host.launched) == 1
        await advance_to(clock, day2.cutoff_at)
        assert len(host.launched) == 1
        assert scheduler.history[-1] == ("nightly-patch", day2.tick, "skipped: previous run still active")

        # Day 3: job 1 ends while the tick waits; the run starts late but before the cut-off.
        day3 = window_of("nightly-patch", day1.tick + timedelta(days=2), m.schedule)  # type: ignore[arg-type]
        await advance_to(clock, day3.start_at)
        host.active.clear()
        await advance_to(clock, day3.start_at + timedelta(seconds=61))
        assert len(host.launched) == 2 and host.launched[1][1].tick == day3.tick

        # Day 4: the agent only gets to the tick after its cut-off (a clock jump): skipped.
        host.active.clear()
        day4 = window_of("nightly-patch", day1.tick + timedelta(days=3), m.schedule)  # type: ignore[arg-type]
        await advance_to(clock, day4.cutoff_at + timedelta(seconds=1))
        assert len(host.launched) == 2
        assert scheduler.history[-1] == ("nightly-patch", day4.tick, "skipped: past the cut-off")
        nursery.cancel_scope.cancel()
    entry = store.get("nightly-patch")
    assert entry.last_job == 2 and entry.missed == 2 and entry.last_tick == day4.tick


async def test_missed_runs_are_reported_and_skipped_or_run_once(tmp_path: Path) -> None:
    for policy, expect_launch in (("skip", False), ("run-once", True)):
        down_until = T0 + timedelta(days=3, hours=5)  # the ticks of March 1-4 passed while down
        clock = ManualClock(down_until)
        (tmp_path / policy).mkdir()
        scheduler, host, store = make(tmp_path / policy, clock)
        store.register(scheduled(missed=policy), bundle_dir=None, source="test", now=T0)
        await scheduler.load()
        missed = [h for h in scheduler.history if h[2] == "missed"]
        assert [h[1].day for h in missed] == [1, 2, 3, 4]
        assert store.get("nightly-patch").missed == 4
        async with trio.open_nursery() as nursery:
            nursery.start_soon(scheduler.run)
            await trio.testing.wait_all_tasks_blocked()
            assert (len(host.launched) == 1) is expect_launch
            if expect_launch:
                started, window = host.launched[0]
                assert started == down_until and window.cutoff_at == down_until + timedelta(seconds=3000)
            nursery.cancel_scope.cancel()
    # A tick whose window is still open when the agent comes back is not missed: it runs, late.
    plan = catch_up("x", scheduled().schedule, T0, T0 + timedelta(hours=1, minutes=30))  # type: ignore[arg-type]
    assert plan.missed == () and plan.makeup is None


async def test_an_expired_bundle_stops_its_schedule(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    scheduler, host, store = make(tmp_path, clock)
    m = scheduled(expires=T0 + timedelta(hours=1, minutes=30))
    store.register(m, bundle_dir=None, source="test", now=T0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        await advance_to(clock, T0 + timedelta(hours=2))
        assert host.launched == []
        assert scheduler.history[-1][2] == "expired"
        assert store.all() == []  # forgotten: schedule list no longer shows runs to come
        await advance_to(clock, T0 + timedelta(days=2))
        assert host.launched == []
        nursery.cancel_scope.cancel()


async def test_an_expired_schedule_is_listed_without_a_next_run_and_forgotten_at_start(tmp_path: Path) -> None:
    clock = ManualClock(T0 + timedelta(days=2))
    scheduler, _, store = make(tmp_path, clock)
    store.register(scheduled(expires=T0 + timedelta(days=1)), bundle_dir=None, source="test", now=T0)
    [shown] = scheduler.listing()
    assert (shown["expired"], shown["next_run"], shown["next_cutoff"]) == (True, None, None)
    await scheduler.load()
    assert store.all() == [] and scheduler.history == []  # no "missed" ticks counted for it


async def test_a_removed_schedule_starts_nothing_even_when_removed_by_another_process(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    scheduler, host, store = make(tmp_path, clock)
    m = scheduled(jitter=0)
    store.register(m, bundle_dir=None, source="test", now=T0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        day1 = next_window("nightly-patch", m.schedule, T0)  # type: ignore[arg-type]
        await advance_to(clock, day1.start_at)
        assert len(host.launched) == 1
        # `vmbusops schedule remove` on the host: its own connection to the store, while the
        # agent's task sleeps until the next tick.
        elsewhere = ScheduleStore(tmp_path / "schedules.sqlite")
        assert elsewhere.remove("nightly-patch") and not elsewhere.remove("nightly-patch")
        elsewhere.close()
        await advance_to(clock, day1.start_at + timedelta(days=3))
        assert len(host.launched) == 1
        # Registered again, then removed through the agent (the API's way): the task stops at once.
        store.register(m, bundle_dir=None, source="test", now=clock.now())
        scheduler._start("nightly-patch")
        assert scheduler.remove("nightly-patch") and not scheduler.remove("nightly-patch")
        await advance_to(clock, day1.start_at + timedelta(days=6))
        assert len(host.launched) == 1
        nursery.cancel_scope.cancel()


async def test_a_tick_while_the_host_is_down_is_skipped_and_the_schedule_goes_on(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    host = Host(clock)
    down = True

    async def launch(entry: ScheduleEntry, window: Window) -> int:
        if down:
            raise HostDownError("the Hyper-V host sim is down", host="sim", since=0.0, retry_after=1.0)
        return await host.launch(entry, window)

    store = ScheduleStore(tmp_path / "schedules.sqlite")
    scheduler = Scheduler(store, launch=launch, job_active=host.job_active, clock=clock, poll=60)
    store.register(scheduled(jitter=0), bundle_dir=None, source="test", now=T0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(scheduler.run)
        await advance_to(clock, T0 + timedelta(hours=1, minutes=1))
        assert [outcome for _, _, outcome in scheduler.history] == ["skipped: host down"]
        down = False
        await advance_to(clock, T0 + timedelta(days=1, hours=1, minutes=1))
        assert [outcome for _, _, outcome in scheduler.history] == ["skipped: host down", "started"]
        assert len(host.launched) == 1
        nursery.cancel_scope.cancel()
