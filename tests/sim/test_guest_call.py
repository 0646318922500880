"""The call operator in the guest subset: a script file is where ``exit N`` stops."""

from __future__ import annotations

from tests.sim.test_guest import run

from vmbusops.sim.lab import VMState
from vmbusops.sim.state import HostStore


async def test_exit_in_a_called_file_sets_lastexitcode_and_the_caller_goes_on(store: HostStore) -> None:
    s = await run(
        store,
        r"""
        Set-Content -Path C:\Windows\Temp\step.ps1 -Value "'in file'; `$args[1]; exit 3010; 'never'" -Encoding UTF8
        $global:LASTEXITCODE = 0
        & "C:\Windows\Temp\step.ps1" a b
        "code=$LASTEXITCODE"
        & { 'in block'; exit 7; 'never' }
        'not reached'
        """,
    )
    assert s.of("output") == ["in file", "b", "code=3010", "in block"]
    assert s.of("error") == []


async def test_calling_a_missing_file_is_command_not_found(store: HostStore) -> None:
    s = await run(store, "& 'C:\\nope.ps1'; 'next'")
    assert s.of("output") == ["next"]
    [error] = s.of("error")
    assert error.fqid == "CommandNotFoundException"


async def test_restart_computer_in_a_called_file_ends_the_caller_too(store: HostStore) -> None:
    s = await run(
        store,
        "Set-Content C:\\Windows\\Temp\\r.ps1 'Restart-Computer -Force'\n& C:\\Windows\\Temp\\r.ps1\n'after'",
    )
    assert s.of("output") == []
    spec = store.lab.find("web01")
    assert spec is not None
    assert store.runtime(spec).state is VMState.RUNNING
    assert not store.runtime(spec).booted(store.clock())


async def test_write_host_is_an_information_record_tagged_pshost(store: HostStore) -> None:
    s = await run(store, "Write-Host 'to the host'; 'out'")
    [info] = s.of("information")
    assert (info.message_data, info.source, info.tags) == ("to the host", "Write-Host", ("PSHOST",))
    assert s.of("output") == ["out"]


async def test_a_real_cmdlet_the_simulator_lacks_is_unsupported_not_unknown(store: HostStore) -> None:
    s = await run(store, "Read-Host 'name'")
    [error] = s.of("error")
    assert error.fqid == "NotSupportedBySimulator" and "Read-Host" in error.message
    s = await run(store, "Frobnicate-Thing")
    [error] = s.of("error")
    assert error.fqid == "CommandNotFoundException"
