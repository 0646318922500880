"""Checkpoints on the simulated host: Checkpoint-VM, Get-/Restore-/Remove-VMSnapshot over PSRP.

A checkpoint keeps the whole guest and a restore puts back exactly that (compared with
tests/guest_state.py), leaves the VM as Hyper-V does (Off after a production checkpoint, Saved
after a standard one of a running VM), and every cmdlet binds and fails as Hyper-V's does.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from psrpcore.types import PSInvocationState
from sim_testclient import in_memory_client, run_in_guest
from tests.builders import VM, lab_text
from tests.guest_state import assert_same_guest, differences, guest_state

from vmbusops.sim import dsc_lcm, guest_system
from vmbusops.sim.lab import parse_lab
from vmbusops.sim.state import HostStore

LAB = lab_text(
    [
        VM("web01", more={
            "services": [{"name": "W3SVC", "display_name": "World Wide Web Publishing Service", "status": "Running"}],
            "hotfixes": [{"id": "KB5034439", "description": "Security Update", "installed_on": "2024-01-09"}],
            "files": {"C:\\inetpub\\wwwroot\\index.html": "hello from web01\n"},
        }),
        VM("novss01", more={"vss": False}),
        VM("strict01", more={"vss": False, "checkpoint_type": "ProductionOnly"}),
        VM("nockpt01", more={"checkpoint_type": "Disabled"}),
        VM("tight01", more={"storage_free_mb": 100, "memory_mb": 512}),
        VM("std01", more={"checkpoint_type": "Standard"}),
        VM("off01", state="Off"),
    ],
    boot_seconds=0.0,
    password_seed="ckpt-seed",
)  # fmt: skip


@pytest.fixture
def ckstore(tmp_path: Path) -> HostStore:
    return HostStore(parse_lab(LAB, source="<checkpoint lab>"), tmp_path / "state")


def _vm(store: HostStore, name: str):  # type: ignore[no-untyped-def]
    spec = store.lab.find(name)
    assert spec is not None
    return spec


def _change_everything(store: HostStore, vm: str) -> None:
    """Change every kind of state the guest keeps: files, services, hotfixes, DSC, tasks."""
    spec = _vm(store, vm)
    root = store.guest_root(spec)
    (root / "C" / "inetpub" / "wwwroot" / "index.html").write_text("defaced\n", encoding="utf-8")
    (root / "C" / "new-file.txt").write_text("new\n", encoding="utf-8")
    shutil.rmtree(root / "C" / "Program Files")
    system = guest_system.load_system(store, spec)
    system.services["w3svc"] = {"name": "W3SVC", "state": "Stopped", "startup": "Disabled"}
    system.updates_installed.append("KB5099999")
    system.registry["HKLM:\\SOFTWARE\\Contoso"] = {"Version": "2"}
    guest_system.save_system(store, spec, system)
    lcm = dsc_lcm.load_lcm(store, spec)
    lcm.meta["ConfigurationMode"] = "ApplyAndAutoCorrect"
    lcm.pending_configuration = True
    dsc_lcm.save_lcm(store, spec, lcm)
    mof = root / "C" / "Windows" / "System32" / "Configuration" / "Current.mof"
    mof.parent.mkdir(parents=True, exist_ok=True)
    mof.write_text("instance of MSFT_Changed {};\n", encoding="utf-8")
    (root / "tasks.json").write_text(json.dumps({"tasks": {"\\evil": {"state": "Ready"}}}), encoding="utf-8")


def _seed_state(store: HostStore, vm: str) -> None:
    """Give the guest some of each kind of state first, so the checkpoint holds real content."""
    spec = _vm(store, vm)
    root = store.guest_root(spec)
    system = guest_system.load_system(store, spec)
    system.updates_installed.append("KB5000001")
    guest_system.save_system(store, spec, system)
    lcm = dsc_lcm.load_lcm(store, spec)
    lcm.meta["ConfigurationMode"] = "ApplyAndMonitor"
    dsc_lcm.save_lcm(store, spec, lcm)
    mof = root / "C" / "Windows" / "System32" / "Configuration" / "Current.mof"
    mof.parent.mkdir(parents=True, exist_ok=True)
    mof.write_text("instance of MSFT_Original {};\n", encoding="utf-8")
    (root / "tasks.json").write_text(json.dumps({"tasks": {"\\ok": {"state": "Ready"}}}), encoding="utf-8")


async def test_restore_puts_back_every_kind_of_guest_state(ckstore: HostStore) -> None:
    _seed_state(ckstore, "web01")
    async with in_memory_client(ckstore) as client:
        # A file written through the guest too, as a step would.
        wrote = await run_in_guest(client, ckstore.lab, "web01", "Set-Content -Path C:\\app.txt -Value 'v1'")
        assert wrote.errors == []
        before = guest_state(ckstore, "web01")
        taken = await client.run("Checkpoint-VM", Name="web01", SnapshotName="vmbusops-job1", Passthru=True)
        assert taken.errors == []
        [snap] = taken.output
        assert "Deserialized.Microsoft.HyperV.PowerShell.VMSnapshot" in snap.PSTypeNames
        assert (snap.Name, snap.VMName, snap.SnapshotType, snap.State) == ("vmbusops-job1", "web01", "Standard", "Off")
        assert snap.ParentSnapshotName is None

        await run_in_guest(client, ckstore.lab, "web01", "Set-Content -Path C:\\app.txt -Value 'v2'")
        _change_everything(ckstore, "web01")
        changed = guest_state(ckstore, "web01")
        kinds = "\n".join(differences(before, changed))
        for what in ("file changed: C/app.txt", "file added: C/new-file.txt", "folder removed: C/Program Files",
                     "services differ", "updates_installed differ", "dsc differ", "tasks differ",
                     "file changed: C/Windows/System32/Configuration/Current.mof"):
            assert what in kinds

        restored = await client.run("Restore-VMSnapshot", Name="vmbusops-job1", VMName="web01", Confirm=False)
        assert restored.errors == [] and restored.output == []
        assert_same_guest(before, guest_state(ckstore, "web01"))
        vm = (await client.run("Get-VM", Name="web01")).output[0]
        # A production checkpoint holds no memory: the VM is off and boots on Start-VM.
        assert (vm.State, vm.ParentSnapshotName, vm.CheckpointType) == ("Off", "vmbusops-job1", "Production")

        # The checkpoint's copy is not the guest's: changing the guest again and restoring again
        # gives the same state once more.
        _change_everything(ckstore, "web01")
        await client.run("Restore-VMSnapshot", Name="vmbusops-job1", VMName="web01", Confirm=False)
        assert_same_guest(before, guest_state(ckstore, "web01"))
        started = await client.run("Start-VM", Name="web01")
        assert started.errors == []
        read = await run_in_guest(client, ckstore.lab, "web01", "Get-Content C:\\app.txt")
        assert "v1" in [str(o) for o in read.output]

        removed = await client.run("Remove-VMSnapshot", VMName="web01", Name="vmbusops-job1", Confirm=False)
        assert removed.errors == []
        assert (await client.run("Get-VMSnapshot", VMName="web01")).output == []
        assert not ckstore.checkpoint_root(_vm(ckstore, "web01"), snap.Id).exists()
        # Removing merges: the guest stays as it is now.
        assert_same_guest(before, guest_state(ckstore, "web01"))


async def test_production_falls_back_to_standard_and_restores_saved(ckstore: HostStore) -> None:
    async with in_memory_client(ckstore) as client:
        taken = await client.run("Checkpoint-VM", Name="novss01", SnapshotName="c1", Passthru=True)
        assert taken.errors == [] and taken.warnings == [] if hasattr(taken, "warnings") else True
        # No VSS in the guest: Hyper-V silently takes a standard checkpoint, with the memory.
        assert taken.output[0].State == "Running"
        await client.run("Restore-VMSnapshot", Name="c1", VMName="novss01", Confirm=False)
        assert (await client.run("Get-VM", Name="novss01")).output[0].State == "Saved"

        std = await client.run("Checkpoint-VM", Name="std01", SnapshotName="s", Passthru=True)
        assert std.output[0].State == "Running"
        off = await client.run("Checkpoint-VM", Name="off01", SnapshotName="o", Passthru=True)
        assert off.output[0].State == "Off"
        await client.run("Start-VM", Name="off01")
        await client.run("Restore-VMSnapshot", Name="o", VMName="off01", Confirm=False)
        assert (await client.run("Get-VM", Name="off01")).output[0].State == "Off"


async def test_checkpoint_errors_are_hyperv_s(ckstore: HostStore) -> None:
    strict = _vm(ckstore, "strict01")
    async with in_memory_client(ckstore) as client:
        only = await client.run("Checkpoint-VM", Name="strict01", SnapshotName="x")
        assert only.state == PSInvocationState.Completed
        assert only.error_ids == ["OperationFailed,Microsoft.HyperV.PowerShell.Commands.CheckpointVM"]
        assert only.error_messages[0].startswith("Checkpoint operation failed.\nProduction checkpoints cannot be created.\n")
        assert f"(Virtual machine ID {strict.id.upper()})" in only.error_messages[0]

        disabled = await client.run("Checkpoint-VM", Name="nockpt01", SnapshotName="x")
        assert disabled.error_messages[0].startswith("Checkpoint operation failed.\nCheckpoints have been disabled.\n")
        assert "Checkpoints have been disabled for 'nockpt01'." in disabled.error_messages[0]

        # 100 MiB free: a production checkpoint (64 MiB) fits once, then there is no room.
        first = await client.run("Checkpoint-VM", Name="tight01", SnapshotName="a")
        assert first.errors == []
        full = await client.run("Checkpoint-VM", Name="tight01", SnapshotName="b")
        assert "There is not enough space on the disk. (0x80070070)" in full.error_messages[0]
        volume = await client.run("Get-Volume", FilePath="C:\\Hyper-V\\tight01\\Virtual Hard Disks\\tight01.vhdx")
        assert volume.output[0].SizeRemaining == 36 * 1024 * 1024
        await client.run("Remove-VMSnapshot", VMName="tight01", Name="a")
        again = await client.run("Get-Volume", FilePath="C:\\Hyper-V\\tight01")
        assert again.output[0].SizeRemaining == 100 * 1024 * 1024

        for attempt in (
            client.run("Get-VMSnapshot", VMName="web01", Name="nosuch"),
            client.run("Restore-VMSnapshot", Name="nosuch", VMName="web01", Confirm=False),
            client.run("Remove-VMSnapshot", VMName="web01", Name="nosuch"),
        ):
            result = await attempt
            assert result.error_messages == ["Unable to find a snapshot matching the given criteria."]
            assert result.errors[0].CategoryInfo.Category == 13  # ObjectNotFound
        nothing = await client.run("Get-VMSnapshot", VMName="web01", Name="nos*")
        assert nothing.errors == [] and nothing.output == []

        novm = await client.run("Checkpoint-VM", Name="nosuch")
        assert novm.error_ids == ["ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.CheckpointVM"]
        assert novm.error_messages == ['Hyper-V was unable to find a virtual machine with name "nosuch".']
        novm = await client.run("Get-VMSnapshot", VMName="nosuch")
        assert novm.error_ids == ["InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVMSnapshot"]

        # Duplicate names are allowed, as in Hyper-V; restoring by such a name is refused.
        await client.run("Checkpoint-VM", Name="web01", SnapshotName="dup")
        await client.run("Checkpoint-VM", Name="web01", SnapshotName="dup")
        two = await client.run("Get-VMSnapshot", VMName="web01", Name="dup")
        assert len(two.output) == 2 and two.output[1].ParentSnapshotName == "dup"
        ambiguous = await client.run("Restore-VMSnapshot", Name="dup", VMName="web01", Confirm=False)
        assert ambiguous.error_messages == ['The name "dup" matches more than one checkpoint of virtual machine "web01".']

        # Restore-VMSnapshot asks for confirmation; a client that cannot answer gets an error.
        asked = await client.run("Restore-VMSnapshot", Name="dup", VMName="web01")
        assert asked.state == PSInvocationState.Failed
        assert str(asked.state_event.reason.FullyQualifiedErrorId) == (
            "HostException,Microsoft.HyperV.PowerShell.Commands.RestoreVMSnapshot"
        )


async def test_restore_while_running_discards_the_running_state(ckstore: HostStore) -> None:
    async with in_memory_client(ckstore) as client:
        before = guest_state(ckstore, "web01")
        await client.run("Checkpoint-VM", Name="web01", SnapshotName="r")
        await run_in_guest(client, ckstore.lab, "web01", "Set-Content -Path C:\\after.txt -Value 'x'")
        assert (await client.run("Get-VM", Name="web01")).output[0].State == "Running"
        restored = await client.run("Restore-VMSnapshot", Name="r", VMName="web01", Confirm=False)
        assert restored.errors == []
        assert (await client.run("Get-VM", Name="web01")).output[0].State == "Off"
        assert_same_guest(before, guest_state(ckstore, "web01"))


async def test_binding_follows_the_parameter_sets(ckstore: HostStore) -> None:
    async def failure(command: str, **params: Any) -> str:
        result = await client.run(command, **params)
        assert result.state == PSInvocationState.Failed
        return str(result.state_event.reason.FullyQualifiedErrorId)

    restore = "Microsoft.HyperV.PowerShell.Commands.RestoreVMSnapshot"
    async with in_memory_client(ckstore) as client:
        assert await failure("Get-VMSnapshot", VMName="web01", Id="00000000-0000-0000-0000-0000000000aa") == (
            "AmbiguousParameterSet,Microsoft.HyperV.PowerShell.Commands.GetVMSnapshot"
        )
        assert await failure("Restore-VMSnapshot", Name="a", Confirm=False) == f"MissingMandatoryParameter,{restore}"
        # -VMName of Restore-VMSnapshot is one string, not an array.
        assert (await failure("Restore-VMSnapshot", Name="a", VMName=["web01", "novss01"], Confirm=False)).startswith(
            "CannotConvertArgument,"
        )
        assert await failure("Remove-VMSnapshot", Name="a") == (
            "MissingMandatoryParameter,Microsoft.HyperV.PowerShell.Commands.RemoveVMSnapshot"
        )
        # No PSRP client can send a live VMSnapshot: the binder refuses what arrives, before sets.
        assert await failure("Restore-VMSnapshot", Name="a", VMName="web01", VMSnapshot="x", Confirm=False) == (
            f"CannotConvertArgumentNoMessage,{restore}"
        )
        assert await failure("Checkpoint-VM", Name="web01", Description="x") == (
            "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.CheckpointVM"
        )

        # Aliases: Get-VMCheckpoint is Get-VMSnapshot; -CheckpointName is -SnapshotName.
        await client.run("Checkpoint-VM", VMName="web01", CheckpointName="aliased")
        listed = await client.run("Get-VMCheckpoint", VMName="web01")
        assert [o.Name for o in listed.output] == ["aliased"]
        gone = await client.run("Get-VMCheckpoint", VMName="web01", Name="nosuch")
        assert gone.error_ids == ["ObjectNotFound,Microsoft.HyperV.PowerShell.Commands.GetVMSnapshot"]


async def test_remove_relinks_children_or_removes_them(ckstore: HostStore) -> None:
    async with in_memory_client(ckstore) as client:
        for name in ("a", "b", "c"):
            await client.run("Checkpoint-VM", Name="web01", SnapshotName=name)
        await client.run("Remove-VMSnapshot", VMName="web01", Name="b")
        listed = {o.Name: o.ParentSnapshotName for o in (await client.run("Get-VMSnapshot", VMName="web01")).output}
        assert listed == {"a": None, "c": "a"}
        await client.run("Remove-VMSnapshot", VMName="web01", Name="a", IncludeAllChildSnapshots=True)
        assert (await client.run("Get-VMSnapshot", VMName="web01")).output == []
        assert (await client.run("Get-VM", Name="web01")).output[0].ParentSnapshotName is None


def test_checkpoints_are_shared_by_every_process_on_the_state(ckstore: HostStore, tmp_path: Path) -> None:
    from vmbusops.sim import checkpoints

    spec = _vm(ckstore, "web01")
    before = guest_state(ckstore, "web01")
    taken = checkpoints.take(ckstore, spec, "shared", ckstore.clock())
    assert not isinstance(taken, Exception) and hasattr(taken, "id")
    _change_everything(ckstore, "web01")
    # Another store on the same directory, as another simulator process or pwsh-lab has.
    other = HostStore(ckstore.lab, ckstore.state_dir)
    rt = other.runtime(spec)
    assert [c.name for c in rt.checkpoints] == ["shared"]
    checkpoints.restore(other, spec, rt.checkpoints[0])
    assert_same_guest(before, guest_state(ckstore, "web01"))
    assert ckstore.runtime(spec).current_checkpoint == rt.checkpoints[0].id
