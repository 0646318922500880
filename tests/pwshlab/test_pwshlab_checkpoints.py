"""Checkpoints on the pwsh-lab host, where real PowerShell binds every command, and the same
command lines on the simulator: they bind and fail alike (where they would not, pwsh is right).

Both hosts share one state directory, so a checkpoint taken on one is restored on the other.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pwshlab_support import PwshLab
from tests.builders import VM, lab_text
from tests.guest_state import assert_same_guest, guest_state_at

from vmbusops.guestops.checkpoints import CheckpointError, CheckpointFailure
from vmbusops.psrp.client import Command
from vmbusops.records import ErrorRecord, OutputRecord, PipelineState, PipelineStateRecord, PSObjectValue

pytestmark = pytest.mark.pwsh

LAB = lab_text(
    [
        VM("web01", more={"files": {"C:\\inetpub\\wwwroot\\index.html": "<html>web01</html>\n"},
                          "memory_mb": 1024, "storage_free_mb": 2048}),
        VM("novss01", more={"vss": False}),
        VM("strict01", more={"vss": False, "checkpoint_type": "ProductionOnly"}),
        VM("nockpt01", more={"checkpoint_type": "Disabled"}),
        VM("tight01", more={"storage_free_mb": 10}),
    ],
    name="HV-CKPT",
    boot_seconds=0.0,
    password_seed="pwsh-lab-checkpoints",
)  # fmt: skip


@pytest.fixture
def lab(pwsh_path: str, tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch) -> PwshLab:
    monkeypatch.setenv("VMBUSOPS_PWSH", pwsh_path)
    path = tmp_path / "lab.toml"
    path.write_text(LAB, encoding="utf-8")
    monkeypatch.setenv("VMBUSOPS_LAB", str(path))
    return PwshLab(path, vmbusops_home)


async def test_checkpoints_through_real_powershell_and_across_hosts(lab: PwshLab) -> None:
    state = lab.home / "sim"
    async with lab.open("sim") as sim:
        before = guest_state_at(state, lab.path, "web01")
        taken = await sim.checkpoint_vm("web01", "vmbusops-job-1")
        assert taken.production
    lab.guest_file("web01", "inetpub", "wwwroot", "index.html").write_text("defaced\n", encoding="utf-8")
    async with lab.open() as host:
        # The simulator's checkpoint, seen and restored by pwsh-lab.
        room = await host.checkpoint_room("web01")
        assert (room.checkpoint_type, room.memory_bytes, room.free_bytes) == (
            "Production", 1024 * 1024 * 1024, (2048 - 64) * 1024 * 1024,
        )
        [listed] = await host.get_checkpoints("web01")
        assert (listed.name, listed.vm_name, listed.id, listed.state) == ("vmbusops-job-1", "web01", taken.id, "Off")
        await host.restore_checkpoint("web01", "vmbusops-job-1")
        assert_same_guest(before, guest_state_at(state, lab.path, "web01"))
        assert (await host.get_vm("web01")).state == "Off"

        fallback = await host.checkpoint_vm("novss01", "c1")
        assert fallback.production is False
        await host.restore_checkpoint("novss01", "c1")
        assert (await host.get_vm("novss01")).state == "Saved"
        for vm, reason in (
            ("strict01", CheckpointFailure.PRODUCTION_UNAVAILABLE),
            ("nockpt01", CheckpointFailure.DISABLED),
            ("tight01", CheckpointFailure.NO_SPACE),
        ):
            with pytest.raises(CheckpointError) as failed:
                await host.checkpoint_vm(vm, "c1")
            assert failed.value.reason is reason
        assert await host.remove_checkpoint("web01", "vmbusops-job-1") is True
        assert await host.remove_checkpoint("web01", "vmbusops-job-1") is False
        assert await host.get_checkpoints("web01") == []

        # Aliases resolve as in the Hyper-V module.
        records = await host.pool.run([[Command("Get-VMCheckpoint", {"VMName": "novss01"})]])
        names = [r.value.get("Name") for r in records if isinstance(r, OutputRecord) and isinstance(r.value, PSObjectValue)]
        assert names == ["c1"]


CASES: list[tuple[str, Command]] = [
    ("production only", Command("Checkpoint-VM", {"Name": "strict01", "SnapshotName": "x"})),
    ("disabled", Command("Checkpoint-VM", {"Name": "nockpt01", "SnapshotName": "x"})),
    ("no space", Command("Checkpoint-VM", {"Name": "tight01", "SnapshotName": "x"})),
    ("no such vm", Command("Checkpoint-VM", {"Name": "ghost", "SnapshotName": "x"})),
    ("no such checkpoint", Command("Get-VMSnapshot", {"VMName": "web01", "Name": "ghost"})),
    ("list, no such vm", Command("Get-VMSnapshot", {"VMName": "ghost"})),
    ("restore, no such checkpoint", Command("Restore-VMSnapshot", {"VMName": "web01", "Name": "ghost", "Confirm": False})),
    ("restore, unconfirmed", Command("Restore-VMSnapshot", {"VMName": "web01", "Name": "ghost"})),
    ("remove, no such checkpoint", Command("Remove-VMSnapshot", {"VMName": "web01", "Name": "ghost"})),
    ("two parameter sets", Command("Get-VMSnapshot", {"VMName": "web01", "Id": "00000000-0000-0000-0000-0000000000aa"})),
    ("no VMName to restore", Command("Restore-VMSnapshot", {"Name": "a", "Confirm": False})),
    ("no VMName", Command("Remove-VMSnapshot", {"Name": "a"})),
    ("unknown parameter", Command("Checkpoint-VM", {"Name": "web01", "Description": "x"})),
    ("a volume nowhere", Command("Get-Volume", {"FilePath": "Q:\\nowhere"})),
]


def _view(records: list[object]) -> tuple[str, list[tuple[str, str]]]:
    """The pipeline's end and its errors (FullyQualifiedErrorId without the function suffix, and
    the message's first line)."""
    state = ""
    errors: list[tuple[str, str]] = []
    for record in records:
        error = record.error if isinstance(record, PipelineStateRecord) else record
        if isinstance(record, PipelineStateRecord):
            state = record.state.value
        if isinstance(error, ErrorRecord):
            fqid = error.fqid.removesuffix(f",{error.activity}") if error.activity else error.fqid
            errors.append((fqid.split(",")[0], error.message.splitlines()[0] if error.message else ""))
    return state, errors


async def test_the_same_command_lines_bind_and_fail_alike(lab: PwshLab) -> None:
    results: dict[str, dict[str, tuple[str, list[tuple[str, str]]]]] = {}
    for kind in ("sim", "pwsh-lab"):
        async with lab.open(kind) as host:
            results[kind] = {name: _view(await host.pool.run([[command]])) for name, command in CASES}
    # Unconfirmed, both end the command before it restores anything; the message is the client's
    # refusal on pwsh-lab (PowerShell put the question to the agent) and the simulator's own.
    # A missing mandatory parameter: PowerShell prompts for it (the agent refuses), the simulator
    # fails as a host without a UI does (MissingMandatoryParameter). Either way nothing runs.
    for kind, cases in results.items():
        for case in ("restore, unconfirmed", "no VMName to restore", "no VMName"):
            state, errors = cases.pop(case)
            assert state == PipelineState.FAILED.value and len(errors) == 1, (kind, case, errors)
    for name in results["sim"]:
        assert results["sim"][name][1], f"{name}: the simulator reported no error"
        assert results["pwsh-lab"][name] == results["sim"][name], name
    assert results["sim"]["two parameter sets"][0] == PipelineState.FAILED.value
