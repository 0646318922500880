"""Error records in the shape PowerShell sends them, checked against records measured with pwsh 7.6.9.

Each row is what pwsh 7.6.9 gave for the same command run as a step of the guest invoker
(FullyQualifiedErrorId, category, activity, reason, target name and type, exception type):
non-terminating records as the cmdlet wrote them (the same as over PSRP at top level), and the
statement-terminating ones as the invoker's catch writes them again (activity Write-Error, no
command qualifier). The guest's paths differ (C:\\ here), so the target is the path the test used.
"""

from __future__ import annotations

from typing import Any

import pytest
from psrpcore.types import PSInvocationState
from sim_testclient import PSRPTestClient, run_in_guest

from vmbusops.sim.lab import Lab

MEASURED = [
    (
        "Get-Content C:\\nope",
        "PathNotFound,Microsoft.PowerShell.Commands.GetContentCommand",
        ("ObjectNotFound", "Get-Content", "ItemNotFoundException", "C:\\nope", "String"),
        "System.Management.Automation.ItemNotFoundException",
    ),
    (
        "Get-FileHash C:\\nope",
        "FileNotFound,Microsoft.PowerShell.Commands.GetFileHashCommand",
        ("ObjectNotFound", "Get-FileHash", "ItemNotFoundException", "C:\\nope", "String"),
        "System.Management.Automation.ItemNotFoundException",
    ),
    (
        "Get-Content -Frob x",
        "NamedParameterNotFound",
        ("InvalidArgument", "Write-Error", "ParameterBindingException", "", ""),
        "System.Management.Automation.ParameterBindingException",
    ),
    (
        "Get-Process -Name nosuchproc",
        "NoProcessFoundForGivenName,Microsoft.PowerShell.Commands.GetProcessCommand",
        ("ObjectNotFound", "Get-Process", "ProcessCommandException", "nosuchproc", "String"),
        "Microsoft.PowerShell.Commands.ProcessCommandException",
    ),
    (
        "Set-Content -Path C:\\nope\\x\\y -Value 1",
        "GetContentWriterDirectoryNotFoundError,Microsoft.PowerShell.Commands.SetContentCommand",
        ("ObjectNotFound", "Set-Content", "DirectoryNotFoundException", "C:\\nope\\x\\y", "String"),
        "System.IO.DirectoryNotFoundException",
    ),
    (
        "Write-Error 'w1'",
        "Microsoft.PowerShell.Commands.WriteErrorException,shape-0.ps1",
        ("NotSpecified", "Write-Error", "WriteErrorException", "", ""),
        "Microsoft.PowerShell.Commands.WriteErrorException",
    ),
    (
        "Write-Error 'w2' -ErrorId E2 -TargetObject t -Category InvalidData",
        "E2,shape-0.ps1",
        ("InvalidData", "Write-Error", "WriteErrorException", "t", "String"),
        "Microsoft.PowerShell.Commands.WriteErrorException",
    ),
    (
        "nosuchcmd",
        "CommandNotFoundException",
        ("ObjectNotFound", "Write-Error", "CommandNotFoundException", "nosuchcmd", "String"),
        "System.Management.Automation.CommandNotFoundException",
    ),
    (
        "throw 'boom'",
        "boom",
        ("OperationStopped", "Write-Error", "RuntimeException", "boom", "String"),
        "System.Management.Automation.RuntimeException",
    ),
]


def _shape(record: Any) -> tuple[str, str, str, str, str]:
    info = record.CategoryInfo
    return (
        info.Category.name,
        str(info.Activity or ""),
        str(info.Reason or ""),
        str(info.TargetName or ""),
        str(info.TargetType or ""),
    )


@pytest.mark.parametrize(("script", "fqid", "category", "exception"), MEASURED, ids=[m[0] for m in MEASURED])
async def test_guest_error_records_match_powershells(
    client: PSRPTestClient, lab: Lab, script: str, fqid: str, category: tuple[str, ...], exception: str
) -> None:
    result = await run_in_guest(client, lab, "web01", script, run_id="shape")
    assert result.state == PSInvocationState.Completed
    (record,) = result.errors
    assert str(record.FullyQualifiedErrorId) == fqid
    assert _shape(record) == category
    assert str(record.Exception.PSTypeNames[0]) == f"Deserialized.{exception}"
    if category[3]:
        assert str(record.TargetObject) == category[3]


async def test_host_cmdlet_binding_errors_name_the_cmdlet(client: PSRPTestClient) -> None:
    result = await client.run("Get-VM", Nmae="web01")
    assert result.state == PSInvocationState.Failed
    assert _shape(result.state_event.reason) == (
        "InvalidArgument",
        "Get-VM",
        "ParameterBindingException",
        "",
        "",
    )
