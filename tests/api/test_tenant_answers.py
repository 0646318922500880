"""Another tenant's job and no job at all get byte-identical answers on every route that takes an id.

A tenant probing ids must learn nothing: not from the status, the body's text or shape, nor the
headers. The walk runs against the real agent on loopback; only the id itself (and the Date
header) may differ between the two answers.
"""

from __future__ import annotations

from typing import Any

import httpx
from tests.api.conftest import Agent, submit
from tests.api.test_security import SLOW
from tests.builders import script

VM_OF_A = "a-web01"


def routes(job_id: int) -> list[tuple[str, str, dict[str, Any]]]:
    j = f"/v1/jobs/{job_id}"
    return [
        ("GET", j, {}),
        ("GET", f"{j}/runs", {}),
        ("GET", f"{j}/runs/{VM_OF_A}", {}),
        ("GET", f"{j}/runs/no-such-vm", {}),
        ("GET", f"{j}/records", {}),
        ("GET", f"{j}/records?after=1&limit=5&stream=output", {}),
        ("GET", f"{j}/records?after=not-a-cursor", {}),
        ("GET", f"{j}/events", {}),
        ("GET", f"{j}/events", {"headers": {"Last-Event-ID": "3"}}),
        ("GET", f"{j}/runs/{VM_OF_A}/receipt", {}),
        ("GET", f"{j}/runs/{VM_OF_A}/transcript", {}),
        ("POST", f"{j}/cancel", {}),
        ("POST", f"{j}/cancel", {"json": {"vm": VM_OF_A}}),
        ("POST", f"{j}/runs/{VM_OF_A}/cancel", {}),
    ]


def answer(r: httpx.Response, job_id: int) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in r.headers.items() if k.lower() != "date")
    body = r.content.replace(f"/jobs/{job_id}".encode(), b"/jobs/<id>")
    return r.status_code, headers, body.replace(f"job {job_id} ".encode(), b"job <id> ")


async def test_another_tenants_job_answers_exactly_like_a_missing_one(agent: Agent) -> None:
    r = await submit(agent, agent.bundle([VM_OF_A, "a-web02"], [script("s", SLOW)]), who="tenant_a")
    assert r.status_code == 201, r.text
    theirs = r.json()["job"]["id"]
    missing = int("9" * len(str(theirs)))  # same number of digits, so lengths match too
    assert missing != theirs
    async with agent.client("tenant_b") as b:
        for method, path, extra in routes(theirs):
            got = await b.request(method, path, **extra)
            expected = await b.request(method, path.replace(f"/{theirs}", f"/{missing}"), **extra)
            assert got.status_code == 404, (method, path, got.status_code)
            assert answer(got, theirs) == answer(expected, missing), (method, path)
            assert got.json()["detail"] == f"no job {theirs} visible to you"
        # An id past the journal's range answers the same way as any other missing id.
        huge = 2**70
        got = await b.get(f"/v1/jobs/{huge}")
        assert got.status_code == 404 and got.json()["detail"] == f"no job {huge} visible to you"
    async with agent.client("tenant_a") as a:
        job = (await a.get(f"/v1/jobs/{theirs}")).json()["job"]
        assert job["cancel_requested"] is False  # nothing B sent reached it
        await a.post(f"/v1/jobs/{theirs}/cancel")
    # The operator's log still tells the two apart.
    whys = [line["why"] for line in agent.log_lines() if line.get("event") == "refused"]
    assert f"job {theirs} targets VMs outside the scope" in whys and f"no job {missing}" in whys


async def test_a_refused_glob_names_the_manifests_patterns_not_other_tenants_vms(agent: Agent) -> None:
    r = await submit(agent, agent.bundle(["*"], [script("s", 'Write-Output "x"')]), who="tenant_a")
    assert r.status_code == 403, r.text
    assert "b-db01" not in r.text
    assert r.json()["detail"] == "bundle targets VMs outside the scope: *"
