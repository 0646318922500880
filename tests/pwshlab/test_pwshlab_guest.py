"""PowerShell Direct on the pwsh-lab host: guest script blocks in a child pwsh, as the guest.

What is real here: PowerShell's binder on the host side, remoting's serialization boundary
between host and guest (a child ``pwsh`` per guest session), and the guest invoker's semantics
in PowerShell 7.6.9. What differs from a Windows guest (PowerShell 5.1 there): native commands'
stderr handling and the FileSystem provider; the guest's ``C:`` is a PowerShell drive rooted at
its lab folder, not a disk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from pwshlab_support import PwshLab

from vmbusops.errors import CredentialInvalidError, SessionLostError, VMNotFoundError, VMNotRunningError
from vmbusops.guestops.invoker import invoker_command, parse_marker
from vmbusops.psrp.client import Command
from vmbusops.records import (
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    PSObjectValue,
    VerboseRecord,
)

pytestmark = pytest.mark.pwsh


async def test_the_guest_invoker_runs_steps_with_markers_and_exit_codes(pwsh_lab: PwshLab) -> None:
    steps = [
        (1, "Write-Output \"on $(hostname) as $env:USERNAME in $((Get-Location).Path)\""),
        (2, 'Write-Verbose "x" -Verbose; sh -c "echo e 1>&2"; exit 3'),
        (3, "Write-Output 'never'"),
    ]
    command = invoker_command(vm="web01", steps=steps, credential=pwsh_lab.credential(), run_id="run-7")
    async with pwsh_lab.open() as host:
        records = await host.pool.run([[command]])
        # The step files are gone from the guest's temp folder once their steps ended.
        leftovers = list(pwsh_lab.guest_file("web01", "Windows", "Temp", "vmbusops").iterdir())
    markers = [(m.kind, m.index, m.exit_code) for r in records if (m := parse_marker(r)) is not None]
    assert markers == [("begin", 1, None), ("end", 1, 0), ("begin", 2, None), ("end", 2, 3)]
    assert [r.value for r in records if isinstance(r, OutputRecord)] == ["on WEB01-LAB as Administrator in C:/"]
    errors = [r for r in records if isinstance(r, ErrorRecord)]
    assert [e.message.strip() for e in errors] == ["e"], errors
    assert [r.message for r in records if isinstance(r, VerboseRecord)] == ["x"]
    # The markers come as information records with the invoker's tag, from the guest.
    info = [r for r in records if isinstance(r, InformationRecord)]
    assert all("vmbusops.step" in r.tags for r in info)
    final = records[-1]
    assert isinstance(final, PipelineStateRecord) and final.state is PipelineState.COMPLETED
    assert leftovers == []


async def test_guest_output_crosses_a_serialization_boundary(pwsh_lab: PwshLab) -> None:
    script = (
        "Set-Content -LiteralPath 'C:\\Users\\Administrator\\Documents\\note.txt' -Value 'written in the guest'; "
        "Get-Item -LiteralPath 'C:\\inetpub\\wwwroot\\index.html'; $env:TEMP; $PID"
    )
    async with pwsh_lab.open() as host:
        records, outcome = await host.run_in_guest("web01", script, pwsh_lab.credential())
        host_pid = await host.pool.run([[Command("$PID", {}, is_script=True)]])
    assert outcome.ok, outcome.error_messages
    values = [r.record.value for r in records if isinstance(r.record, OutputRecord)]
    item, temp, guest_pid = values
    # Remoting deserializes: a FileInfo comes back as a property bag named Deserialized.*.
    assert isinstance(item, PSObjectValue)
    assert item.type_names[0] == "Deserialized.System.IO.FileInfo"
    assert item.get("Name") == "index.html"
    assert temp == "C:\\Windows\\Temp"
    assert guest_pid != host_pid[0].value  # type: ignore[union-attr]
    assert pwsh_lab.guest_file("web01", "Users", "Administrator", "Documents", "note.txt").read_text(
        encoding="utf-8"
    ).strip() == "written in the guest"


async def test_powershell_direct_refusals_are_classified(pwsh_lab: PwshLab) -> None:
    async with pwsh_lab.open() as host:
        _, wrong = await host.run_in_guest("web01", "1", pwsh_lab.credential(password="not-the-password"))
        _, off = await host.run_in_guest("legacy01", "1", pwsh_lab.credential("legacy01"))
        _, missing = await host.run_in_guest("ghost01", "1", pwsh_lab.credential())
        by_id, ok = await host.run_in_guest(
            "web01", "hostname", pwsh_lab.credential(), vm_id=pwsh_lab.lab.find("web01").id  # type: ignore[union-attr]
        )
        await host.restart_vm("web02")
        _, booting = await host.run_in_guest("web02", "1", pwsh_lab.credential("web02"))
        # wait_guest_ready polls Get-VM's heartbeat and a guest probe until both answer.
        await host.wait_guest_ready("web02", pwsh_lab.credential("web02"), timeout=60, poll_interval=0.5)
        # A guest that restarts itself ends the session under the step: no end marker, no later step.
        command = invoker_command(
            vm="web02", steps=[(0, "'a'; Restart-Computer -Force; 'b'"), (1, "'c'")], credential=pwsh_lab.credential("web02")
        )
        rebooted = await host.pool.run([[command]])
        after = await host.get_vm("web02")
    assert [r.value for r in rebooted if isinstance(r, OutputRecord)] == ["a"]
    assert [m.kind for r in rebooted if (m := parse_marker(r)) is not None] == ["begin"]
    assert after.heartbeat == "NoContact"
    assert ok.ok and [r.record.value for r in by_id if isinstance(r.record, OutputRecord)] == ["WEB01-LAB"]
    assert isinstance(wrong.failure, CredentialInvalidError)
    assert "The credential is invalid." in str(wrong.failure)
    assert isinstance(off.failure, VMNotRunningError)
    assert isinstance(missing.failure, VMNotFoundError)
    assert isinstance(booting.failure, SessionLostError) and booting.failure.transient
    # No secret in what the failures say.
    for outcome in (wrong, off, missing, booting):
        assert pwsh_lab.lab.credential("web01")[1] not in str(outcome.failure)
        assert "not-the-password" not in str(outcome.failure)


def _lab_processes(state_dir: str) -> list[int]:
    """Processes started for this test's lab: they carry its state directory in their environment."""
    marker = f"VMBUSOPS_PWSHLAB_STATE={state_dir}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


async def test_a_stopped_guest_command_leaves_no_guest_process(pwsh_lab: PwshLab) -> None:
    state_dir = str(pwsh_lab.home / "sim")
    async with pwsh_lab.open() as host:
        [server] = _lab_processes(state_dir)
        with trio.move_on_after(30) as scope:
            async with host.invoke_in_guest("web01", "Write-Output started; Start-Sleep -Seconds 120",
                                            pwsh_lab.credential()) as invocation:
                async for record in invocation:
                    if isinstance(record.record, OutputRecord):
                        assert record.record.value == "started"
                        # The guest runs in its own process beside the host's PowerShell.
                        assert len(_lab_processes(state_dir)) == 2
                        break
        assert not scope.cancelled_caught
        # Leaving the block stopped the pipeline (a PSRP Signal); the guest session is disposed.
        for _ in range(100):
            if _lab_processes(state_dir) == [server]:
                break
            await trio.sleep(0.2)
        assert _lab_processes(state_dir) == [server]
    assert _lab_processes(state_dir) == []
