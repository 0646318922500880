"""Get-VMGroup on real PowerShell: what the agent sends binds to the real parameter sets, and the
pwsh-lab host and the simulator resolve a bundle's groups to the same VMs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pwshlab_support import PwshLab
from tests.builders import VM, lab_text, manifest, script

from vmbusops.engine.targets import resolve_on_host
from vmbusops.psrp.client import Command
from vmbusops.records import ErrorRecord, OutputRecord, PipelineStateRecord, PSObjectValue

pytestmark = pytest.mark.pwsh

STEPS = [script("hello", "'hello'")]
GROUPS = [
    {"name": "web-tier", "vms": ["web01", "web02"]},
    {"name": "data-tier", "vms": ["db01"]},
    {"name": "app", "type": "ManagementCollectionType", "groups": ["web-tier", "data-tier"]},
]


@pytest.fixture
def group_lab(pwsh_path: str, tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch) -> PwshLab:
    monkeypatch.setenv("VMBUSOPS_PWSH", pwsh_path)
    path = tmp_path / "lab.toml"
    vms = [VM("web01", more={"notes": "tags: web, prod"}), VM("web02"), VM("db01", more={"notes": "tags: prod"})]
    path.write_text(lab_text(vms, name="HV-LAB01", groups=GROUPS), encoding="utf-8")
    monkeypatch.setenv("VMBUSOPS_LAB", str(path))
    return PwshLab(path, vmbusops_home)


async def test_groups_resolve_alike_on_real_powershell_and_the_simulator(group_lab: PwshLab) -> None:
    bundles = [
        manifest([], STEPS, targets={"groups": ["app"]}),
        manifest([], STEPS, targets={"vms": ["web*"], "groups": ["APP"], "tags": ["prod"]}),
        manifest([], STEPS, targets={"groups": ["data-*"]}),
    ]
    resolved: dict[str, list[list[str]]] = {}
    groups: dict[str, list[tuple[str, str, int, int]]] = {}
    for kind in ("pwsh-lab", "sim"):
        async with group_lab.open(kind) as host:
            found = await host.list_vm_groups()
            groups[kind] = [(g.name, g.group_type, len(g.vm_members), len(g.group_members)) for g in found]
            resolved[kind] = [await resolve_on_host(m, host) for m in bundles]
    assert groups["pwsh-lab"] == groups["sim"] == [
        ("web-tier", "VMCollectionType", 2, 0), ("data-tier", "VMCollectionType", 1, 0),
        ("app", "ManagementCollectionType", 0, 2),
    ]  # fmt: skip
    assert resolved["pwsh-lab"] == resolved["sim"] == [["web01", "web02", "db01"], ["web01"], ["db01"]]


async def test_get_vm_group_parameter_sets_bind_as_the_real_cmdlet(group_lab: PwshLab) -> None:
    outcomes: dict[str, list[object]] = {}
    for kind in ("pwsh-lab", "sim"):
        async with group_lab.open(kind) as host:
            [by_id] = [g.id for g in await host.list_vm_groups() if g.name == "app"]
            out: list[object] = []
            for params in ({"Name": "*"}, {"Id": by_id}, {"Name": ["web-*", "ghost"]}, {"Name": "app", "Id": by_id}):
                records = await host.pool.run([[Command("Get-VMGroup", params)]])
                names = [r.value.get("Name") for r in records if isinstance(r, OutputRecord) and isinstance(r.value, PSObjectValue)]
                errors = [r.message for r in records if isinstance(r, ErrorRecord)]
                final = records[-1]
                failed = final.error.fqid.split(",")[0] if isinstance(final, PipelineStateRecord) and final.error else None
                out.append((names, errors, failed))
            outcomes[kind] = out
    assert outcomes["pwsh-lab"] == outcomes["sim"]
    assert outcomes["sim"] == [
        (["web-tier", "data-tier", "app"], [], None),
        (["app"], [], None),
        (["web-tier"], ['Hyper-V was unable to find a virtual machine group with name "ghost".'], None),
        ([], [], "AmbiguousParameterSet"),
    ]
