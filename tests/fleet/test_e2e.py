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
from tests.fleet.fleetprocs import HOSTS, FleetProcs, Proc, placed, records_of, runs_of, submit, wait_job

from vmbusops.fleet.natsserver import NatsServer

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


def local_records(agent: Proc, vm: str) -> int:
    """How many records the agent's own journal holds for ``vm``, over its local jobs."""
    journal = agent.journal()
    try:
        return sum(r.records for job in journal.jobs(limit=1000) for r in journal.runs(job.id) if r.vm == vm)
    finally:
        journal.close()


def notes(records: list[dict[str, Any]], vm: str) -> int:
    """The controller's own notes on a run (moved, lost): records outside any step."""
    return sum(1 for r in records if r["vm"] == vm and r["step"] is None and r["stream"] == "warning")


async def check_once(ctl: Proc, job: int, fleet: FleetProcs, *, steps: int) -> list[dict[str, Any]]:
    """Every run ended once; each step's marker appears at most once; record counts match."""
    records = await records_of(ctl, job)
    assert [r for r in records if r.get("event") != "record"] == []
    runs = await runs_of(ctl, job)
    said = Counter((r["vm"], r.get("value")) for r in records if r["stream"] == "output")
    assert all(count == 1 for count in said.values()), said
    for run in runs:
        assert run["state"] in ("success", "failed", "cancelled", "skipped"), run
        ran = [k for k, v in said.items() if k[0] == run["vm"]]
        assert len(ran) <= steps
        mine = [r for r in records if r["vm"] == run["vm"]]
        assert run["records"] == len(mine) == (mine[-1]["seq"] if mine else 0)
        total_local = sum(local_records(a, run["vm"]) for a in fleet.agents.values())
        assert total_local == len(mine) - notes(records, run["vm"])
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
