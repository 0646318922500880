"""A follower's stream ends once the token it was let in with is revoked: a revoked reader gets
nothing more of a job that goes on, and its next request is refused."""

from __future__ import annotations

import json
import time

import httpx
from tests.api.conftest import Agent
from tests.builders import script

from vmbusops.api.auth import Operation, PrincipalStore


async def test_revoking_a_token_ends_the_streams_it_opened(agent: Agent) -> None:
    with PrincipalStore() as store:
        made, token = store.create_token(name="reader2", operations=frozenset({Operation.READ}), vms=["*"], expires_at=None)
    steps = [script("tick", 'foreach ($i in 1..60) { "line $i"; Start-Sleep -Milliseconds 200 }')]
    async with agent.client() as admin:
        submitted = await admin.post("/v1/jobs", content=agent.bundle(["a-web01"], steps).read_bytes(),
                                     headers={"Content-Type": "application/octet-stream"})  # fmt: skip
        assert submitted.status_code == 201, submitted.text
        job_id = submitted.json()["job"]["id"]

    got: list[int] = []
    ended_at: list[float] = []
    revoked_at = 0.0
    async with httpx.AsyncClient(base_url=agent.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as reader:
        async with reader.stream("GET", f"/v1/jobs/{job_id}/events") as events:
            assert events.status_code == 200
            async for line in events.aiter_lines():
                if line.startswith("data: ") and '"stream":"output"' in line:
                    got.append(time.monotonic() > revoked_at > 0)
                    if len(got) == 5:  # the job is streaming: revoke the token as an operator does
                        with PrincipalStore() as store:
                            store.revoke(made.id)
                        revoked_at = time.monotonic()
            ended_at.append(time.monotonic())
        # The stream ended without the job's end: the job goes on (60 records, 12 s).
        assert revoked_at and ended_at[0] - revoked_at < 10
        refused = await reader.get(f"/v1/jobs/{job_id}")
        assert refused.status_code == 401 and "revoked" in refused.text
    # Records that came after the revocation: at most those of the next second (the recheck).
    assert sum(got) <= 10, got
    async with agent.client() as admin:
        job = (await admin.get(f"/v1/jobs/{job_id}")).json()["job"]
        assert job["state"] == "in-progress", job
        await admin.post(f"/v1/jobs/{job_id}/cancel")
    refusals = [line for line in agent.log_lines() if line.get("event") == "refused" and "revoked" in json.dumps(line)]
    assert refusals, "the cut stream is logged as a refusal"
