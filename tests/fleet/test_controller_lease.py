"""The controller lease on trio's MockClock, over an in-memory broker: the lease is kept on its own
timer, so a slow decision neither lets it lapse nor lets a standby take it; and a controller that
cannot renew is cut off mid-decision before a standby may take over (no split brain)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing
from tests.fleet.factlog import FactLog
from tests.fleet.membroker import Bus, MemBroker

from vmbusops.fleet import messages, names
from vmbusops.fleet.controller import Controller, ControllerOptions
from vmbusops.fleet.service import FleetHosts
from vmbusops.fleet.store import FleetJournal

TTL = 3.0


@asynccontextmanager
async def controller(bus: Bus, tmp: Path, name: str) -> AsyncIterator[tuple[Controller, MemBroker]]:
    broker = MemBroker(bus, name)
    c = Controller(
        broker, FleetJournal(tmp / f"{name}.sqlite"),
        ControllerOptions(id=name, url=f"http://{name}", canary=0, host_ttl=30.0, lease_ttl=TTL, tick=0.1),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run)
        yield c, broker
        nursery.cancel_scope.cancel()
    c.journal.close()


async def host(broker: MemBroker, name: str, vm: str) -> None:
    """Act as host ``name``'s agent: its entry moves, ``vm`` is placed on it."""
    body = {"vm": vm, "vm_id": f"id-{vm}", "host": name, "cluster": None, "state": "Running", "boot": "b1"}
    await broker.kv_put(names.PLACEMENT_BUCKET, f"id-{vm}", json.dumps(body).encode())
    seq = 0
    while True:
        seq += 1
        entry = {"host": name, "cluster": None, "boot": "b1", "seq": seq, "time": 0.0, "vms": [], "max_sessions": 4}
        await broker.kv_put(names.HOSTS_BUCKET, name, json.dumps(entry).encode())
        await trio.sleep(1.0)


async def submit(bus: Bus) -> None:
    job = FactLog().job([("vm1", "hv1")])
    await MemBroker(bus, "api").publish(names.CTL_SUBJECT, messages.encode(job), msg_id=job.msg_id())


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (in the clock's time) until ``predicate`` holds: controllers' tasks move it."""
    while not predicate():  # noqa: ASYNC110 - polled state of other tasks
        await trio.sleep(0.1)


def lease_term(bus: Bus) -> tuple[str, int]:
    body = json.loads(bus.buckets[names.LEASES_BUCKET][names.CONTROLLER_LEASE_KEY].value)
    return body["id"], body["term"]


async def test_a_slow_decision_neither_lapses_the_lease_nor_hands_it_over(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = Bus()
    async with trio.open_nursery() as agents, controller(bus, tmp_path, "a") as (a, a_broker):
        agents.start_soon(host, MemBroker(bus, "hv1"), "hv1", "vm1")
        await until(a.active)
        async with controller(bus, tmp_path, "b") as (b, _):
            a_broker.stall = release = trio.Event()
            await submit(bus)
            # a's decision (the run's dispatch) hangs in its publish for many lease periods.
            await trio.sleep(10 * TTL)
            assert not bus.work
            assert a.active() and not b.active()
            assert lease_term(bus) == ("a", 1)
            release.set()
            await until(lambda: bool(bus.work))
            assert [m for kind, who, m in bus.events if kind == "fact" and who != "api"] == ["dispatch-1-1-1"]
            assert lease_term(bus) == ("a", 1) and not b.active()
        agents.cancel_scope.cancel()


async def test_a_controller_that_cannot_renew_stops_deciding_before_the_standby_takes_over(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    bus = Bus()
    async with trio.open_nursery() as agents, controller(bus, tmp_path, "a") as (a, a_broker):
        agents.start_soon(host, MemBroker(bus, "hv1"), "hv1", "vm1")
        await until(a.active)
        async with controller(bus, tmp_path, "b") as (b, _):
            # a loses the leases bucket while its decision hangs in a publish.
            a_broker.stall = release = trio.Event()
            a_broker.kv_broken = True
            await submit(bus)
            await until(b.active)
            assert not a.active()
            release.set()  # what a was deciding must not reach the log now
            await until(lambda: bool(bus.work))
            await trio.sleep(10 * TTL)
            took = next(i for i, (kind, who, _) in enumerate(bus.events) if kind == "lease" and who == "b")
            assert [who for kind, who, _ in bus.events[took:] if kind == "fact"] == ["b"]
            assert lease_term(bus) == ("b", 2)
        agents.cancel_scope.cancel()


async def test_a_controller_that_cannot_read_the_log_lets_the_lease_go_and_never_takes_it(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A newer vmbusops took the lease once and wrote a fact of a newer fleet protocol: this
    build can neither follow the log past it nor decide on it, so it stands aside (at once: the
    job after it is never dispatched) and says so."""
    bus = Bus()
    async with trio.open_nursery() as agents, controller(bus, tmp_path, "a") as (a, _):
        agents.start_soon(host, MemBroker(bus, "hv1"), "hv1", "vm1")
        await until(a.active)
        async with controller(bus, tmp_path, "b") as (b, _):
            await submit(bus)
            await until(lambda: bool(bus.work))  # job 1's run is dispatched
            sent = sum(len(v) for v in bus.work.values())
            body = json.loads(messages.encode(messages.CancelFact(job=1, run=None, time=0.0)))
            body["v"] = messages.VERSION + 1
            newer = await MemBroker(bus, "newer").publish(names.CTL_SUBJECT, json.dumps(body).encode(), msg_id="newer")
            await submit(bus)  # after it: not applied
            await until(lambda: a.projection.halted is not None and b.projection.halted is not None)
            assert not a.active() and not b.active()
            # (b may have taken the lease while its projection was still short of the fact.)
            term = lease_term(bus)
            await trio.sleep(10 * TTL)
            assert not a.active() and not b.active()
            assert lease_term(bus) == term  # renewed no more, taken by neither
            assert a.lease.holder == b.lease.holder == term[0]  # still read, to name it to clients
            assert a.applied == b.applied == newer.seq - 1 > 0
            assert a.journal.fleet_job(1) is not None and a.journal.fleet_job(2) is None
            assert sum(len(v) for v in bus.work.values()) == sent  # nothing decided after it
            status = FleetHosts(a, since=0.0).status
            assert not status.up
            assert status.reason is not None and f"fleet protocol {messages.VERSION + 1}" in status.reason
            agents.cancel_scope.cancel()


async def test_a_restarted_controller_takes_no_lease_before_its_projection_caught_up(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The holder restarts on a log it cannot get past (a newer protocol's fact, as a controller
    left behind by an upgrade would meet, restart after restart): it must not take its own lease
    back, which would keep an up-to-date standby from taking over for as long as it restarts."""
    bus = Bus()
    await submit(bus)
    body = json.loads(messages.encode(messages.CancelFact(job=1, run=None, time=0.0)))
    body["v"] = messages.VERSION + 1
    await MemBroker(bus, "newer").publish(names.CTL_SUBJECT, json.dumps(body).encode(), msg_id="newer")
    lease = json.dumps({"id": "a", "url": "http://a", "term": 1}).encode()
    await MemBroker(bus, "before").kv_put(names.LEASES_BUCKET, names.CONTROLLER_LEASE_KEY, lease)
    async with controller(bus, tmp_path, "a") as (a, _):
        await until(lambda: a.projection.halted is not None)
        await trio.sleep(10 * TTL)
        assert lease_term(bus) == ("a", 1)  # its own, from before the restart: not taken back
        assert not a.active()
