"""Targets by VM group and by Notes tag across the fleet, as real processes: the controller
resolves them from what the live hosts report, the signer's scope bounds them by VM name, and
each agent checks its run again with its own trust policy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fleet.fleetprocs import FleetProcs, placed, runs_of, submit, wait_job

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.manifest import StepKind
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
from vmbusops.fleet.natsserver import NatsServer
from vmbusops.home import private_dir

VMS = {"vm-a1": "HV-A", "vm-a2": "HV-A", "vm-b1": "HV-B", "vm-c1": "HV-C", "vm-c2": "HV-C"}
#: "patch" holds a VM on each host; "nightly" is a management group over it; vm-a2 and vm-c2 are
#: tagged "web" in their Notes (among prose that is not tags).
MORE_LAB = """
[[group]]
name = "patch"
vms = ["vm-a1", "vm-b1", "vm-c1"]
[[group]]
name = "nightly"
type = "ManagementCollectionType"
groups = ["patch"]
"""
NOTES = {"vm-a2": "Customer: Contoso.\ntags: web, prod", "vm-c2": "tags: WEB", "vm-b1": "Tags: ask Bob first"}
SAY = {"kind": "script", "name": "say", "inline": 'Write-Output "ran on $env:COMPUTERNAME"'}



@pytest.fixture
def fleet(nats_server: NatsServer, tmp_path: Path) -> Iterator[FleetProcs]:
    procs = FleetProcs(tmp_path, nats_server.url, dict(VMS), more_lab=MORE_LAB, notes=NOTES)
    try:
        yield procs
    except BaseException:
        print(procs.logs())
        raise
    finally:
        procs.close()


def trust_only(fleet: FleetProcs, names: list[str], vms: tuple[str, ...]) -> None:
    """The homes of ``names`` trust the fleet's key for ``vms`` only (before they start)."""
    for name in names:
        home = fleet.directory / f"home-{name}"
        private_dir(home)
        scope = Scope(keys=(), vms=vms, credentials=("*",), steps=frozenset(StepKind), threshold=1)
        policy = TrustPolicy().with_key(TrustedKey(name="local-fleet", public=fleet.key.public_key()), scope)
        save_trust_policy(policy, home / "trust.toml")


def bundle(fleet: FleetProcs, name: str, targets: dict[str, Any]) -> Path:
    import tomli_w

    source = fleet.directory / "bundles" / name
    source.mkdir(parents=True)
    doc = {"name": name, "version": 1, "credential": "lab-admin", "targets": targets, "steps": [SAY]}
    (source / "bundle.toml").write_text(tomli_w.dumps(doc), encoding="utf-8")
    out = source.with_suffix(".vmb")
    build_bundle(source, out)
    sign_bundle(out, fleet.key)
    return out


async def test_a_group_runs_on_exactly_its_members_the_signers_scope_allows_across_hosts(fleet: FleetProcs) -> None:
    # The controller's and HV-A's, HV-B's policies scope the key to vm-a* and vm-b*; HV-C's to every VM.
    trust_only(fleet, ["ctl1", "HV-A", "HV-B"], ("vm-a*", "vm-b*"))
    for host in ("HV-A", "HV-B", "HV-C"):
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    await placed(ctl, VMS)

    response = await submit(ctl, bundle(fleet, "by-group", {"groups": ["nightly"]}))
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    ended = await wait_job(ctl, job["id"])
    assert ended["state"] == "success", ended
    runs = {r["vm"]: r for r in await runs_of(ctl, job["id"])}
    assert sorted(runs) == ["vm-a1", "vm-b1"]  # vm-c1 is in the group, outside the signer's scope
    assert all(r["state"] == "success" for r in runs.values()), runs
    assert [lo["vm"] for lo in ended["left_out"]] == ["vm-c1"] and "trust scope" in ended["left_out"][0]["why"]

    response = await submit(ctl, bundle(fleet, "by-tag", {"tags": ["web"]}))
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    ended = await wait_job(ctl, job["id"])
    assert sorted(r["vm"] for r in await runs_of(ctl, job["id"])) == ["vm-a2"], ended  # vm-c2: out of scope
    assert ended["state"] == "success", ended

    response = await submit(ctl, bundle(fleet, "no-group", {"groups": ["no-such-group"]}))
    assert response.status_code == 422 and "no VM group named 'no-such-group'" in response.text, response.text
    assert "live host of the fleet" in json.dumps(response.json())


async def test_an_agent_refuses_a_group_member_its_own_policy_does_not_scope(fleet: FleetProcs) -> None:
    # The controller lets the key touch every VM; HV-C's own policy does not cover vm-c1.
    trust_only(fleet, ["HV-C"], ("vm-a*", "vm-b*", "vm-c2"))
    for host in ("HV-A", "HV-B", "HV-C"):
        fleet.start_agent(host)
    ctl = fleet.start_controller("ctl1", "--canary", "0")
    await placed(ctl, VMS)
    response = await submit(ctl, bundle(fleet, "by-group", {"groups": ["patch"]}))
    assert response.status_code == 201, response.text
    job = response.json()["job"]
    ended = await wait_job(ctl, job["id"])
    runs = {r["vm"]: r["state"] for r in await runs_of(ctl, job["id"])}
    assert runs == {"vm-a1": "success", "vm-b1": "success", "vm-c1": "failed"}, ended
    journal = fleet.agents["HV-C"].journal()
    try:
        assert list(journal.jobs()) == []  # refused before anything ran there
    finally:
        journal.close()
