"""A run's receipt and transcript from the agent's API: the job's tenant gets them (and they verify
against the host key), another tenant gets the answer a missing job gets."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
import trio
from tests.api.conftest import VMBUSOPS, Agent, submit
from tests.api.test_job_listing import wait_done
from tests.builders import PASSWORD, script

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.receipts import verify_receipt


async def test_the_jobs_tenant_gets_receipt_and_transcript_and_no_one_else_does(agent: Agent) -> None:
    r = await submit(agent, agent.bundle(["a-web01"], [script("s", 'Write-Output "x"; exit 2')]), who="tenant_a")
    assert r.status_code == 201, r.text
    job = r.json()["job"]["id"]
    async with agent.client("tenant_a") as a:
        assert await wait_done(a, job) == "failed"
        receipt = await a.get(f"/v1/jobs/{job}/runs/a-web01/receipt")
        assert receipt.status_code == 200, receipt.text
        assert receipt.headers["content-type"].startswith("application/json")
        transcript = await a.get(f"/v1/jobs/{job}/runs/A-WEB01/transcript")
        assert transcript.status_code == 200, transcript.text
        logs = await a.get(f"/v1/jobs/{job}/records", params={"vm": "a-web01"})
        other_vm = await a.get(f"/v1/jobs/{job}/runs/a-web02/receipt")
    host = PrivateKey.from_pem((agent.home / "host" / "receipt-signing.key").read_bytes(), passphrase=None, source="k")
    got = verify_receipt(receipt.content, host.public_key(), transcript.content)
    assert (got.payload["outcome"], got.payload["code"], got.payload["steps"][0]["exit_code"]) == ("failed", "ExitCode", 2)
    assert got.payload["bundle"]["signers"] == [agent.key.keyid]
    assert got.transcript_records == len(logs.json()["records"]) >= 1
    assert PASSWORD not in receipt.text + transcript.text
    assert other_vm.status_code == 404 and other_vm.json()["detail"] == f"no run on a-web02 in job {job}"
    # The receipt is written once: the reader's copy is the tenant's, byte for byte.
    async with agent.client("reader") as reader:
        assert (await reader.get(f"/v1/jobs/{job}/runs/a-web01/receipt")).content == receipt.content
    async with agent.client("tenant_b") as b:
        for what in ("receipt", "transcript"):
            denied = await b.get(f"/v1/jobs/{job}/runs/a-web01/{what}")
            assert denied.status_code == 404 and denied.json()["detail"] == f"no job {job} visible to you"
    async with agent.client(None) as anonymous:
        assert (await anonymous.get(f"/v1/jobs/{job}/runs/a-web01/receipt")).status_code == 401
    # A receipt lost (the agent stopped between the run's end and its receipt) is made when asked for.
    db = sqlite3.connect(agent.home / "journal" / "journal.sqlite")
    with db:
        db.execute("DELETE FROM receipts")
    db.close()
    async with agent.client("tenant_a") as a:
        again = await a.get(f"/v1/jobs/{job}/runs/a-web01/receipt")
    assert again.status_code == 200, again.text
    remade = verify_receipt(again.content, host.public_key(), transcript.content).payload
    assert remade["vm"] == {"name": "a-web01", "id": None} and remade["steps"] == got.payload["steps"]


def cli(*args: str, home: Path, token: str) -> subprocess.CompletedProcess[str]:
    """The command line on the tenant's own machine: a home of its own, the token in the environment."""
    env = {**os.environ, "VMBUSOPS_HOME": str(home), "VMBUSOPS_TOKEN": token}
    return subprocess.run([VMBUSOPS, *args], capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.slow
async def test_receipt_export_and_transcript_through_the_agent_verify_on_the_tenants_side(
    agent: Agent, tmp_path: Path
) -> None:
    r = await submit(agent, agent.bundle(["a-web02"], [script("s", 'Write-Output "y"')]), who="tenant_a")
    job = r.json()["job"]["id"]
    async with agent.client("tenant_a") as a:
        assert await wait_done(a, job) == "success"
    home = tmp_path / "tenant-home"
    remote = ("--vm", "a-web02", "--agent", agent.url)
    pub, r_file, t_file = (tmp_path / n for n in ("host.pub", "r.json", "t.ndjson"))
    host = PrivateKey.from_pem((agent.home / "host" / "receipt-signing.key").read_bytes(), passphrase=None, source="k")
    pub.write_bytes(host.public_key().to_pem())  # as the provider published it

    def tenant_side() -> list[subprocess.CompletedProcess[str]]:
        token = agent.tokens["tenant_a"]
        receipt = cli("receipt", "export", str(job), *remote, home=home, token=token)
        transcript = cli("receipt", "transcript", str(job), *remote, home=home, token=token)
        r_file.write_text(receipt.stdout, encoding="utf-8")
        t_file.write_text(transcript.stdout, encoding="utf-8")
        checked = cli("receipt", "verify", str(r_file), "--host-key", str(pub), "--transcript", str(t_file),
                      home=home, token=token)  # fmt: skip
        denied = cli("receipt", "export", str(job), *remote, home=home, token=agent.tokens["tenant_b"])
        shown = cli("receipt", "show", str(job), "--agent", agent.url, "--host-key", str(pub), "--json",
                    home=home, token=token)  # fmt: skip
        keyless = cli("receipt", "show", str(job), "--agent", agent.url, home=home, token=token)
        return [receipt, transcript, checked, denied, shown, keyless]

    receipt, transcript, checked, denied, shown, keyless = await trio.to_thread.run_sync(tenant_side)
    assert shown.returncode == 0, shown.stderr
    assert [json.loads(line)["vm"]["name"] for line in shown.stdout.splitlines()] == ["a-web02"]
    assert keyless.returncode == 2 and "--agent needs --host-key" in keyless.stderr
    assert receipt.returncode == 0 and transcript.returncode == 0, receipt.stderr + transcript.stderr
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"receipt verified: job {job} on a-web02 (success)")
    assert denied.returncode == 2 and f"no job {job} visible to you" in denied.stderr
