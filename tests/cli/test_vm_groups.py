"""Bundles that target Hyper-V VM groups and Notes tags, run with ``vmbusops run`` on the simulator.

The lab has groups (one nested in a management collection) and tags in the VMs' Notes beside
prose; each bundle's step leaves a file in the guest, so a test checks in the guest itself which
VMs were touched, and the job's own output says which were left out by the signer's scope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.builders import VM, script, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey

MARK = script("mark", "Set-Content -Path 'C:\\touched.txt' -Value 'job'")
VMS = [
    VM("web01", more={"notes": "Contoso storefront, ticket 4411.\r\ntags: web, prod\nPatch on Sundays."}),
    VM("web02", more={"notes": "tags: web"}),
    VM("db01", more={"notes": "Tags: ask Bob before patching"}),
    VM("ext01", more={"notes": "TAGS: Prod"}),
]
GROUPS = [
    {"name": "web-tier", "vms": ["web01", "web02", "ext01"]},
    {"name": "data-tier", "vms": ["db01"]},
    {"name": "app", "type": "ManagementCollectionType", "groups": ["web-tier", "data-tier"]},
]


@pytest.fixture
def lab(vmbusops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = write_lab(tmp_path, VMS, groups=GROUPS)
    monkeypatch.setenv("VMBUSOPS_LAB", str(path))
    return path


def run(tmp_path: Path, scope: tuple[str, ...], targets: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    key = PrivateKey.generate()
    trust_and_credential(key, vms=scope)
    bundle = signed_bundle(tmp_path, key, vms=[], steps=[MARK], targets=targets)
    ran = vmbusops("run", "--json", str(bundle))
    lines = [json.loads(line) for line in ran.stdout.splitlines() if line.startswith("{")]
    summary = next((line for line in lines if line.get("event") == "summary"), {})
    return ran.returncode, summary, ran.stderr


def touched(vm: str) -> bool:
    ran = vmbusops("exec", "--vm", vm, "--", "Test-Path 'C:\\touched.txt'")
    assert ran.returncode == 0, ran.stderr
    return ran.stdout.strip().splitlines()[-1].endswith("True")


def test_a_nested_group_runs_on_exactly_the_members_the_signers_scope_allows(lab: Path, tmp_path: Path) -> None:
    code, summary, stderr = run(tmp_path, ("web*",), {"groups": ["APP"]})
    assert code == 0, stderr
    assert sorted(r["vm"] for r in summary["runs"]) == ["web01", "web02"]
    assert summary["state"] == "success"
    left = {lo["vm"]: lo["why"] for lo in summary["left_out"]}
    assert set(left) == {"ext01", "db01"} and all("outside the signer's trust scope (web*)" in w for w in left.values())
    assert [touched(vm) for vm in ("web01", "web02", "ext01", "db01")] == [True, True, False, False]
    shown = vmbusops("jobs", "show", str(summary["job"]))
    assert "left out ext01: outside the signer's trust scope" in shown.stdout, shown.stdout


def test_tags_in_notes_select_beside_prose(lab: Path, tmp_path: Path) -> None:
    code, summary, stderr = run(tmp_path, ("*",), {"tags": ["prod"]})
    assert code == 0, stderr
    assert sorted(r["vm"] for r in summary["runs"]) == ["ext01", "web01"]
    assert "left_out" not in summary
    assert [touched(vm) for vm in ("web01", "web02", "ext01", "db01")] == [True, False, True, False]


def test_groups_and_tags_narrow_the_named_vms(lab: Path, tmp_path: Path) -> None:
    code, summary, stderr = run(tmp_path, ("*",), {"vms": ["web*", "db01"], "groups": ["web-*"], "tags": ["web"]})
    assert code == 0, stderr
    assert sorted(r["vm"] for r in summary["runs"]) == ["web01", "web02"]


def test_a_group_wholly_outside_the_scope_refuses_the_job_and_touches_nothing(lab: Path, tmp_path: Path) -> None:
    code, _, stderr = run(tmp_path, ("web*",), {"groups": ["data-tier"]})
    assert code == 4  # the bundle is refused, as any bundle reaching outside its signer's scope
    assert "no VM the bundle's targets select is in the signer's trust scope (web*); left out: db01" in stderr
    assert "Traceback" not in stderr
    assert not touched("db01")


def test_an_unknown_group_or_a_selection_of_nothing_is_refused_with_why(lab: Path, tmp_path: Path) -> None:
    code, _, stderr = run(tmp_path, ("*",), {"groups": ["no-such-group"]})
    assert code == 2 and "no VM group named 'no-such-group' on this host" in stderr, stderr
    code, _, stderr = run(tmp_path, ("*",), {"tags": ["nobody"]})
    assert code == 2 and "the bundle's targets select no VM on this host (tags nobody)" in stderr, stderr


def test_globs_that_match_no_vm_refuse_the_job_instead_of_a_success_of_no_run(lab: Path, tmp_path: Path) -> None:
    code, summary, stderr = run(tmp_path, ("*",), {"vms": ["nomatch*", "none?"]})
    assert code == 2, stderr
    assert "the bundle's targets (nomatch*, none?) select no VM on this host" in stderr
    assert summary == {}
    assert vmbusops("jobs", "--json").stdout.strip() in ("", "[]")  # no job of no run
    # A plain name the host lacks is kept: its run fails there with Hyper-V's message.
    code, summary, _ = run(tmp_path, ("*",), {"vms": ["nomatch*", "ghost01"]})
    assert code == 1 and [r["vm"] for r in summary["runs"]] == ["ghost01"]


def test_a_cycle_of_management_groups_is_refused(vmbusops_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    groups = [
        {"name": "outer", "type": "ManagementCollectionType", "groups": ["inner"]},
        {"name": "inner", "type": "ManagementCollectionType", "groups": ["outer", "web-tier"]},
        {"name": "web-tier", "vms": ["web01"]},
    ]
    monkeypatch.setenv("VMBUSOPS_LAB", str(write_lab(tmp_path, VMS, groups=groups)))
    code, _, stderr = run(tmp_path, ("*",), {"groups": ["outer"]})
    assert code == 2
    assert "VM group 'outer' contains itself (outer -> inner -> outer)" in stderr, stderr
    assert not touched("web01")
