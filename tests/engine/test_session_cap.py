"""The host's cap on PowerShell Direct sessions, counted by the simulator, not by the agent.

The simulator counts a session from the moment it starts opening until its command ends
(:class:`vmbusops.sim.hyperv.SessionCount`); these tests read the most it ever had open at once.
"""

from __future__ import annotations

from pathlib import Path

import trio
from tests.builders import VM, manifest, script, write_lab
from tests.engine.conftest import credential_for, harness_for, source
from tests.engine.test_rate_control import peak_in_progress, run_story
from tests.simhost import open_sim_host

from vmbusops.engine import RunChanged, State
from vmbusops.guestops.fanout import exec_in_guests
from vmbusops.sim.hyperv import SessionCount

#: Long enough that every run of a job is waiting for a session before the first one ends.
LATENCY_MS = 150


def fleet(lab_dir: Path, count: int, prefix: str = "vm") -> Path:
    return write_lab(lab_dir, [VM(f"{prefix}{i:02d}", latency_ms=LATENCY_MS) for i in range(count)])


async def test_no_more_sessions_than_the_cap_while_more_runs_wait(lab_dir: Path, tmp_path: Path) -> None:
    lab = fleet(lab_dir, 12)
    # The job would let all twelve run at once; the host allows three sessions.
    m = manifest(["vm*"], [script("probe", "hostname")], execution={"max_concurrency": 12})
    sessions = SessionCount()
    async with harness_for(lab, tmp_path / "j.sqlite", sessions=sessions, max_sessions=3) as h:
        result = await h.engine.run_job(source(m))
        runs = h.journal.runs(result.job_id)
    assert result.state is State.SUCCESS, result.errors
    assert sessions.peak == 3
    assert sessions.open == 0
    # Every run had its job slot, so all twelve were in progress, nine of them queued for a session,
    # and each of those said so while it waited; none says it any more.
    assert peak_in_progress(run_story(h.events)) == 12
    said = [e.vm for e in h.events if isinstance(e, RunChanged) and e.step == "probe: waiting for a host session"]
    assert len(said) == len(set(said)) == 9
    assert [r.waiting for r in runs] == [None] * 12


async def test_raising_the_cap_runs_more_at_once(lab_dir: Path, tmp_path: Path) -> None:
    lab = fleet(lab_dir, 12)
    m = manifest(["vm*"], [script("probe", "hostname")], execution={"max_concurrency": 12})
    peaks = []
    for cap in (3, 8):
        sessions = SessionCount()
        async with harness_for(lab, tmp_path / f"j{cap}.sqlite", sessions=sessions, max_sessions=cap) as h:
            result = await h.engine.run_job(source(m))
        assert result.state is State.SUCCESS, result.errors
        peaks.append(sessions.peak)
    assert peaks == [3, 8]


async def test_a_jobs_concurrency_stays_its_own_limit_under_the_cap(lab_dir: Path, tmp_path: Path) -> None:
    lab = fleet(lab_dir, 8)
    m = manifest(["vm*"], [script("probe", "hostname")], execution={"max_concurrency": 2})
    sessions = SessionCount()
    async with harness_for(lab, tmp_path / "j.sqlite", sessions=sessions, max_sessions=6) as h:
        result = await h.engine.run_job(source(m))
    assert result.state is State.SUCCESS, result.errors
    assert sessions.peak == 2


async def test_the_cap_holds_across_jobs(lab_dir: Path, tmp_path: Path) -> None:
    lab = write_lab(
        lab_dir,
        [VM(f"a{i:02d}", latency_ms=LATENCY_MS) for i in range(6)]
        + [VM(f"b{i:02d}", latency_ms=LATENCY_MS) for i in range(6)],
    )
    sessions = SessionCount()
    async with harness_for(lab, tmp_path / "j.sqlite", sessions=sessions, max_sessions=4) as h:
        results = []

        async def job(glob: str) -> None:
            m = manifest([glob], [script("probe", "hostname")], execution={"max_concurrency": 6})
            results.append(await h.engine.run_job(source(m)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(job, "a*")
            nursery.start_soon(job, "b*")
    assert [r.state for r in results] == [State.SUCCESS, State.SUCCESS]
    assert sessions.peak == 4


async def test_exec_fan_out_opens_at_most_its_concurrency(lab_dir: Path) -> None:
    lab = fleet(lab_dir, 10)
    names = [f"vm{i:02d}" for i in range(10)]
    peaks = []
    for concurrency in (3, 7):
        sessions = SessionCount()
        async with open_sim_host(lab, sessions=sessions) as host:
            outcomes = await exec_in_guests(
                host, names, "hostname", credential_for("lab-admin"), on_record=lambda _: None,
                max_concurrency=concurrency,
            )  # fmt: skip
        assert all(o.ok for o in outcomes.values()) and len(outcomes) == 10
        peaks.append(sessions.peak)
    assert peaks == [3, 7]
