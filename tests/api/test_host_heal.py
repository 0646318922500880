"""The agent heals its host connection: a host process that dies is reopened, and meanwhile the
agent says so (health, metrics, a retryable problem) instead of failing every submission.

The host is really killed: the lab's ``crash_on`` makes the simulator process exit abruptly when
Restart-VM starts. While the lab file is away the simulator cannot start again, so the agent stays
down for as long as the test needs to look at it; putting the file back lets the next attempt in.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from tests.api.conftest import TENANT_VMS, Agent, make_tokens, start_agent, submit, wait_ready
from tests.builders import lab_text, script
from tests.engine.bundles import trust_and_credential

from vmbusops.api.auth import PrincipalStore
from vmbusops.bundle.crypto import PrivateKey

CONFIG = "[agent]\nhost_wait_seconds = 0.2\nhost_reconnect_max_seconds = 0.2\n"


def crashing_lab(tmp_path: Path) -> Path:
    text = lab_text(TENANT_VMS, crash_on="Restart-VM")
    path = tmp_path / "lab.toml"
    path.write_text(text)
    return path


def start(tmp_path: Path, home: Path, lab: Path) -> Agent:
    key = PrivateKey.generate()
    trust_and_credential(key)
    with PrincipalStore() as store:
        tokens = make_tokens(store)
    process = start_agent(home, tmp_path, lab, config=CONFIG)
    bundles = tmp_path / "bundles"
    bundles.mkdir(exist_ok=True)
    return Agent(
        url=wait_ready(process), home=home, process=process, key=key, bundles=bundles, tokens=tokens,
        stderr_path=tmp_path / "agent.log",
    )  # fmt: skip


async def poll(client: httpx.AsyncClient, path: str, until: Any, what: str) -> httpx.Response:
    with trio.fail_after(30):
        while True:
            r = await client.get(path)
            if until(r):
                return r
            await trio.sleep(0.05)  # polled as a monitor would: a client has no event to wait on


async def wait_job(client: httpx.AsyncClient, job_id: int) -> dict[str, Any]:
    r = await poll(client, f"/v1/jobs/{job_id}", lambda r: r.json()["job"]["state"] not in {"pending", "in-progress", "delayed"}, "job end")
    job: dict[str, Any] = r.json()["job"]
    return job


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert found is not None, name
    return float(found.group(1))


@pytest.mark.slow
async def test_a_killed_host_is_reopened_and_later_jobs_run(tmp_path: Path, vmbusops_home: Path) -> None:
    lab = crashing_lab(tmp_path)
    agent = start(tmp_path, vmbusops_home, lab)
    try:
        async with agent.client() as c:
            health = (await c.get("/v1/health")).json()
            assert health["status"] == "ready" and health["host"]["up"] is True

            # The lab goes away, so the host cannot come back until the test says so.
            hidden = lab.rename(tmp_path / "lab.hidden")
            r = await submit(agent, agent.bundle(["a-web01"], [{"kind": "reboot", "name": "restart"}]))
            assert r.status_code == 201, r.text
            job = await wait_job(c, r.json()["job"]["id"])
            assert job["state"] == "failed"

            down = await poll(c, "/v1/health", lambda r: r.status_code == 503, "not ready")
            body = down.json()
            assert body["status"] == "host-down"
            assert body["host"]["name"] == "sim" and body["host"]["up"] is False
            assert body["host"]["since"].endswith("Z")
            assert int(down.headers["retry-after"]) >= 1  # when to look again

            # A submission while the host is down: a clear, retryable refusal, not the pipe error.
            r = await submit(agent, agent.bundle(["a-web02"], [script("hello", "Write-Output hi")]))
            assert r.status_code == 503, r.text
            assert r.json()["type"] == "urn:vmbusops:problem:host-down"
            assert int(r.headers["retry-after"]) >= 1
            assert "sim" in r.json()["detail"]

            hidden.rename(lab)
            await poll(c, "/v1/health", lambda r: r.status_code == 200, "ready again")
            r = await submit(agent, agent.bundle(["a-web02"], [script("hello", "Write-Output hi")]))
            assert r.status_code == 201, r.text
            job = await wait_job(c, r.json()["job"]["id"])
            assert job["state"] == "success", job

            text = (await c.get("/metrics")).text
            assert metric(text, "vmbusops_host_up") == 1
            assert metric(text, "vmbusops_host_reconnects_total") == 1
    finally:
        agent.stop()
        if agent.process.stdout is not None:
            agent.process.stdout.close()
    lines = agent.log_lines()
    events = [line.get("event") for line in lines]
    # One line per change of state, not one per attempt (the lab was away for several attempts).
    assert events.count("host-down") == 1 and events.count("host-up") == 1, events
    down = next(line for line in lines if line.get("event") == "host-down")
    assert down["host"] == "sim" and down["reason"].startswith("the PowerShell host")
