"""Two controllers over a real nats-server: one takes the lease and decides, the other follows
the log into an identical journal and takes over when the first stops renewing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from tests.fleet.factlog import DIGEST, FactLog, whole_run
from tests.fleet.test_projection import dump

from vmbusops.fleet import messages, names
from vmbusops.fleet.controller import Controller, ControllerOptions
from vmbusops.fleet.nats_broker import NatsBroker, open_broker
from vmbusops.fleet.natsserver import NatsServer
from vmbusops.fleet.store import FleetJournal

LEASE_TTL = 1.5


@asynccontextmanager
async def controller(server: NatsServer, tmp: Path, name: str) -> AsyncIterator[tuple[Controller, trio.CancelScope]]:
    """A controller with its own journal and broker connection; cancel the scope to kill it."""
    async with open_broker(server.url, name=name, reconnect_wait=0.1) as broker, trio.open_nursery() as nursery:
        c = Controller(
            broker, FleetJournal(tmp / f"{name}.sqlite"),
            ControllerOptions(id=name, url=f"http://{name}", canary=0, host_ttl=5.0, lease_ttl=LEASE_TTL, tick=0.1),
        )  # fmt: skip
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await c.run()

        nursery.start_soon(run)
        yield c, scope
        scope.cancel()
        c.journal.close()


async def heartbeat(broker: NatsBroker, host: str, vms: list[str]) -> None:
    """Act as host ``host``'s agent: its entry moves, its VMs are placed on it."""
    for vm in vms:
        body = {"vm": vm, "vm_id": f"id-{vm}", "host": host, "cluster": None, "state": "Running", "boot": "b1"}
        await broker.kv_put(names.PLACEMENT_BUCKET, f"id-{vm}", json.dumps(body).encode())
    seq = 0
    while True:
        seq += 1
        entry = {"host": host, "cluster": None, "boot": "b1", "seq": seq, "time": 0.0, "vms": [], "max_sessions": 4}
        await broker.kv_put(names.HOSTS_BUCKET, host, json.dumps(entry).encode())
        await trio.sleep(0.1)


async def take_work(broker: NatsBroker, host: str) -> list[messages.Work]:
    out: list[messages.Work] = []
    with trio.fail_after(30):
        while not out:
            await broker.ensure_work_consumer(host)
            for d in await broker.fetch_work(host, batch=10, timeout=0.5):
                out.append(messages.parse_work(d.data))
                await broker.ack(d)
    return out


async def until(predicate: object, timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - another process moves it
            await trio.sleep(0.05)


async def test_one_controller_decides_the_other_follows_and_takes_over(
    nats_server: NatsServer, broker: NatsBroker, tmp_path: Path
) -> None:
    log = FactLog()
    async with trio.open_nursery() as agents:
        agents.start_soon(heartbeat, broker, "hv1", ["vm1", "vm2"])
        async with controller(nats_server, tmp_path, "c1") as (c1, kill1), controller(nats_server, tmp_path, "c2") as (c2, kill2):
            await until(lambda: c1.active() or c2.active())
            first, second = (c1, c2) if c1.active() else (c2, c1)
            assert not second.active()
            # A submission, as the API publishes it.
            job = log.job([("vm1", "hv1"), ("vm2", "hv1")], max_concurrency=1)
            ack = await broker.publish(names.CTL_SUBJECT, messages.encode(job), msg_id=job.msg_id())
            await first.wait_applied(ack.seq, 30)
            work = await take_work(broker, "hv1")
            assert [(w.kind, w.run, w.epoch) for w in work] == [("dispatch", 1, 1)]
            assert isinstance(work[0], messages.DispatchWork) and work[0].bundle == DIGEST
            # The host runs it: its batches on its log subject.
            for b in whole_run("hv1", 1, 1, 1):
                await broker.publish(names.host_log_subject("hv1"), messages.encode(b), msg_id=b.msg_id())
            second_work = await take_work(broker, "hv1")
            assert [(w.run, w.epoch) for w in second_work] == [(2, 1)]
            # The active one dies; the other takes the lease, with a new term.
            (kill1 if first is c1 else kill2).cancel()
            await until(second.active)
            assert second.lease.term == first.lease.term + 1
            for b in whole_run("hv1", 1, 2, 1):
                await broker.publish(names.host_log_subject("hv1"), messages.encode(b), msg_id=b.msg_id())
            last = await broker.last_log_seq()
            assert await second.wait_applied(last, 30)
            assert second.journal.job(1).state.value == "success"
            # The dead one's journal, brought up to the same point, is the same, record numbers and all.
            while first.applied < last:
                for m in await broker.read_log(after=first.applied, batch=100, timeout=1):
                    first.projection.apply(m)
                    first.applied = m.seq
            assert dump(first.journal.path) == dump(second.journal.path)
        agents.cancel_scope.cancel()
