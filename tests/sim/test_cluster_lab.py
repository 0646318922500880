"""A lab of several hosts: ``[[hosts]]``, each VM's first owner, generated VMs spread over hosts,
and the state's placement changed by migrate / fail-host / restore-host (no simulator process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmbusops.errors import ConfigError
from vmbusops.sim.cluster import ClusterOperationError, fail_host, migrate_vm, placements, restore_host
from vmbusops.sim.lab import parse_lab
from vmbusops.sim.state import HostStore

FLEET = """
[host]
boot_seconds = 30.0
password_seed = "fleet-seed"

[[hosts]]
name = "HV-A"
cluster = "CL1"
[[hosts]]
name = "HV-B"
cluster = "CL1"
[[hosts]]
name = "HV-C"
cluster = "CL1"
[[hosts]]
name = "HV-L"

[[vm]]
name = "web01"
guest_services = true
[[vm]]
name = "db01"
host = "hv-b"
[[vm]]
name = "lone01"
host = "HV-L"
[[vm]]
name = "off01"
state = "Off"
"""


def store_of(tmp_path: Path, text: str = FLEET) -> HostStore:
    return HostStore(parse_lab(text, source="fleet.toml"), tmp_path / "state")


def owners(store: HostStore) -> dict[str, str]:
    return {p.vm: p.host for p in placements(store)[0]}


def test_hosts_clusters_and_first_owners() -> None:
    lab = parse_lab(FLEET)
    assert [(h.name, h.cluster) for h in lab.hosts] == [("HV-A", "CL1"), ("HV-B", "CL1"), ("HV-C", "CL1"), ("HV-L", None)]
    # The first host by default; the lab's spelling of a host named in another case.
    assert {vm.name: vm.host for vm in lab.vms} == {"web01": "HV-A", "db01": "HV-B", "lone01": "HV-L", "off01": "HV-A"}
    assert lab.find_host("hv-c") is lab.hosts[2]


def test_a_single_host_lab_is_unchanged() -> None:
    lab = parse_lab('[host]\nname = "HV-SIM09"\n[[vm]]\nname = "web01"\n')
    assert [(h.name, h.cluster) for h in lab.hosts] == [("HV-SIM09", None)]
    assert lab.vms[0].host == "HV-SIM09"


def test_generated_vms_spread_round_robin_and_hosts_by_prefix() -> None:
    lab = parse_lab(
        '[[hosts]]\nprefix = "HV-"\ncount = 20\ncluster = "C1"\n'
        '[generate]\ncount = 1000\nprefix = "bench"\nhosts = "*"\n'
    )
    assert [h.name for h in lab.hosts][:3] == ["HV-01", "HV-02", "HV-03"] and len(lab.hosts) == 20
    per_host: dict[str, int] = {}
    for vm in lab.vms:
        per_host[vm.host] = per_host.get(vm.host, 0) + 1
    assert per_host == {f"HV-{i:02d}": 50 for i in range(1, 21)}
    assert lab.vms[0].host == "HV-01" and lab.vms[1].host == "HV-02" and lab.vms[20].host == "HV-01"
    two = parse_lab(
        '[[hosts]]\nname = "A"\n[[hosts]]\nname = "B"\n[[hosts]]\nname = "C"\n'
        '[generate]\ncount = 4\nhosts = ["C", "a"]\n'
    )
    assert [vm.host for vm in two.vms] == ["C", "A", "C", "A"]
    alone = parse_lab('[[hosts]]\nname = "A"\n[[hosts]]\nname = "B"\n[generate]\ncount = 2\n')
    assert [vm.host for vm in alone.vms] == ["A", "A"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[[hosts]]\nname = "HV A"\n', "hosts.name must be 1 to 64 letters, digits, '-' or '_', not 'HV A'"),
        ('[[hosts]]\nname = "' + "x" * 65 + '"\n', "hosts.name must be 1 to 64"),
        ('[[hosts]]\nname = "A"\ncluster = "c.1"\n', "hosts.cluster must be 1 to 64"),
        ('[[hosts]]\nname = "A"\n[[hosts]]\nname = "a"\n', "host name 'a' appears twice"),
        ('[[hosts]]\nname = "A"\nzone = 1\n', "unknown key(s) zone"),
        ('[[hosts]]\nname = "A"\ncount = 2\n', "hosts.count goes with a prefix"),
        ('[[hosts]]\nprefix = "H"\ncount = 0\n', "hosts.count must be a whole number from 1 to 10000"),
        ("hosts = []\n", "hosts is empty"),
        ('[host]\nname = "X"\n[[hosts]]\nname = "A"\n', "[host] name names the one host of a single-host lab"),
        ('[[hosts]]\nname = "A"\n[[vm]]\nname = "w"\nhost = "B"\n', "[[vm]] 'w': host 'B' is not a host of this lab"),
        ('[[hosts]]\nname = "A"\n[generate]\ncount = 1\nhosts = ["Z"]\n', "[generate]: host 'Z' is not a host"),
        ('[[hosts]]\nname = "A"\n[generate]\ncount = 1\nhosts = []\n', "generate.hosts is empty"),
    ],
)
def test_bad_hosts_are_one_clear_lab_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_lab(text, source="bad.toml")
    assert says in caught.value.message
    assert "\n" not in caught.value.message


def test_migrate_moves_the_owner_only_within_a_cluster(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    before = store.runtime(store.lab.vms[0])
    move = migrate_vm(store, "WEB01", "hv-b")
    assert (move.vm, move.source, move.to, move.restarted) == ("web01", "HV-A", "HV-B", False)
    after = store.runtime(store.lab.vms[0])
    # The guest keeps running: same boot, same uptime; only the owner (and its move count) changed.
    assert (after.host, after.moves) == ("HV-B", before.moves + 1)
    assert (after.running_since, after.boot_until, after.state) == (before.running_since, before.boot_until, before.state)
    # Another store over the same directory (another process) sees it.
    assert owners(store_of(tmp_path))["web01"] == "HV-B"
    assert migrate_vm(store, "web01", "HV-B").source == "HV-B"  # already there: nothing to do
    assert migrate_vm(store, "off01", "HV-C").to == "HV-C"  # an Off VM moves too (a quick move)


@pytest.mark.parametrize(
    ("vm", "to", "says"),
    [
        ("web01", "HV-Z", "The cluster node was not found. (0x800713B2) ('HV-Z' is not a host of the lab"),
        ("web01", "HV-L", "HV-L is not a node of HV-A's cluster CL1"),
        ("lone01", "HV-A", "HV-L is not a node of a cluster"),
        ("nosuch", "HV-B", 'Hyper-V was unable to find a virtual machine with name "nosuch".'),
    ],
)
def test_bad_migrations_are_refused_and_change_nothing(tmp_path: Path, vm: str, to: str, says: str) -> None:
    store = store_of(tmp_path)
    before = owners(store)
    with pytest.raises(ClusterOperationError) as caught:
        migrate_vm(store, vm, to)
    assert says in caught.value.message
    assert owners(store) == before


def test_a_dead_node_neither_sends_nor_takes_a_migration(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    fail_host(store, "HV-C")
    with pytest.raises(ClusterOperationError, match=r"The cluster node is down\. \(0x800713BA\) \(HV-C failed\)"):
        migrate_vm(store, "web01", "HV-C")
    restore_host(store, "HV-C")
    assert migrate_vm(store, "web01", "HV-C").to == "HV-C"


def test_fail_host_fails_over_round_robin_and_restarts(tmp_path: Path) -> None:
    now = [1000.0]
    store = store_of(tmp_path)
    migrate_vm(store, "db01", "HV-A")
    moves = fail_host(store, "HV-A", clock=lambda: now[0])
    # Lab order, round robin over the live nodes of HV-A's cluster; a running VM restarts, an Off one stays off.
    assert [(m.vm, m.to, m.restarted) for m in moves] == [
        ("web01", "HV-B", True), ("db01", "HV-C", True), ("off01", "HV-B", False),
    ]  # fmt: skip
    web = store.runtime(store.lab.find("web01"))  # type: ignore[arg-type]
    assert (web.running_since, web.boot_until) == (1000.0, 1030.0)
    assert store.down_hosts() == frozenset({"HV-A"})
    assert fail_host(store, "HV-A") == []  # already down
    # Back up: its VMs do not fail back.
    assert restore_host(store, "HV-A") == []
    assert owners(store)["web01"] == "HV-B" and store.down_hosts() == frozenset()


def test_a_lone_host_keeps_its_vms_unreachable_and_boots_them_when_back(tmp_path: Path) -> None:
    now = [50.0]
    store = store_of(tmp_path)
    moves = fail_host(store, "HV-L", clock=lambda: now[0])
    assert [(m.vm, m.to) for m in moves] == [("lone01", None)]
    rows = {p.vm: p for p in placements(store)[0]}
    assert rows["lone01"].host == "HV-L" and not rows["lone01"].reachable
    now[0] = 80.0
    booted = restore_host(store, "HV-L", clock=lambda: now[0])
    assert [(m.vm, m.restarted) for m in booted] == [("lone01", True)]
    lone = store.runtime(store.lab.find("lone01"))  # type: ignore[arg-type]
    assert (lone.host, lone.running_since, lone.boot_until) == ("HV-L", 80.0, 110.0)


def test_state_written_before_owners_existed_takes_the_lab_host(tmp_path: Path) -> None:
    store = store_of(tmp_path)
    store.snapshot()
    state = tmp_path / "state" / "state.json"
    raw = json.loads(state.read_text())
    del raw["down"]
    for vm in raw["vms"].values():
        del vm["host"], vm["moves"]
    state.write_text(json.dumps(raw))
    assert owners(store_of(tmp_path)) == {"web01": "HV-A", "db01": "HV-B", "lone01": "HV-L", "off01": "HV-A"}
