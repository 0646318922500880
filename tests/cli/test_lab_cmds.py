"""``vmbusops lab``: the simulated fleet's placement, live migration and node failure, as typed
(in this process: tests.clirun); the simulator processes see it in tests/sim/test_cluster_process.py."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clirun import vmbusops

FLEET = """
[host]
password_seed = "cli-fleet"
[[hosts]]
prefix = "HV-"
count = 2
cluster = "CL1"
[[hosts]]
name = "HV-L"
[generate]
count = 5
prefix = "vm"
hosts = "*"
"""


def lab_env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "fleet.toml"
    path.write_text(FLEET, encoding="utf-8")
    return {"VMBUSOPS_LAB": str(path), "VMBUSOPS_SIM_STATE": str(tmp_path / "shared-state")}


def status(env: dict[str, str]) -> dict[str, object]:
    ran = vmbusops("lab", "status", "--json", env=env)
    assert ran.returncode == 0, ran.stderr
    shown: dict[str, object] = json.loads(ran.stdout)
    return shown


def test_status_migrate_fail_and_restore(tmp_path: Path) -> None:
    env = lab_env(tmp_path)
    first = status(env)
    assert first["hosts"] == [
        {"host": "HV-01", "cluster": "CL1", "down": False},
        {"host": "HV-02", "cluster": "CL1", "down": False},
        {"host": "HV-L", "cluster": None, "down": False},
    ]
    assert [(v["vm"], v["host"]) for v in first["vms"]] == [  # type: ignore[attr-defined]
        ("vm001", "HV-01"), ("vm002", "HV-02"), ("vm003", "HV-L"), ("vm004", "HV-01"), ("vm005", "HV-02"),
    ]  # fmt: skip
    moved = vmbusops("lab", "migrate", "vm001", "--to", "HV-02", env=env)
    assert (moved.returncode, moved.stdout) == (0, "vm001: HV-01 -> HV-02 (live migration)\n")
    failed = vmbusops("lab", "fail-host", "HV-02", env=env)
    assert failed.returncode == 0, failed.stderr
    assert failed.stdout.splitlines() == [
        "vm001: HV-02 -> HV-01, restarted", "vm002: HV-02 -> HV-01, restarted", "vm005: HV-02 -> HV-01, restarted",
    ]  # fmt: skip
    assert {h["host"]: h["down"] for h in status(env)["hosts"]}["HV-02"] is True  # type: ignore[attr-defined]
    lone = vmbusops("lab", "fail-host", "HV-L", "--json", env=env)
    assert json.loads(lone.stdout)["vms"] == [{"vm": "vm003", "from": "HV-L", "to": None, "restarted": False}]
    back = vmbusops("lab", "restore-host", "HV-L", env=env)
    assert back.stdout.splitlines() == ["vm003: boots again on HV-L", "HV-L is up"]


def test_refusals_are_one_line_usage_errors_and_change_nothing(tmp_path: Path) -> None:
    env = lab_env(tmp_path)
    before = status(env)
    for args, says in [
        (("migrate", "vm001", "--to", "HV-L"), "HV-L is not a node of HV-01's cluster CL1"),
        (("migrate", "vm001", "--to", "HV-9"), "The cluster node was not found."),
        (("migrate", "nosuch", "--to", "HV-02"), 'unable to find a virtual machine with name "nosuch"'),
        (("fail-host", "HV-9"), "'HV-9' is not a host of the lab"),
    ]:
        ran = vmbusops("lab", *args, env=env)
        assert ran.returncode == 2, (args, ran.stderr)
        assert ran.stderr.startswith("vmbusops: ") and says in ran.stderr.splitlines()[0], ran.stderr
        assert "Traceback" not in ran.stderr
    assert status(env) == before


def test_status_shows_each_vms_checkpoints(tmp_path: Path) -> None:
    from vmbusops.sim import checkpoints
    from vmbusops.sim.lab import load_lab
    from vmbusops.sim.state import HostStore
    from vmbusops.sim.streams import SimError

    env = lab_env(tmp_path)
    store = HostStore(load_lab(env["VMBUSOPS_LAB"]), Path(env["VMBUSOPS_SIM_STATE"]))
    spec = store.lab.find("vm002")
    assert spec is not None
    taken = checkpoints.take(store, spec, "vmbusops-job-1", store.clock())
    assert not isinstance(taken, SimError)
    store.close()
    shown = {v["vm"]: v["checkpoints"] for v in status(env)["vms"]}  # type: ignore[attr-defined]
    assert [c["name"] for c in shown["vm002"]] == ["vmbusops-job-1"] and shown["vm001"] == []
    assert shown["vm002"][0]["production"] is True
    # A live migration keeps the VM's checkpoints with it.
    assert vmbusops("lab", "migrate", "vm002", "--to", "HV-01", env=env).returncode == 0
    text = vmbusops("lab", "status", env=env).stdout.splitlines()
    assert "vm002  Running  on HV-01  checkpoints: vmbusops-job-1" in text
