"""A bundle targeting a VM group, submitted to the agent's API: it runs on the members both the
signer's scope and the caller's allow; the other tenant's VM in the group is never named or touched."""

from __future__ import annotations

from typing import Any

from tests.api.conftest import Agent, submit
from tests.api.test_host_heal import wait_job
from tests.builders import VM, script
from tests.engine.bundles import trust_and_credential

MARK = script("mark", "Set-Content -Path 'C:\\touched.txt' -Value 'job'")
VMS = [VM("a-web01"), VM("a-web02"), VM("a-db01"), VM("b-db01")]
GROUPS = [
    {"name": "web", "vms": ["a-web01", "a-web02"]},
    {"name": "data", "vms": ["a-db01", "b-db01"]},
    {"name": "all", "type": "ManagementCollectionType", "groups": ["web", "data"]},
]


async def test_a_group_runs_on_what_the_signer_and_the_caller_allow(agent_factory: Any) -> None:
    agent: Agent = agent_factory(vms=VMS, groups=GROUPS)
    trust_and_credential(agent.key, vms=("a-web*", "b-*"))
    path = agent.bundle([], [MARK], targets={"groups": ["all"]})
    r = await submit(agent, path, who="tenant_a")
    assert r.status_code == 201, r.text
    job = r.json()["job"]
    assert sorted(job["targets"]) == ["a-web01", "a-web02"]
    # a-db01 is the caller's but not the signer's: named, with why; b-db01 is neither's to know.
    assert job["left_out"] == [{"vm": "a-db01", "why": "outside the signer's trust scope (a-web*, b-*): not touched"}]
    assert "b-db01" not in r.text
    async with agent.client("tenant_a") as client:
        done = await wait_job(client, job["id"])
    assert done["state"] == "success"
    # In the guests themselves (the simulator's guest drives, where the step's file lands).
    assert {vm: touched(agent, vm) for vm in ("a-web01", "a-web02", "a-db01", "b-db01")} == {
        "a-web01": True, "a-web02": True, "a-db01": False, "b-db01": False,
    }  # fmt: skip


def touched(agent: Agent, vm: str) -> bool:
    drive = agent.home / "sim" / "guests" / vm.casefold() / "C"  # absent: never used at all
    return drive.is_dir() and any(p.name.casefold() == "touched.txt" for p in drive.iterdir())


async def test_a_group_with_nothing_the_caller_may_touch_is_refused_without_names(agent_factory: Any) -> None:
    agent: Agent = agent_factory(vms=VMS, groups=GROUPS)
    path = agent.bundle([], [MARK], targets={"groups": ["data"], "tags": []})
    r = await submit(agent, path, who="tenant_b")
    assert r.status_code == 201, r.text
    assert r.json()["job"]["targets"] == ["b-db01"] and "a-db01" not in r.text
    path = agent.bundle([], [MARK], targets={"groups": ["web"]})
    refused = await submit(agent, path, who="tenant_b")
    assert refused.status_code == 403, refused.text
    assert "a-web" not in refused.text
