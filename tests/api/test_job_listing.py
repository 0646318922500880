"""The agent's job list and per-VM history: filters, keyset cursors, 400 on bad filters, tenancy,
the submitter of each job, /metrics by outcome and code, and the command line's --agent readers."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import httpx
import pytest
import trio
from tests.api.conftest import VMBUSOPS, Agent, submit
from tests.builders import script

from vmbusops.engine.states import State


async def wait_done(c: httpx.AsyncClient, job_id: int) -> str:
    with trio.fail_after(30):
        while True:
            state = str((await c.get(f"/v1/jobs/{job_id}")).json()["job"]["state"])
            if not State(state).active:
                return state
            await trio.sleep(0.05)


def is_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.slow
async def test_job_list_filters_pages_and_refuses_bad_filters(agent: Agent) -> None:
    ok = 'Write-Output "x"'
    jobs: dict[str, int] = {}
    for label, who, vms, text in (
        ("a1", "tenant_a", ["a-web01"], ok),
        ("b1", "tenant_b", ["b-db01"], ok),
        ("a2", "tenant_a", ["a-web01", "a-web02"], 'Write-Error "broken"'),
        ("all", "admin", ["a-web01", "b-db01"], ok),
    ):
        r = await submit(agent, agent.bundle(vms, [script("s", text)], name=f"list-{label}"), who=who)
        assert r.status_code == 201, r.text
        jobs[label] = r.json()["job"]["id"]
    async with agent.client() as c:
        for job_id in jobs.values():
            await wait_done(c, job_id)
        everything = (await c.get("/v1/jobs")).json()
        assert [j["id"] for j in everything["jobs"]] == sorted(jobs.values(), reverse=True)
        assert everything["next"] is None
        submitters = {j["id"]: j["submitter"] for j in everything["jobs"]}
        assert submitters[jobs["a1"]] == "token:tenant_a"
        assert submitters[jobs["all"]] == "token:admin"

        # Keyset pages: each `next` continues below the last id, also as a Link header.
        seen: list[int] = []
        url = "/v1/jobs?limit=1&vm=a-web01"
        while True:
            r = await c.get(url)
            page = r.json()
            seen += [j["id"] for j in page["jobs"]]
            if page["next"] is None:
                break
            assert r.headers["link"].endswith('; rel="next"')
            url = r.headers["link"][1 : r.headers["link"].index(">")]
        assert seen == [jobs["all"], jobs["a2"], jobs["a1"]]

        def ids(r: httpx.Response) -> list[int]:
            assert r.status_code == 200, r.text
            return [j["id"] for j in r.json()["jobs"]]

        assert ids(await c.get("/v1/jobs?state=failed")) == [jobs["a2"]]
        assert ids(await c.get("/v1/jobs", params={"submitter": "token:tenant_b"})) == [jobs["b1"]]
        assert ids(await c.get("/v1/jobs?since=1h&vm=B-DB01")) == [jobs["all"], jobs["b1"]]
        assert ids(await c.get("/v1/jobs?since=2999-01-01")) == []
        assert ids(await c.get(f"/v1/jobs?cursor={jobs['a2']}")) == [jobs["b1"], jobs["a1"]]
        for bad, words in (
            ("state=bogus", "unknown state 'bogus'"),
            ("since=yesterday", "since 'yesterday' is not a time"),
            ("since=2026-13-45", "is not a time"),
            ("cursor=x", "cursor"),
            ("limit=501", "limit"),
            ("vm=", "vm must not be empty"),
            ("colour=blue", "unknown query parameter 'colour'"),
        ):
            assert words in is_problem(await c.get(f"/v1/jobs?{bad}"), 400)["detail"], bad

        # One VM's history across jobs, newest first, with each run's job and failure.
        r = await c.get("/v1/vms/A-WEB01/runs")
        runs = r.json()["runs"]
        assert [(h["job"], h["state"]) for h in runs] == [
            (jobs["all"], "success"), (jobs["a2"], "failed"), (jobs["a1"], "success"),
        ]  # fmt: skip
        assert runs[1]["bundle"] == "list-a2" and "broken" in runs[1]["error"]
        assert runs[1]["submitter"] == "token:tenant_a"
        assert [h["job"] for h in (await c.get("/v1/vms/a-web01/runs?state=failed")).json()["runs"]] == [jobs["a2"]]
        is_problem(await c.get("/v1/vms/a-web01/runs?state=bogus"), 400)

        metrics = (await c.get("/metrics")).text
        assert 'vmbusops_runs_total{code="none",outcome="success"} 4.0' in metrics
        # The failed runs' code is the one the engine journaled, the same the API gives for the run.
        assert runs[1]["code"] in ("ScriptFailed", "ExitCode"), runs[1]
        code = runs[1]["code"]
        assert f'vmbusops_runs_total{{code="{code}",outcome="failed"}} 2.0' in metrics
        assert 'vmbusops_run_seconds_count{outcome="success"} 4.0' in metrics
        assert 'vmbusops_run_seconds_bucket{le="+Inf",outcome="failed"} 2.0' in metrics

    # A tenant sees only jobs all of whose VMs it may see, and no other tenant's VM history.
    async with agent.client("tenant_a") as a:
        assert [j["id"] for j in (await a.get("/v1/jobs")).json()["jobs"]] == [jobs["a2"], jobs["a1"]]
        assert [h["job"] for h in (await a.get("/v1/vms/a-web01/runs")).json()["runs"]] == [jobs["a2"], jobs["a1"]]
        assert (await a.get("/v1/vms/b-db01/runs")).status_code == 404

    # The command line reads the same through --agent.
    env = {**os.environ, "VMBUSOPS_HOME": str(agent.home), "VMBUSOPS_TOKEN": agent.tokens["tenant_a"]}

    async def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return await trio.run_process([VMBUSOPS, *args, "--agent", agent.url], env=env, capture_stdout=True, capture_stderr=True, check=False)

    listed = await cli("jobs", "--json", "--limit", "1")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == [jobs["a2"]]
    history = await cli("history", "--vm", "a-web01", "--state", "success", "--json")
    assert [json.loads(line)["job"] for line in history.stdout.splitlines()] == [jobs["a1"]]
    shown = await cli("jobs", "show", str(jobs["a2"]))
    assert shown.returncode == 0, shown.stderr
    assert b"submitter token:tenant_a" in shown.stdout and b"failed" in shown.stdout
    hidden = await cli("jobs", "show", str(jobs["b1"]))
    assert hidden.returncode == 2 and len(hidden.stderr.splitlines()) == 1, hidden.stderr
    cancelled = await cli("jobs", "cancel", str(jobs["a1"]))
    assert cancelled.returncode == 0 and cancelled.stdout == f"job {jobs['a1']} is success; nothing to cancel\n".encode()
    bad = await cli("jobs", "--since", "soon")
    assert bad.returncode == 2 and bad.stderr.count(b"\n") == 1, bad.stderr
