"""Host cmdlets bind parameters by type, as PowerShell's binder does (texts measured with pwsh 7.6.9 over PSRP)."""

from __future__ import annotations

from typing import Any

import pytest
from psrpcore.types import PSInvocationState
from sim_testclient import PSRPTestClient, admin

from vmbusops.sim.binding import BindingError, Param, convert
from vmbusops.sim.lab import Lab

INVOKE_COMMAND = "Microsoft.PowerShell.Commands.InvokeCommandCommand"


async def _failure(client: PSRPTestClient, command: str, **params: Any) -> tuple[str, str, str]:
    result = await client.run(command, **params)
    assert result.state == PSInvocationState.Failed
    reason = result.state_event.reason
    return (
        str(reason.FullyQualifiedErrorId),
        str(reason.Exception.Message),
        str(reason.Exception.PSTypeNames[0]).removeprefix("Deserialized."),
    )


async def test_a_guid_parameter_refuses_what_is_not_a_guid(client: PSRPTestClient) -> None:
    assert await _failure(client, "Get-VM", Id="nope") == (
        "CannotConvertArgumentNoMessage,Microsoft.HyperV.PowerShell.Commands.GetVM",
        'Cannot bind parameter \'Id\'. Cannot convert value "nope" to type "System.Guid". '
        'Error: "Unrecognized Guid format."',
        "System.Management.Automation.ParameterBindingException",
    )


async def test_a_guid_parameter_takes_any_guid_spelling(client: PSRPTestClient, lab: Lab) -> None:
    spec = lab.find("web01")
    assert spec is not None
    result = await client.run("Get-VM", Id="{" + spec.id.upper() + "}")
    assert [str(vm.Name) for vm in result.output] == ["web01"]


async def test_a_switch_refuses_text(client: PSRPTestClient) -> None:
    assert await _failure(client, "Stop-VM", Name="web01", Force="yes") == (
        "CannotConvertArgument,Microsoft.HyperV.PowerShell.Commands.StopVM",
        "Cannot convert 'System.String' to the type 'System.Management.Automation.SwitchParameter' "
        "required by parameter 'Force'. ",
        "System.Management.Automation.ParameterBindingException",
    )


async def test_a_string_parameter_refuses_a_list(client: PSRPTestClient) -> None:
    fqid, message, _ = await _failure(
        client, "Copy-VMFile", Name="web01", SourcePath=["a", "b"], DestinationPath="C:\\x", FileSource="Host"
    )
    assert fqid == "CannotConvertArgument,Microsoft.HyperV.PowerShell.Commands.CopyVMFile"
    assert message == (
        "Cannot convert 'a b' to the type 'System.String' required by parameter 'SourcePath'. "
        "Specified method is not supported."
    )


async def test_invoke_command_types_its_parameters(client: PSRPTestClient, lab: Lab) -> None:
    bad_id = await _failure(client, "Invoke-Command", VMId="nope", Credential=admin(lab, "web01"), ScriptBlock="1")
    assert bad_id[0] == f"CannotConvertArgumentNoMessage,{INVOKE_COMMAND}"
    credential = await _failure(client, "Invoke-Command", VMName="web01", Credential=5, ScriptBlock="1")
    assert credential == (
        f"ParameterArgumentTransformationError,{INVOKE_COMMAND}",
        "Cannot process argument transformation on parameter 'Credential'. userName",
        "System.Management.Automation.ParameterBindingArgumentTransformationException",
    )
    throttle = await _failure(
        client, "Invoke-Command", VMName="web01", Credential=admin(lab, "web01"), ThrottleLimit="many", ScriptBlock="1"
    )
    assert throttle[1] == (
        "Cannot bind parameter 'ThrottleLimit'. Cannot convert value \"many\" to type \"System.Int32\". "
        "Error: \"The input string 'many' was not in a correct format.\""
    )


async def test_names_are_string_arrays(client: PSRPTestClient) -> None:
    result = await client.run("Get-VM", Name=["web01", 5])
    assert [str(vm.Name) for vm in result.output] == ["web01"]
    assert result.error_messages == ['Hyper-V was unable to find a virtual machine with name "5".']


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "Cannot validate argument on parameter 'ScriptBlock'. The argument is null."),
        ("Get-Date", 'Cannot convert the "Get-Date" value of type "System.String" to type'),
        (5, 'Cannot convert the "5" value of type "System.Int32" to type'),
    ],
)
def test_no_value_a_psrp_client_can_send_binds_a_scriptblock(value: Any, message: str) -> None:
    with pytest.raises(BindingError) as caught:
        convert(Param("ScriptBlock", kind="scriptblock"), value, INVOKE_COMMAND)
    assert message in caught.value.error.message


async def test_invoke_command_refuses_a_string_script_block_as_powershell_does(
    client: PSRPTestClient, lab: Lab
) -> None:
    result = await client.run("Invoke-Command", VMName="web01", Credential=admin(lab, "web01"), ScriptBlock="x")
    assert result.state == PSInvocationState.Failed
    reason = result.state_event.reason
    assert str(reason.FullyQualifiedErrorId) == f"CannotConvertArgumentNoMessage,{INVOKE_COMMAND}"
    assert str(reason.Exception.Message) == (
        "Cannot bind parameter 'ScriptBlock'. Cannot convert the \"x\" value of type \"System.String\" "
        'to type "System.Management.Automation.ScriptBlock".'
    )
    assert str(reason.Exception.PSTypeNames[0]) == (
        "Deserialized.System.Management.Automation.ParameterBindingException"
    )
    info = reason.CategoryInfo
    assert (info.Category.name, str(info.Activity), str(info.Reason)) == (
        "InvalidArgument",
        "Invoke-Command",
        "ParameterBindingException",
    )
    # Nothing reached the guest.
    assert result.output == [] and result.errors == []


async def test_invoke_command_without_a_script_block_has_no_parameter_set(client: PSRPTestClient, lab: Lab) -> None:
    fqid, message, _ = await _failure(client, "Invoke-Command", VMName="web01", Credential=admin(lab, "web01"))
    assert fqid == f"AmbiguousParameterSet,{INVOKE_COMMAND}"
    assert message.startswith("Parameter set cannot be resolved using the specified named parameters.")
