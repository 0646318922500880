"""The host's checkpoint operations (HyperVHost.checkpoint_vm and friends) on the simulated host."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.builders import VM, write_lab
from tests.guest_state import assert_same_guest, guest_state_at
from tests.simhost import open_sim_host

from vmbusops.errors import VMNotFoundError
from vmbusops.guestops.checkpoints import CheckpointError, CheckpointFailure

VMS = [
    VM("web01", more={"memory_mb": 1024, "storage_free_mb": 4096}),
    VM("novss01", more={"vss": False}),
    VM("strict01", more={"vss": False, "checkpoint_type": "ProductionOnly"}),
    VM("nockpt01", more={"checkpoint_type": "Disabled"}),
    VM("tight01", more={"storage_free_mb": 10}),
]


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    return write_lab(tmp_path, VMS, boot_seconds=0.0, password_seed="ops-seed")


async def test_take_list_restore_remove(lab: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with open_sim_host(lab, state_dir=state) as host:
        before = guest_state_at(state, lab, "web01")
        room = await host.checkpoint_room("web01")
        assert room.checkpoint_type == "Production"
        assert room.memory_bytes == 1024 * 1024 * 1024
        assert room.free_bytes == 4096 * 1024 * 1024 and room.enough(1 << 30)
        taken = await host.checkpoint_vm("web01", "vmbusops-job-1")
        assert (taken.name, taken.vm_name, taken.production) == ("vmbusops-job-1", "web01", True)
        assert (await host.checkpoint_room("web01")).free_bytes == (4096 - 64) * 1024 * 1024
        assert [c.name for c in await host.get_checkpoints("web01")] == ["vmbusops-job-1"]
        assert await host.get_checkpoints("web01", "other") == []

        _records, outcome = await host.run_in_guest("web01", "Set-Content -Path C:\\x.txt -Value 'changed'", _cred(lab))
        assert outcome.ok, outcome
        await host.restore_checkpoint("web01", "vmbusops-job-1")
        assert_same_guest(before, guest_state_at(state, lab, "web01"))
        [vm] = await host.list_vms(["web01"])
        assert vm.state == "Off"
        assert await host.remove_checkpoint("web01", "vmbusops-job-1") is True
        assert await host.remove_checkpoint("web01", "vmbusops-job-1") is False
        with pytest.raises(CheckpointError) as gone:
            await host.remove_checkpoint("web01", "vmbusops-job-1", missing_ok=False)
        assert gone.value.reason is CheckpointFailure.NOT_FOUND


async def test_fallback_and_failures(lab: Path, tmp_path: Path) -> None:
    async with open_sim_host(lab, state_dir=tmp_path / "state") as host:
        standard = await host.checkpoint_vm("novss01", "c1")
        assert standard.production is False and standard.state == "Running"
        for vm, reason in (
            ("strict01", CheckpointFailure.PRODUCTION_UNAVAILABLE),
            ("nockpt01", CheckpointFailure.DISABLED),
            ("tight01", CheckpointFailure.NO_SPACE),
        ):
            with pytest.raises(CheckpointError) as failed:
                await host.checkpoint_vm(vm, "c1")
            assert failed.value.reason is reason, failed.value
            assert str(failed.value).startswith(f"{vm}: Checkpoint operation failed.")
            assert "hint" not in str(failed.value), failed.value  # strict01 runs: no "start it first"
        with pytest.raises(CheckpointError) as missing:
            await host.restore_checkpoint("novss01", "nosuch")
        assert missing.value.reason is CheckpointFailure.NOT_FOUND
        with pytest.raises(VMNotFoundError):
            await host.checkpoint_vm("nosuch", "c1")
        with pytest.raises(ValueError, match="checkpoint name"):
            await host.checkpoint_vm("novss01", "bad*name")
        await host.restore_checkpoint("novss01", "c1")
        [vm] = await host.list_vms(["novss01"])
        assert vm.state == "Saved"


def _cred(lab: Path):  # type: ignore[no-untyped-def]
    from vmbusops.credentials import GuestCredential, Secret
    from vmbusops.sim.lab import lab_password, load_lab

    return GuestCredential("Administrator", Secret(lab_password(load_lab(lab), "web01")))
