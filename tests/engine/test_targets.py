"""Target resolution without a host: groups (nested, by id or name, hostile member text), tags, and
the signer's scope applied by VM name after resolution."""

from __future__ import annotations

from typing import Any

import pytest
from tests.builders import manifest, script

from vmbusops.bundle.errors import ManifestError, TargetOutOfScopeError
from vmbusops.engine.targets import HostVM, resolve_targets, within_scope
from vmbusops.errors import ConfigError
from vmbusops.guestops.vm_groups import Member, VMGroupInfo, parse_vm_group
from vmbusops.records import PSObjectValue
from vmbusops.vm_names import HostNames, vms_matching

STEPS = [script("hello", "'hello'")]
VMS = [
    HostVM("web01", "11111111-1111-1111-1111-111111111111", "tags: web"),
    HostVM("web02", "22222222-2222-2222-2222-222222222222", "prose\ntags: web, prod"),
    HostVM("db01", "33333333-3333-3333-3333-333333333333", "tags: prod"),
    HostVM("it's [odd]", "44444444-4444-4444-4444-444444444444", ""),
]


def vm_text(vm: HostVM) -> str:
    return f"VirtualMachine (Name = '{vm.name}') [Id = '{vm.id}']"


def group(name: str, gid: str, *, vms: tuple[Any, ...] = (), groups: tuple[Any, ...] = ()) -> VMGroupInfo:
    kind = "ManagementCollectionType" if groups else "VMCollectionType"
    value = PSObjectValue(
        ("Microsoft.HyperV.PowerShell.VMGroup",),
        (("Name", name), ("InstanceId", gid), ("GroupType", kind), ("VMMembers", vms), ("VMGroupMembers", groups)),
    )
    parsed = parse_vm_group(value)
    assert parsed is not None
    return parsed


G1, G2, G3, G4 = (f"{n}{n}{n}{n}{n}{n}{n}{n}-0000-0000-0000-000000000000" for n in "abcd")
GROUPS = [
    group("web-tier", G1, vms=(vm_text(VMS[0]), vm_text(VMS[1]))),
    group("odd", G2, vms=(vm_text(VMS[3]), "VirtualMachine (Name = 'gone') [Id = '99999999-9999-9999-9999-999999999999']")),
    group("all", G3, groups=(f"VMGroup (Name = 'web-tier') [Id = '{G1}']", PSObjectValue(("x",), (("Name", "odd"),)))),
    group("top", G4, groups=(f"VMGroup (Name = 'renamed') [Id = '{G3}']",)),
]


def resolve(targets: dict[str, Any], groups: list[VMGroupInfo] = GROUPS) -> list[str]:
    return resolve_targets(manifest([], STEPS, targets=targets), VMS, groups)


def test_members_are_found_by_id_whatever_their_names_hold() -> None:
    assert GROUPS[1].vm_members[0] == Member("44444444-4444-4444-4444-444444444444", "it's [odd]")
    assert resolve({"groups": ["odd"]}) == ["it's [odd]"]  # a member the host no longer has is ignored


def test_management_groups_resolve_recursively_by_id_before_name() -> None:
    assert resolve({"groups": ["TOP"]}) == ["web01", "web02", "it's [odd]"]
    assert resolve({"groups": ["web-*"], "tags": ["PROD"]}) == ["web02"]
    assert resolve({"vms": ["db01", "web02"], "groups": ["all"]}) == ["web02"]
    assert resolve({"tags": ["prod"]}) == ["web02", "db01"]


def test_a_cycle_an_unknown_group_and_an_empty_selection_are_refused() -> None:
    cyclic = [group("a", G1, groups=(f"VMGroup (Name = 'b') [Id = '{G2}']",)), group("b", G2, groups=("a",))]
    with pytest.raises(ConfigError, match=r"VM group 'a' contains itself \(a -> b -> a\)"):
        resolve({"groups": ["a"]}, cyclic)
    with pytest.raises(ConfigError, match="no VM group named 'nope'"):
        resolve({"groups": ["nope"]})
    assert resolve({"groups": ["nope*", "web-tier"]}) == ["web01", "web02"]  # a glob may match nothing
    with pytest.raises(ConfigError, match=r"select no VM on this host \(groups web-tier; tags prod\)"):
        resolve({"vms": ["web01"], "groups": ["web-tier"], "tags": ["prod"]})


def test_without_groups_or_tags_names_resolve_as_before() -> None:
    m = manifest(["WEB*", "ghost"], STEPS)
    assert resolve_targets(m, ["web01", "web02", "db01"]) == ["web01", "web02", "ghost"]


def test_the_signers_scope_leaves_out_by_name_after_resolution() -> None:
    kept, left = within_scope(["web01", "db01", "web02"], ("web*",))
    assert kept == ["web01", "web02"] and [lo.vm for lo in left] == ["db01"]
    assert "outside the signer's trust scope (web*)" in left[0].why
    assert within_scope(["db01"], None) == (["db01"], [])
    with pytest.raises(TargetOutOfScopeError, match="left out: db01"):
        within_scope(["db01"], ("web*",))


def test_a_manifest_needs_some_target_and_tags_must_be_tag_names() -> None:
    assert manifest([], STEPS, targets={"groups": ["g"]}).targets.vms == ()
    with pytest.raises(ManifestError, match="must name at least one VM"):
        manifest([], STEPS, targets={"vms": []})
    with pytest.raises(ManifestError, match="'a b' is not a tag name"):
        manifest([], STEPS, targets={"tags": ["a b"]})


def test_many_names_pick_what_one_name_at_a_time_picks() -> None:
    """A bundle naming many VMs is resolved with one lookup per name (HostNames); what it picks is
    what vms_matching picks for each name alone: case-insensitively, the host's first spelling,
    globs in the host's order, and a name the host lacks kept as given (its run fails there)."""
    host = ["Web01", "web01", "db01", "it's [odd]", "ÉCOLE", "web10"]
    patterns = ["WEB01", "db01", "it's [odd]", "école", "ghost", "web1?", "*", "DB0[1]"]
    index = HostNames(host)
    assert [index.matching(p) for p in patterns] == [vms_matching(p, host) for p in patterns]
    assert index.matching("WEB01") == ["Web01"]
    m = manifest(["web01", "ghost", "DB01", "web01"], STEPS)
    assert resolve_targets(m, host) == ["Web01", "ghost", "db01"]
