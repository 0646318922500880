"""The fleet end to end, as real processes: a nats-server, controllers (``vmbusops fleet serve``)
and three agents (``vmbusops agent --fleet``) over one simulated cluster lab (HV-A and HV-B are
nodes of CL1, HV-C a lone host). After each scenario: every run ended exactly once, no finished
step ran again, and the controller's journal holds what the agents' journals hold."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from tests.fleet.fleetprocs import (
    HOSTS,
    Cuttable,
    FleetProcs,
    Proc,
    placed,
    records_of,
    runs_of,
    submit,
    until_record,
    wait_job,
)

from vmbusops.fleet import messages, names
from vmbusops.fleet.nats_broker import NatsBroker
from vmbusops.fleet.natsserver import NatsServer
from vmbusops.fleet.store import FleetJournal

pytestmark = pytest.mark.slow

VMS = {"vm-a1": "HV-A", "vm-a2": "HV-A", "vm-b1": "HV-B", "vm-c1": "HV-C"}


def marker_step(n: int, extra: str = "") -> dict[str, Any]:
    """A step that says once that it ran (a re-run would say it twice)."""
    return {"kind": "script", "name": f"s{n}", "inline": f'Write-Output "ran s{n} on $env:COMPUTERNAME"{extra}'}


@pytest.fixture
def fleet(nats_server: NatsServer, tmp_path: Path) -> Iterator[FleetProcs]:
    procs = FleetProcs(tmp_path, nats_server.url, dict(VMS))
    try:
        yield procs
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.close()


def local_records(agent: Proc, vm: str) -> list[tuple[int, str, str]]:
    """The records the agent's own journal holds for ``vm`` over its local jobs: (seq, stream, JSON)."""
    journal = agent.journal()
    try:
        return [
            (row[3], row[6], row[8])
            for job in journal.jobs(limit=1000)
            for run in journal.runs(job.id) if run.vm == vm
            for row in journal.stored_records(job.id, run_id=run.id)
        ]  # fmt: skip
    finally:
        journal.close()


#: What the controller itself writes on a run (see fleet.projection): the rest came from agents.
CONTROLLER_NOTES = ("run moved to host ", "run left host ", "run lost host ")


def controller_note(record: dict[str, Any]) -> bool:
    return record["step"] is None and str(record.get("message", "")).startswith(CONTROLLER_NOTES)


async def check_once(
    ctl: Proc, job: int, fleet: FleetProcs, *, steps: int, interrupted: frozenset[str] = frozenset()
) -> list[dict[str, Any]]:
    """Every run ended once; each finished step's marker appears once (a step cut off mid-way,
    ``interrupted``, may have begun again); record counts match the agents' journals."""
    records = await records_of(ctl, job)
    assert [r for r in records if r.get("event") != "record"] == []
    runs = await runs_of(ctl, job)
    said = Counter((r["vm"], r.get("value")) for r in records if r["stream"] == "output")
    assert all(count == 1 for (_, text), count in said.items() if str(text).split(" ")[1] not in interrupted), said
    for run in runs:
        assert run["state"] in ("success", "failed", "cancelled", "skipped"), run
        ran = [k for k, v in said.items() if k[0] == run["vm"]]
        assert len(ran) <= steps
        mine = [r for r in records if r["vm"] == run["vm"]]
        assert run["records"] == len(mine) == (mine[-1]["seq"] if mine else 0)
        local = [rec for a in fleet.agents.values() for rec in local_records(a, run["vm"])]
        streams: dict[int, set[str]] = {}
        for seq, stream, _ in local:
            streams.setdefault(seq, set()).add(stream)
        forwarded = [r for r in mine if not controller_note(r)]
        # Each record the agents sent is one their journals hold, under the same number.
        for r in forwarded:
            assert r["stream"] in streams.get(r["seq"], set()), r
        # The same count, unless a host went on after the controller moved its run on (its later
        # batches fenced off: they stay in that host's journal only).
        if fleet_counter(ctl, "fenced") == 0:
            assert len(forwarded) == len(local), (run["vm"], len(forwarded), len(local))
        else:
            assert len(forwarded) <= len(local), (run["vm"], len(forwarded), len(local))
    return runs


async def test_a_job_over_vms_on_every_host(fleet: FleetProcs) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "1")
    path = fleet.bundle(["vm-*"], [marker_step(1), marker_step(2)], max_concurrency="50%")
    await placed(ctl, VMS)
    response = await submit(ctl, path)
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    assert job["host"] == "fleet" and job["targets"] == ["vm-a1", "vm-a2", "vm-b1", "vm-c1"]
    ended = await wait_job(ctl, job["id"])
    assert ended["state"] == "success", ended
    runs = await check_once(ctl, job["id"], fleet, steps=2)
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")


def slow_step(n: int, seconds: int) -> dict[str, Any]:
    """A step that says it began, then takes ``seconds``; safe to run again (idempotent)."""
    return {**marker_step(n, f"; Start-Sleep -Seconds {seconds}"), "idempotent": True}


async def start_job(fleet: FleetProcs, ctl: Proc, vms: dict[str, str], steps: list[dict[str, Any]]) -> int:
    await placed(ctl, vms)
    response = await submit(ctl, fleet.bundle(sorted(vms), steps, max_concurrency="100%"))
    assert response.status_code == 201, response.text
    return int(response.json()["job"]["id"])


async def every_run_in_s2(fleet: FleetProcs, seconds: int) -> tuple[Proc, int]:
    """Every host's agent and a controller, and a job of three steps whose runs have all begun
    s2 (``seconds`` long, idempotent)."""
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    job = await start_job(fleet, ctl, VMS, [marker_step(1), slow_step(2, seconds), marker_step(3)])
    for vm in VMS:
        await until_record(ctl, job, vm, "ran s2")
    return ctl, job


async def test_a_vm_live_migrated_mid_step_goes_on_from_its_last_finished_step_on_its_new_host(
    fleet: FleetProcs,
) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    job = await start_job(fleet, ctl, VMS, [marker_step(1), slow_step(2, 4), marker_step(3)])
    await until_record(ctl, job, "vm-a1", "ran s2")
    fleet.lab_cmd("migrate", "vm-a1", "--to", "HV-B")
    ended = await wait_job(ctl, job)
    assert ended["state"] == "success", ended
    runs = await check_once(ctl, job, fleet, steps=3, interrupted=frozenset({"s2"}))
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")
    records = await records_of(ctl, job)
    moved = [str(r.get("message")) for r in records if r["vm"] == "vm-a1" and r["step"] is None]
    assert any("run moved to host HV-B" in m for m in moved), moved
    said = [r["value"] for r in records if r["vm"] == "vm-a1" and r["stream"] == "output"]
    assert said[0] == "ran s1 on VM-A1" and said[-1].startswith("ran s3")
    assert said.count("ran s1 on VM-A1") == 1


async def test_an_agent_killed_mid_run_has_its_runs_dispatched_again_when_it_is_back(fleet: FleetProcs) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    job = await start_job(fleet, ctl, VMS, [marker_step(1), slow_step(2, 4), marker_step(3)])
    await until_record(ctl, job, "vm-c1", "ran s2")
    fleet.agents["HV-C"].kill()
    fleet.start_agent("HV-C")  # a new process: a new boot id, its old local run not resumed
    ended = await wait_job(ctl, job)
    assert ended["state"] == "success", ended
    runs = await check_once(ctl, job, fleet, steps=3, interrupted=frozenset({"s2"}))
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")


async def test_the_controller_killed_mid_job_is_taken_over_by_a_standby(fleet: FleetProcs) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    first = fleet.start_controller("ctl1", "--canary", "0")
    standby = fleet.start_controller("ctl2", "--canary", "0")
    await placed(first, VMS)
    bundle = fleet.bundle(sorted(VMS), [marker_step(1), slow_step(2, 3), marker_step(3)], max_concurrency="100%")
    response = await submit(first, bundle)
    assert response.status_code == 201, response.text
    job = int(response.json()["job"]["id"])
    async with standby.client() as client:
        refused = await client.post("/v1/jobs", content=b"x", headers={"Content-Type": "application/octet-stream"})
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    await until_record(first, job, "vm-b1", "ran s2")
    async with first.client() as client:
        page = (await client.get(f"/v1/jobs/{job}/records")).json()
    first.kill()
    ended = await wait_job(standby, job)
    assert ended["state"] == "success", ended
    runs = await check_once(standby, job, fleet, steps=3)
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")
    # A follower of the first one goes on at the standby from where it was: no gap, no repeat.
    cursor = int(page["cursor"])
    everything = await records_of(standby, job)
    assert everything[:cursor] == page["records"]
    async with standby.client() as client:
        stream = await client.get(f"/v1/jobs/{job}/events", headers={"Last-Event-ID": str(cursor)})
    ids = [int(line[4:]) for line in stream.text.splitlines() if line.startswith("id: ")]
    assert ids == list(range(cursor + 1, len(everything) + 1))
    # The same bundle again, now to the controller that took over: its own replay store never
    # saw it, the fleet's log did. Refused, and nothing runs.
    with trio.fail_after(60):
        # A lease renewed late under load makes a controller stand by for a moment: retried, as
        # a client does on 503 with Retry-After.
        while (again := await submit(standby, bundle)).status_code == 503:  # noqa: ASYNC110 - a client polls
            await trio.sleep(float(again.headers.get("Retry-After", "1")))
    assert again.status_code == 422, again.text
    assert again.json()["reason"] == "ReplayedBundleError" and "already accepted by the fleet" in again.text
    async with standby.client() as client:
        assert [j["id"] for j in (await client.get("/v1/jobs")).json()["jobs"]] == [job]


async def test_nats_server_restarted_on_its_store_mid_job(fleet: FleetProcs, nats_server: NatsServer) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    job = await start_job(fleet, ctl, VMS, [marker_step(1), slow_step(2, 3), marker_step(3)])
    await until_record(ctl, job, "vm-a2", "ran s2")
    nats_server.restart()
    ended = await wait_job(ctl, job)
    assert ended["state"] == "success", ended
    await check_once(ctl, job, fleet, steps=3)


async def test_nats_server_down_longer_than_host_ttl_mid_job_runs_the_stopped_runs_again(
    fleet: FleetProcs, nats_server: NatsServer
) -> None:
    """The whole fleet loses the broker: every agent stops its runs after host_ttl, while the
    controller, cut off too, judges no host dead. When the broker is back, the stopped runs are
    handed back and dispatched again, not ended cancelled."""
    ctl, job = await every_run_in_s2(fleet, 8)
    await trio.to_thread.run_sync(nats_server.stop)
    await trio.sleep(fleet.host_ttl + 2)  # real processes: every agent must see host_ttl pass
    await trio.to_thread.run_sync(nats_server.start)
    ended = await wait_job(ctl, job)
    if ended["state"] != "success":
        print(fleet.logs(20000))
    assert ended["state"] == "success", ended
    runs = await check_once(ctl, job, fleet, steps=3, interrupted=frozenset({"s2"}))
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")
    # Each run was handed back by its host, or its host judged lost by the controller once the
    # broker was back (whichever came first), and dispatched again.
    records = await records_of(ctl, job)
    for vm in VMS:
        notes = [r["message"] for r in records if r["vm"] == vm and controller_note(r)]
        assert notes and notes[0].startswith(("run left host", "run lost host")), (vm, notes)
        assert "lost the broker" in notes[0] or notes[0].startswith("run lost host"), (vm, notes)


def fleet_counter(ctl: Proc, key: str) -> int:
    """A counter of the controller's projection (``last_seq``, ``fenced``...), from its journal."""
    journal = FleetJournal(ctl.home / "journal" / "journal.sqlite", readonly=True)
    try:
        return journal.counter(key)
    finally:
        journal.close()


def applied_seq(ctl: Proc) -> int:
    """The last log sequence the controller's projection applied (its journal says)."""
    return fleet_counter(ctl, "last_seq")


def fact_bundle(log: list[Any]) -> str:
    return next(f.bundle for f in (messages.parse_ctl(m.data) for m in log if m.subject == names.CTL_SUBJECT) if isinstance(f, messages.JobFact))


async def test_duplicate_deliveries_of_every_fact_and_dispatch_change_nothing(
    fleet: FleetProcs, broker: NatsBroker
) -> None:
    for host in HOSTS:
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    job = await start_job(fleet, ctl, VMS, [marker_step(1), marker_step(2)])
    assert (await wait_job(ctl, job))["state"] == "success"
    await check_once(ctl, job, fleet, steps=2)
    before = await records_of(ctl, job)
    # Every fact of the log again, under new message ids (as after the duplicate window), and
    # every dispatch again on the hosts' work subjects.
    seen = 0
    facts = []
    while batch := await broker.read_log(after=seen, batch=500, timeout=1.0):
        facts += batch
        seen = batch[-1].seq
    again = 0
    for m in facts:
        await broker.publish(m.subject, m.data, msg_id=f"again-{m.seq}")
        if m.subject == names.CTL_SUBJECT:
            fact = messages.parse_ctl(m.data)
            if isinstance(fact, messages.DispatchFact):
                start = messages.RunStartWire(step_states=("pending", "pending"), attempts=(0, 0), next_seq=1)
                work = messages.DispatchWork(
                    job=fact.job, run=fact.run, vm="any", vm_id="any", epoch=fact.epoch, bundle=fact_bundle(facts),
                    start=start, controller="test", time=0.0,
                )  # fmt: skip
                await broker.publish(names.work_subject(fact.host), messages.encode(work), msg_id=f"again-w-{m.seq}")
                again += 1
    assert again == len(VMS)
    last = await broker.last_log_seq()
    with trio.fail_after(120):  # each host took its dispatch again, and dropped it
        while sum(a.log.read_text().count('"fleet-duplicate"') for a in fleet.agents.values()) < again:  # noqa: ASYNC110 - other processes
            await trio.sleep(0.1)
    with trio.fail_after(30):  # the controller has applied every copy
        while applied_seq(ctl) < last:  # noqa: ASYNC110 - another process
            await trio.sleep(0.1)
    assert await broker.last_log_seq() == last  # no host ran anything again
    assert await records_of(ctl, job) == before
    await check_once(ctl, job, fleet, steps=2)


async def test_a_host_cut_off_from_the_broker_stops_its_run_and_it_goes_on_once_the_host_is_back(
    fleet: FleetProcs, nats_server: NatsServer
) -> None:
    relay = Cuttable(nats_server.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.run)
        for host in ("HV-A", "HV-B"):
            fleet.start_agent(host)
        await trio.to_thread.run_sync(lambda: fleet.start_agent("HV-C", relay.url))
        ctl = fleet.start_controller("ctl1", "--canary", "0")
        job = await start_job(fleet, ctl, VMS, [marker_step(1), slow_step(2, 6), marker_step(3)])
        await until_record(ctl, job, "vm-c1", "ran s2")
        relay.cut()
        with trio.fail_after(60):
            while not any(  # noqa: ASYNC110 - another process
                r["vm"] == "vm-c1" and "lost host HV-C" in str(r.get("message")) for r in await records_of(ctl, job)
            ):  # fmt: skip
                await trio.sleep(0.2)
        relay.mend()
        ended = await wait_job(ctl, job)
        assert ended["state"] == "success", ended
        runs = await check_once(ctl, job, fleet, steps=3, interrupted=frozenset({"s2"}))
        assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "success")
        nursery.cancel_scope.cancel()


async def test_cancel_reaches_every_host(fleet: FleetProcs) -> None:
    ctl, job = await every_run_in_s2(fleet, 60)
    async with ctl.client() as client:
        response = await client.post(f"/v1/jobs/{job}/cancel")
        assert response.status_code == 202, response.text
        ended = await wait_job(ctl, job)
        # The controller resumes nothing through the API: it dispatches a lost host's runs itself.
        resume = await client.post(f"/v1/jobs/{job}/resume")
    assert ended["state"] == "cancelled", ended
    assert resume.status_code == 409 and "is a fleet job" in resume.json()["detail"], resume.text
    runs = await check_once(ctl, job, fleet, steps=3)
    assert {r["vm"]: r["state"] for r in runs} == dict.fromkeys(VMS, "cancelled")
    assert all(r["steps"][2]["state"] == "skipped" for r in runs)
