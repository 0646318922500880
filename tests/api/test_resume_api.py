"""Resuming an interrupted job through the agent (``POST /v1/jobs/{id}/resume``, ``jobs resume
--agent``): a runbook's job stopped with its agent is finished by the next agent, steps that
finished are not run again, and a bundle that no longer passes runs nothing. Real agent processes
on loopback over the simulator, the second on the first's home."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from tests.api.conftest import TENANT_VMS, Agent, start_agent, submit, wait_ready
from tests.api.test_agent_e2e import LOOP, follow
from tests.builders import script, write_lab

from vmbusops.engine import Journal, State

STEPS = [script("first", "Write-Output 'one'"), {**script("second", LOOP.format(n=60, ms=25)), "idempotent": True}]


@contextmanager
def restarted(agent: Agent, tmp_path: Path) -> Iterator[Agent]:
    """A new agent process on ``agent``'s home (its journal, trust policy and tokens)."""
    process = start_agent(agent.home, tmp_path, write_lab(tmp_path, TENANT_VMS))
    try:
        yield Agent(
            url=wait_ready(process), home=agent.home, process=process, key=agent.key, bundles=agent.bundles,
            tokens=agent.tokens, stderr_path=agent.stderr_path,
        )  # fmt: skip
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


async def cli(agent: Agent, *args: str) -> tuple[int, str]:
    """``vmbusops ARGS`` (its exit code and stderr), with the agent's home and admin token."""
    env = {**os.environ, "VMBUSOPS_HOME": str(agent.home), "VMBUSOPS_TOKEN": agent.tokens["admin"], "NO_COLOR": "1"}
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-m", "vmbusops", *args], capture_stdout=True, capture_stderr=True, env=env, check=False
        )
    return done.returncode, done.stderr.decode()


async def test_an_interrupted_job_is_resumed_through_the_next_agent(agent_factory: object, tmp_path: Path) -> None:
    first: Agent = agent_factory(config="[agent]\nshutdown_grace_seconds = 0.2\n")  # type: ignore[operator]
    jobs = []
    for vm in ("a-web01", "a-web02"):
        response = await submit(first, first.bundle([vm], STEPS, name=f"resumed-{vm}"))
        assert response.status_code == 201, response.text
        jobs.append(response.json()["job"]["id"])
    for job_id in jobs:
        await follow(first, job_id, stop_after=5)  # each is into its second step
    with trio.fail_after(20):
        assert await trio.to_thread.run_sync(first.stop, signal.SIGTERM) == 0
    with restarted(first, tmp_path) as agent:
        await resume_both(agent, *jobs)


async def resume_both(agent: Agent, resumed: int, refused: int) -> None:

    async with agent.client() as admin, agent.client("reader") as reader, agent.client("tenant_b") as other:
        assert (await admin.get(f"/v1/jobs/{resumed}")).json()["job"]["state"] == "interrupted"
        assert (await reader.post(f"/v1/jobs/{resumed}/resume")).status_code == 403  # no submit scope
        assert (await other.post(f"/v1/jobs/{resumed}/resume")).status_code == 404  # another tenant's job
        assert (await admin.post("/v1/jobs/999/resume")).status_code == 404
        assert (await admin.post(f"/v1/jobs/{resumed}/resume", json={"vm": "a-web01"})).status_code == 400

        answer = await admin.post(f"/v1/jobs/{resumed}/resume")
        assert answer.status_code == 202, answer.text
        assert answer.json()["job"]["state"] in ("pending", "in-progress")
        again = await admin.post(f"/v1/jobs/{resumed}/resume")  # it runs here now
        assert again.status_code == 409 and "running on this agent" in again.json()["detail"], again.text
        events = await follow(agent, resumed)
        assert events[-1].event == "end" and events[-1].data["state"] == "success", events[-1]
        done = await admin.post(f"/v1/jobs/{resumed}/resume")
        assert done.status_code == 409 and "only an interrupted job" in done.json()["detail"], done.text

    journal = Journal(agent.home / "journal" / "journal.sqlite")
    try:
        [run] = journal.runs(resumed)
        first_step, second_step = journal.steps(run.id)
        assert (first_step.state, first_step.attempts) == (State.SUCCESS, 1)  # finished: not run again
        assert (second_step.state, second_step.attempts) == (State.SUCCESS, 2)
        steps = [r.step for r in journal.records(resumed, limit=10_000) if r.stream == "output"]
        assert steps.count("first") == 1 and steps.count("second") >= 60
    finally:
        journal.close()

    # The signer is no longer trusted: the agent judges the bundle again, and the job ends failed.
    assert (await cli(agent, "trust", "remove", "tests"))[0] == 0
    code, said = await cli(agent, "jobs", "resume", str(refused), "--agent", agent.url)
    assert code == 4, said
    assert said.count("\n") <= 2 and "the agent rejected the bundle" in said, said
    async with agent.client() as admin:
        job = (await admin.get(f"/v1/jobs/{refused}")).json()["job"]
        runs = (await admin.get(f"/v1/jobs/{refused}/runs")).json()["runs"]
    assert job["state"] == "failed" and job["error"].startswith("not resumed: "), job
    assert [r["code"] for r in runs] == ["BundleRejected"]
    code, said = await cli(agent, "jobs", "resume", str(refused), "--agent", agent.url)
    assert code == 2 and "only an interrupted job" in said, said
