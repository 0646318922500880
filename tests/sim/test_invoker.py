"""The guest invoker as the simulated host runs it: script commands, PowerShell's binding, step semantics.

The expected records were measured with pwsh 7.6.9 (over PSRP for binding, and running the
invoker's guest script block locally for the step semantics); see ``vmbusops.sim.invoker``.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from psrpcore.types import PSInvocationState
from sim_testclient import (
    INVOKER_SCRIPT,
    PSRPTestClient,
    credential,
    invoker_params,
    run_in_guest,
    start_in_guest,
    step_markers,
)

from vmbusops.sim.lab import Lab
from vmbusops.sim.state import HostStore, guest_path_to_host

STEP_FOLDER = "C:\\Windows\\Temp\\vmbusops"


def _category(record: Any) -> tuple[str, str, str, str, str]:
    info = record.CategoryInfo
    return (
        info.Category.name,
        str(info.Activity or ""),
        str(info.Reason or ""),
        str(info.TargetName or ""),
        str(info.TargetType or ""),
    )


async def test_steps_run_as_script_files_between_markers(client: PSRPTestClient, lab: Lab, store: HostStore) -> None:
    result = await run_in_guest(
        client,
        lab,
        "web01",
        "Write-Output one; Get-ChildItem C:\\Windows\\Temp\\vmbusops | % Name",
        "Write-Output $args",
        indices=[4, 5],
        run_id="Run-42",
    )
    assert result.state == PSInvocationState.Completed
    assert step_markers(result) == [
        "vmbusops-step begin 4",
        "vmbusops-step end 4 exit=0 errors=0",
        "vmbusops-step begin 5",
        "vmbusops-step end 5 exit=0 errors=0",
    ]
    # The step saw its own file; the file is gone once the step ended.
    assert result.output == ["one", "Run-42-4.ps1"]
    folder = guest_path_to_host(store.guest_root(lab.find("web01")), STEP_FOLDER)  # type: ignore[arg-type]
    assert folder is not None and folder.is_dir() and list(folder.iterdir()) == []


async def test_arguments_reach_the_step_as_args(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "$args.Count; $args", arguments=["a", 2])
    assert result.output == [2, "a", 2]


async def test_exit_ends_the_step_with_its_code_and_the_batch(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "Write-Output a; exit 3; Write-Output b", "Write-Output never")
    assert result.state == PSInvocationState.Completed
    assert result.output == ["a"]
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=3 errors=0"]
    # `exit` ended the step, not the session: the next invocation in the guest works.
    again = await run_in_guest(client, lab, "web01", "exit")
    assert step_markers(again)[-1] == "vmbusops-step end 0 exit=0 errors=0"


async def test_throw_is_an_error_record_and_exit_code_1(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "Write-Output a; throw 'boom, twice'; Write-Output b", "1")
    assert result.output == ["a"]
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=1 errors=1"]
    (record,) = result.errors
    assert str(record.Exception.Message) == "boom, twice"
    assert str(record.FullyQualifiedErrorId) == "boom, twice"
    assert str(record.Exception.PSTypeNames[0]) == "Deserialized.System.Management.Automation.RuntimeException"
    # The wrapper's catch writes it again with Write-Error -ErrorRecord: that is its activity now.
    assert _category(record) == ("OperationStopped", "Write-Error", "RuntimeException", "boom, twice", "String")
    assert str(record.TargetObject) == "boom, twice"


async def test_bare_throw_is_script_halted(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "throw")
    assert result.error_ids == ["ScriptHalted"]
    assert step_markers(result)[-1] == "vmbusops-step end 0 exit=1 errors=1"


async def test_break_and_continue_end_only_their_step(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(
        client,
        lab,
        "web01",
        "Write-Output x; break; Write-Output y",
        "1..3 | ForEach-Object { $_; continue }; Write-Output z",
        "Write-Output next",
    )
    # break/continue outside a loop leave the step file; the wrapper's loop of one stops them.
    assert result.output == ["x", 1, "next"]
    assert step_markers(result) == [
        "vmbusops-step begin 0",
        "vmbusops-step end 0 exit=0 errors=0",
        "vmbusops-step begin 1",
        "vmbusops-step end 1 exit=0 errors=0",
        "vmbusops-step begin 2",
        "vmbusops-step end 2 exit=0 errors=0",
    ]


async def test_break_inside_a_loop_leaves_only_the_loop(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "foreach ($i in 1..3) { $i; break }; 'after-loop'")
    assert result.output == [1, "after-loop"]


async def test_non_terminating_errors_do_not_end_a_step_but_fail_it(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(
        client,
        lab,
        "web01",
        "Get-Content C:\\nope.txt; Write-Error 'soft' -ErrorId Soft1; Write-Output after",
        "Write-Output never",
        run_id="run-1",
    )
    assert result.output == ["after"]
    # Both records count: the step ran to its end, then failed, and the next did not start.
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=0 errors=2"]
    missing, soft = result.errors
    assert str(missing.FullyQualifiedErrorId) == "PathNotFound,Microsoft.PowerShell.Commands.GetContentCommand"
    assert _category(missing) == ("ObjectNotFound", "Get-Content", "ItemNotFoundException", "C:\\nope.txt", "String")
    # Write-Error in a script file names the file in its id, as PowerShell does.
    assert str(soft.FullyQualifiedErrorId) == "Soft1,run-1-0.ps1"
    assert str(soft.Exception.PSTypeNames[0]) == "Deserialized.Microsoft.PowerShell.Commands.WriteErrorException"
    assert _category(soft)[:3] == ("NotSpecified", "Write-Error", "WriteErrorException")


async def test_a_statement_error_inside_the_wrappers_try_ends_the_step(client: PSRPTestClient, lab: Lab) -> None:
    # In PowerShell an enclosing try makes statement-terminating errors (an unknown command, a
    # parameter that does not bind) go to its catch: the step ends with code 1.
    result = await run_in_guest(client, lab, "web01", "Get-Content -Frob x; Write-Output after", "Write-Output never")
    assert result.output == []
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=1 errors=1"]
    (record,) = result.errors
    # Write-Error -ErrorRecord drops the command qualifier from the id (measured).
    assert str(record.FullyQualifiedErrorId) == "NamedParameterNotFound"
    assert _category(record)[:3] == ("InvalidArgument", "Write-Error", "ParameterBindingException")
    unknown = await run_in_guest(client, lab, "web01", "Frobnicate-Thing; Write-Output after")
    assert unknown.output == []
    assert unknown.error_ids == ["CommandNotFoundException"]


async def test_a_step_outside_the_guest_subset_fails_visibly(client: PSRPTestClient, lab: Lab) -> None:
    result = await run_in_guest(client, lab, "web01", "while ($true) { }")
    assert step_markers(result)[-1] == "vmbusops-step end 0 exit=1 errors=1"
    assert result.error_ids == ["NotSupportedBySimulator"]
    assert "'while' keyword" in result.error_messages[0]


async def test_the_function_form_and_the_vmid_parameter_set(client: PSRPTestClient, lab: Lab) -> None:
    spec = lab.find("web01")
    assert spec is not None
    params = invoker_params(lab, "web01", "hostname")
    del params["VMName"]
    params["VMId"] = spec.id.upper()
    result = await client.run("Invoke-VmbusOpsGuest", **params)
    assert result.state == PSInvocationState.Completed
    assert result.output == [spec.guest_computer_name]
    assert step_markers(result)[-1] == "vmbusops-step end 0 exit=0 errors=0"


async def test_reaching_the_guest_fails_as_invoke_command_does(client: PSRPTestClient, lab: Lab) -> None:
    missing = await run_in_guest(client, lab, "web01", "1")  # a well-formed call first
    assert missing.output == [1]
    params = invoker_params(lab, "web01", "1")
    params["VMName"] = "nosuch"
    nosuch = await client.run(INVOKER_SCRIPT, script=True, **params)
    assert nosuch.error_ids == ["InvalidVMNameNotSingle,Microsoft.PowerShell.Commands.InvokeCommandCommand"]
    off = await client.run(INVOKER_SCRIPT, script=True, **invoker_params(lab, "legacy01", "1"))
    assert off.error_messages == ["The virtual machine legacy01 is not in running state."]
    params = invoker_params(lab, "web01", "1")
    params["Credential"] = credential("Administrator", "wrong")
    denied = await client.run(INVOKER_SCRIPT, script=True, **params)
    assert denied.error_messages == ["The credential is invalid."]
    for result in (nosuch, off, denied):
        assert result.state == PSInvocationState.Completed
        assert step_markers(result) == []


async def test_step_count_mismatch_is_the_invokers_throw(client: PSRPTestClient, lab: Lab) -> None:
    result = await client.run(INVOKER_SCRIPT, script=True, **invoker_params(lab, "web01", "1", "2", indices=[0]))
    assert result.state == PSInvocationState.Failed
    reason = result.state_event.reason
    text = "vmbusops: -Script has 2 steps but -StepIndex 1"
    assert str(reason.FullyQualifiedErrorId) == text
    assert _category(reason) == ("OperationStopped", "", "RuntimeException", text, "String")


def _binding_cases(lab: Lab) -> list[tuple[str, dict[str, Any], str, str]]:
    spec = lab.find("web01")
    assert spec is not None
    good = invoker_params(lab, "web01", "1")

    def but(**changes: Any) -> dict[str, Any]:
        params = {**good, **changes}
        return {k: v for k, v in params.items() if v is not _DROP}

    return [
        (
            "no credential",
            but(Credential=_DROP),
            "MissingMandatoryParameter",
            "Cannot process command because of one or more missing mandatory parameters: Credential.",
        ),
        (
            "neither VMName nor VMId",
            but(VMName=_DROP),
            "MissingMandatoryParameter",
            "Cannot process command because of one or more missing mandatory parameters: VMName.",
        ),
        (
            "bad RunId",
            but(RunId="r 1"),
            "ParameterArgumentValidationError",
            "Cannot validate argument on parameter 'RunId'. The argument \"r 1\" does not match the "
            '"^[A-Za-z0-9-]{1,64}$" pattern. Supply an argument that matches "^[A-Za-z0-9-]{1,64}$" '
            "and try the command again.",
        ),
        (
            "bad guid",
            but(VMName=_DROP, VMId="nope"),
            "ParameterArgumentTransformationError",
            "Cannot process argument transformation on parameter 'VMId'. Cannot convert value \"nope\" "
            'to type "System.Guid". Error: "Unrecognized Guid format."',
        ),
        (
            "both parameter sets",
            but(VMId=spec.id),
            "AmbiguousParameterSet",
            "Parameter set cannot be resolved using the specified named parameters. One or more "
            "parameters issued cannot be used together or an insufficient number of parameters were provided.",
        ),
        (
            "StepIndex not a number",
            but(StepIndex=["a"]),
            "ParameterArgumentTransformationError",
            "Cannot process argument transformation on parameter 'StepIndex'. Cannot convert value "
            '"System.Collections.ArrayList" to type "System.Int32[]". Error: "Cannot convert value "a" '
            'to type "System.Int32". Error: "The input string \'a\' was not in a correct format.""',
        ),
        (
            "unknown parameter",
            but(Bogus=1),
            "NamedParameterNotFound",
            "A parameter cannot be found that matches parameter name 'Bogus'.",
        ),
        (
            "credential as text",
            but(Credential="Administrator"),
            "ParameterArgumentTransformationError",
            "Cannot process argument transformation on parameter 'Credential'. A command that prompts the "
            "user failed because the host program or the command type does not support user interaction. "
            "The host was attempting to request confirmation with the following message: Enter your credentials.",
        ),
        (
            "empty VMName",
            but(VMName=""),
            "ParameterArgumentValidationErrorEmptyStringNotAllowed",
            "Cannot bind argument to parameter 'VMName' because it is an empty string.",
        ),
    ]


_DROP = object()


@pytest.mark.parametrize("case", range(9))
async def test_binding_fails_as_powershell_binds_the_param_block(client: PSRPTestClient, lab: Lab, case: int) -> None:
    label, params, error_id, message = _binding_cases(lab)[case]
    script = await client.run(INVOKER_SCRIPT, script=True, **params)
    function = await client.run("Invoke-VmbusOpsGuest", **params)
    for result, fqid, activity in (
        (script, error_id, ""),
        (function, f"{error_id},Invoke-VmbusOpsGuest", "Invoke-VmbusOpsGuest"),
    ):
        assert result.state == PSInvocationState.Failed, label
        reason = result.state_event.reason
        assert str(reason.FullyQualifiedErrorId) == fqid, label
        assert str(reason.Exception.Message) == message, label
        assert str(reason.CategoryInfo.Activity or "") == activity, label
        assert step_markers(result) == []


async def test_other_script_commands_are_refused_by_name(client: PSRPTestClient, lab: Lab) -> None:
    for text in ("Get-VM", INVOKER_SCRIPT + " ", INVOKER_SCRIPT.replace("exit=", "code=")):
        result = await client.run(text, script=True)
        assert result.state == PSInvocationState.Failed
        reason = result.state_event.reason
        assert str(reason.FullyQualifiedErrorId) == "ScriptNotSupportedBySimulator"
        assert "only script, vmbusops' guest invoker" in str(reason.Exception.Message)
        # The refused script's text is not echoed back.
        assert "exit=" not in str(reason.Exception.Message)


async def test_the_invoker_runs_when_psrpcore_reads_the_pipeline(client: PSRPTestClient, lab: Lab) -> None:
    # A float argument is outside what the fast CreatePipeline reader takes: psrpcore's own
    # deserializer reads this message, and its commands carry is_script the same way.
    result = await run_in_guest(client, lab, "web01", "Write-Output $args", arguments=[1.5, "x"])
    assert result.output == [1.5, "x"]
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=0 errors=0"]


async def test_step_text_arrives_as_written_quotes_and_all(client: PSRPTestClient, lab: Lab) -> None:
    # The text is a parameter value, never spliced into script text: quotes need no escaping.
    result = await run_in_guest(client, lab, "web01", "Write-Output \"it's \u2019quoted\u2019\"\nexit 5", "'two'")
    assert result.output == ["it's \u2019quoted\u2019"]
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=5 errors=0"]


@pytest.mark.parametrize(
    "step",
    ["$ErrorActionPreference = 'Stop'; Get-Content C:\\nope; 'after'", "Get-Content C:\\nope -ErrorAction Stop; 'after'"],
)
async def test_an_error_under_stop_ends_the_step_as_a_terminating_error(
    client: PSRPTestClient, lab: Lab, step: str
) -> None:
    result = await run_in_guest(client, lab, "web01", step, "Write-Output never")
    assert result.output == []
    assert step_markers(result) == ["vmbusops-step begin 0", "vmbusops-step end 0 exit=1 errors=1"]
    (record,) = result.errors
    # Caught and written again by the wrapper: no command qualifier, activity Write-Error (measured).
    assert str(record.FullyQualifiedErrorId) == "PathNotFound"
    assert _category(record)[:3] == ("ObjectNotFound", "Write-Error", "ItemNotFoundException")


async def test_silently_continue_still_counts_and_ignore_does_not(client: PSRPTestClient, lab: Lab) -> None:
    # pwsh 7.6.9: SilentlyContinue keeps the record off the stream but $Error gains it; Ignore does not.
    silent = await run_in_guest(client, lab, "web01", "Get-Content C:\\nope -ErrorAction SilentlyContinue; 'after'")
    assert silent.output == ["after"]
    assert silent.errors == []
    assert step_markers(silent)[-1] == "vmbusops-step end 0 exit=0 errors=1"
    ignored = await run_in_guest(client, lab, "web01", "Get-Content C:\\nope -ErrorAction Ignore; 'after'")
    assert ignored.errors == []
    assert step_markers(ignored)[-1] == "vmbusops-step end 0 exit=0 errors=0"


async def test_a_stopped_step_leaves_no_step_file(client: PSRPTestClient, lab: Lab, store: HostStore) -> None:
    ps = await start_in_guest(client, lab, "web01", "Start-Sleep -Seconds 30", run_id="stopped")
    spec = lab.find("web01")
    assert spec is not None
    folder = guest_path_to_host(store.guest_root(spec), STEP_FOLDER)
    assert folder is not None
    with trio.fail_after(5):
        await client.wait_for(lambda: step_markers(client.result(ps)) == ["vmbusops-step begin 0"])
        # Everything blocked: the step is in its Start-Sleep, its file written.
        await trio.testing.wait_all_tasks_blocked()
    assert [p.name for p in folder.iterdir()] == ["stopped-0.ps1"]
    with trio.fail_after(5):
        await client.stop(ps)
        result = await client.wait(ps)
    assert result.state == PSInvocationState.Stopped
    assert list(folder.iterdir()) == []


async def test_step_indices_convert_as_int32(client: PSRPTestClient, lab: Lab) -> None:
    # PowerShell converts "3", 2.5 (to the even 2) and $true to Int32, and refuses what overflows.
    result = await run_in_guest(client, lab, "web01", "'a'", "'b'", "'c'", indices=["3", 2.5, True])
    assert [m.split()[2] for m in step_markers(result)] == ["3", "3", "2", "2", "1", "1"]
    params = invoker_params(lab, "web01", "'a'", indices=[2**31])
    refused = await client.run(INVOKER_SCRIPT, script=True, **params)
    assert refused.state == PSInvocationState.Failed
    assert str(refused.state_event.reason.Exception.Message).endswith(
        'Error: "Value was either too large or too small for an Int32.""'
    )
