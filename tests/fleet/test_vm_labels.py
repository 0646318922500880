"""What agents report of their VMs' groups and tags, and how the controller resolves a bundle's
groups and tags from those reports (:mod:`vmbusops.fleet.vm_labels`)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.builders import manifest_doc

from vmbusops.bundle.manifest import Manifest, manifest_from_dict
from vmbusops.errors import ConfigError
from vmbusops.fleet.vm_labels import labels_of, resolve_in_fleet
from vmbusops.guestops.host import VMInfo
from vmbusops.guestops.vm_groups import MANAGEMENT_COLLECTION, Member, VMGroupInfo

SAY = {"kind": "script", "name": "say", "inline": "Write-Output hi"}
A1, A2 = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000a2"


def by(targets: dict[str, Any]) -> Manifest:
    doc = manifest_doc([], [SAY])
    doc["targets"] = targets
    return manifest_from_dict(doc)


def vm(name: str, ident: str, notes: str = "") -> VMInfo:
    return VMInfo(name=name, id=ident.upper(), state="Running", heartbeat=None, guest_services=True, notes=notes)


def test_an_agent_reports_groups_recursively_and_only_the_tags_of_notes() -> None:
    vms = [vm("a1", A1, "prose\ntags: Web, prod"), vm("a2", A2, "Tags: ask Bob first")]
    patch = VMGroupInfo("patch", "g1", "VMCollectionType", vm_members=(Member(A1, "a1"),))
    night = VMGroupInfo("nightly", "g2", MANAGEMENT_COLLECTION, group_members=(Member("g1", "patch"),))
    loop1 = VMGroupInfo("x", "g3", MANAGEMENT_COLLECTION, group_members=(Member("g4", "y"),))
    loop2 = VMGroupInfo("y", "g4", MANAGEMENT_COLLECTION, group_members=(Member("g3", "x"),))
    assert labels_of(vms, [patch, night, loop1, loop2]) == {A1: {"groups": ["nightly", "patch"], "tags": ["prod", "web"]}}


def test_the_controller_resolves_over_live_hosts_reports_and_trusts_no_malformed_tag() -> None:
    entries = {
        "HV-A": {"groups": ["patch"], "vms": [{"vm_id": A1, "groups": ["patch"], "tags": ["web", "a,b", 7]}]},
        "HV-B": {"vms": [{"vm_id": A2, "groups": ["patch"], "tags": ["web\ntags: db"]}]},
    }
    placed = [("a1", A1, "HV-A"), ("a2", A2, "HV-B")]
    assert resolve_in_fleet(by({"groups": ["patch"]}), placed, entries) == ["a1", "a2"]
    assert resolve_in_fleet(by({"tags": ["web"]}), placed, entries) == ["a1"]
    assert resolve_in_fleet(by({"vms": ["a2"], "groups": ["pat*"]}), placed, entries) == ["a2"]
    # What a host reports counts only for the VMs placement shows on it.
    with pytest.raises(ConfigError, match="select no VM"):
        resolve_in_fleet(by({"groups": ["patch"]}), [("a1", A1, "HV-B")], entries)
    with pytest.raises(ConfigError, match="select no VM on any live host of the fleet"):
        resolve_in_fleet(by({"tags": ["db"]}), placed, entries)
    with pytest.raises(ConfigError, match="no VM group named 'nope' on any live host of the fleet"):
        resolve_in_fleet(by({"groups": ["nope"]}), placed, entries)
