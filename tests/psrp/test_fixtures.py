"""Decode what a real PowerShell sent, without PowerShell: the recorded fixtures.

``fixtures/pwsh-7.6.9.jsonl`` holds every server -> client message of the cases in
``fixtures/record_pwsh.py`` (run it again against a pwsh to re-record). Each message is decoded
by the fast path and by psrpcore's generic path, which must agree, and host calls go through the
client's host-call table and echo rule, so a case reads as the caller's record stream.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import psrpcore
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psrpcore.types import PSRPMessageType

from vmbusops.psrp.convert import record_from_event
from vmbusops.psrp.decode import fast_decode, fast_host_line
from vmbusops.psrp.hostcalls import EchoFilter, HostCallAction, action_of, record_from_host_call
from vmbusops.psrp.psrpcore_private import serialize_string
from vmbusops.records import (
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    ProgressRecord,
    PSObjectValue,
    Record,
    display_text,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pwsh-7.6.9.jsonl"
MESSAGES: list[dict[str, str]] = [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines()]
RECORD_TYPES = frozenset(
    {
        PSRPMessageType.PipelineOutput,
        PSRPMessageType.ErrorRecord,
        PSRPMessageType.WarningRecord,
        PSRPMessageType.VerboseRecord,
        PSRPMessageType.DebugRecord,
        PSRPMessageType.InformationRecord,
        PSRPMessageType.ProgressRecord,
        PSRPMessageType.PipelineState,
    }
)


def psrpcore_event(message_type: PSRPMessageType, clixml: str) -> Any:
    obj = psrpcore.types.deserialize(ElementTree.fromstring(clixml), cipher=psrpcore.PSRemotingCrypto())
    return psrpcore.PSRPEvent.create(message_type, obj, uuid.uuid4(), uuid.uuid4())


def replay(case: str) -> tuple[list[Record], int | None]:
    """The records a caller gets for one case, and its exit code, as the client makes them."""
    out: list[Record] = []
    echoes = EchoFilter()
    exit_code: int | None = None
    for message in MESSAGES:
        if message["case"] != case:
            continue
        kind = PSRPMessageType[message["type"]]
        if kind in RECORD_TYPES:
            record = fast_decode(kind, message["clixml"].encode("utf-8"))
            assert record is not None, message
            echoes.saw_record(record)
            out.append(record)
        elif kind is PSRPMessageType.PipelineHostCall:
            event = psrpcore_event(kind, message["clixml"])
            action = action_of(event.method_identifier)
            if action is HostCallAction.EXIT_CODE:
                exit_code = int(event.method_parameters[0])
            elif action is HostCallAction.RECORD:
                made = record_from_host_call(event.method_identifier, event.method_parameters)
                assert made is not None
                if not echoes.is_echo(made):
                    echoes.saw_record(made)
                    out.append(made)
    return out, exit_code


@pytest.mark.parametrize(
    "index", [i for i, m in enumerate(MESSAGES) if PSRPMessageType[m["type"]] in RECORD_TYPES]
)
def test_fast_path_equals_psrpcore_on_every_recorded_record(index: int) -> None:
    message = MESSAGES[index]
    kind = PSRPMessageType[message["type"]]
    slow = record_from_event(psrpcore_event(kind, message["clixml"]))
    fast = fast_decode(kind, message["clixml"].encode("utf-8"))
    assert fast is not None, f"{message['case']}: fell back to psrpcore"
    assert fast == slow


def shown(records: list[Record]) -> list[tuple[str, str]]:
    return [(r.stream.value, display_text(r)) for r in records]


def test_streams_arrive_once_each() -> None:
    records, code = replay("streams")
    assert shown(records) == [
        ("verbose", "v <&> line"),
        ("warning", "w line"),
        ("debug", "d line"),
        ("information", "info"),
        ("progress", "Copying: 3 of 10 30%"),
        ("progress", "Copying: Processing (completed)"),
        ("information", "host line"),
        ("output", "text"),
        ("output", "42"),
        ("output", "@{Name=vm01; N=1}"),
        ("state", "Completed"),
    ]
    info = records[3]
    assert isinstance(info, InformationRecord) and info.tags == ("tag1", "tag2") and info.source == "Write-Information"
    progress = records[4]
    assert isinstance(progress, ProgressRecord) and progress.current_operation == "f.txt"
    host = records[6]
    assert isinstance(host, InformationRecord) and host.tags == ("PSHOST",)
    assert isinstance(host.message_data, PSObjectValue)
    assert host.message_data.get("ForegroundColor") == "Yellow"
    assert code is None


def test_lines_written_to_the_host_itself_become_records() -> None:
    records, _ = replay("host_ui")
    assert shown(records) == [("information", "wl"), ("error", "el"), ("verbose", "direct"), ("state", "Completed")]


def test_exit_arrives_as_set_should_exit() -> None:
    records, code = replay("exit")
    assert shown(records) == [("output", "top"), ("state", "Completed")]
    assert code == 3


def test_guest_streams_through_invoke_command() -> None:
    records, code = replay("guest_streams")
    assert shown(records) == [
        ("verbose", "guest v"),
        ("warning", "guest w"),
        ("debug", "guest d"),
        ("progress", "guest a: guest s 50%"),
        ("information", "guest host"),
        ("information", "guest info"),
        ("output", "guest o"),
        ("state", "Completed"),
    ]
    assert code is None


def test_guest_exit_brings_no_code() -> None:
    records, code = replay("guest_exit")
    assert shown(records) == [("output", "before"), ("state", "Completed")]
    assert code is None


def errors(case: str) -> list[ErrorRecord]:
    records, _ = replay(case)
    found = [r for r in records if isinstance(r, ErrorRecord)]
    state = records[-1]
    assert isinstance(state, PipelineStateRecord)
    if state.error is not None:
        found.append(state.error)
    return found


def test_write_error_keeps_every_detail() -> None:
    assert errors("write_error") == [
        ErrorRecord(
            message="bad input",
            fqid="VmbusOps.BadInput",
            category="InvalidData",
            activity="Reading",
            reason="Corrupt",
            target_name="C:\\in.txt",
            target_type="String",
            exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
            target="C:\\in.txt",
            script_stack_trace="at <ScriptBlock>, <No file>: line 1",
            command_name=(
                "Write-Error -Message 'bad input' -Category InvalidData -ErrorId 'VmbusOps.BadInput' "
                "-TargetObject 'C:\\in.txt' -CategoryActivity 'Reading' -CategoryReason 'Corrupt'"
            ),
        )
    ]


def test_throw_fails_the_pipeline_with_its_error() -> None:
    records, _ = replay("throw")
    state = records[-1]
    assert isinstance(state, PipelineStateRecord) and state.state is PipelineState.FAILED
    assert state.error == ErrorRecord(
        message="kaboom",
        fqid="kaboom",
        category="OperationStopped",
        reason="RuntimeException",
        target_name="kaboom",
        target_type="String",
        exception_type="System.Management.Automation.RuntimeException",
        target="kaboom",
        script_stack_trace="at <ScriptBlock>, <No file>: line 1",
        script_line_number=1,
        position_message="At line:1 char:1\n+ throw 'kaboom'\n+ ~~~~~~~~~~~~~~",
    )


def test_cmdlet_error_keeps_its_category_and_invocation() -> None:
    (error,) = errors("cmdlet_error")
    assert error.fqid == "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand"
    assert (error.category, error.activity, error.reason) == ("ObjectNotFound", "Get-Item", "ItemNotFoundException")
    assert (error.target_name, error.target_type, error.target) == ("/nosuch/path", "String", "/nosuch/path")
    assert error.exception_type == "System.Management.Automation.ItemNotFoundException"
    assert (error.command_name, error.script_line_number) == ("Get-Item", 1)
    assert error.position_message.startswith("At line:1 char:1\n+ Get-Item")


def test_guest_errors_keep_their_details_through_the_remoting_wrapper() -> None:
    written, cmdlet = errors("guest_errors")
    assert written == ErrorRecord(
        message="guest bad",
        fqid="Guest.Bad,Microsoft.PowerShell.Commands.WriteErrorCommand",
        category="InvalidOperation",
        activity="Write-Error",
        reason="WriteErrorException",
        target_name="gt",
        target_type="String",
        exception_type="Microsoft.PowerShell.Commands.WriteErrorException",
        target="gt",
        command_name="Write-Error",
    )
    assert cmdlet.fqid == "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand"
    assert cmdlet.category == "ObjectNotFound" and cmdlet.target == "/nosuch/guest"
    assert cmdlet.exception_type == "System.Management.Automation.ItemNotFoundException"
    assert cmdlet.command_name == "Get-Item"


def test_guest_native_stderr_is_a_native_command_error() -> None:
    # pwsh 7 on Linux. Windows PowerShell 5.1 sends the same NativeCommandError records for a
    # guest's stderr, but there $ErrorActionPreference = 'Stop' makes them terminating.
    records, _ = replay("guest_native_stderr")
    assert OutputRecord(value="to-stdout") in records
    (error,) = errors("guest_native_stderr")
    assert (error.message, error.fqid, error.command_name) == ("to-stderr", "NativeCommandError", "sh")
    assert error.exception_type == "System.Management.Automation.RemoteException"


def test_guest_throw_reports_the_guest_exception_type() -> None:
    (error,) = errors("guest_throw")
    assert (error.message, error.fqid) == ("guest kaboom", "guest kaboom")
    assert error.exception_type == "System.Management.Automation.RuntimeException"
    assert error.script_line_number == 1


# -- host calls on the fast path ---------------------------------------------------------------------

HOST_CALLS = [m for m in MESSAGES if m["type"] == "PipelineHostCall"]


@pytest.mark.parametrize("index", range(len(HOST_CALLS)))
def test_fast_host_lines_equal_psrpcore(index: int) -> None:
    message = HOST_CALLS[index]
    event = psrpcore_event(PSRPMessageType.PipelineHostCall, message["clixml"])
    fast = fast_host_line(message["clixml"].encode("utf-8"))
    if fast is None:
        # Only calls with other arguments (colours, a progress record, an exit code) go slow.
        assert [type(p) for p in event.method_parameters] != [psrpcore.types.PSString] or event.ci != -100
        return
    method, text = fast
    assert method is event.method_identifier
    assert record_from_host_call(method, [text]) == record_from_host_call(method, event.method_parameters)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from("<>&\r\n_x000D__x_\u5f00")), max_size=60))
def test_fast_host_lines_equal_psrpcore_for_any_text(line: str) -> None:
    recorded = next(m["clixml"] for m in HOST_CALLS if "WriteVerboseLine" in m["clixml"])
    clixml = re.sub(r"<S>[^<]*</S>", lambda _: f"<S>{xml_text(serialize_string(line))}</S>", recorded)
    event = psrpcore_event(PSRPMessageType.PipelineHostCall, clixml)
    fast = fast_host_line(clixml.encode("utf-8"))
    if fast is not None:
        assert record_from_host_call(*fast[:1], [fast[1]]) == record_from_host_call(
            event.method_identifier, event.method_parameters
        )


def xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


ERROR_MESSAGES = [
    m for m in MESSAGES if m["type"] == "ErrorRecord" or (m["type"] == "PipelineState" and "ErrorRecord" in m["clixml"])
]
_TEXT_PROPERTY = re.compile(
    r'<S N="(FullyQualifiedErrorId|TargetObject|Message|ErrorCategory_Reason|MyCommand|PositionMessage)">[^<]*</S>'
)


@settings(max_examples=150, deadline=None)
@given(
    index=st.integers(0, len(ERROR_MESSAGES) - 1),
    value=st.text(alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from("<>&\r\n_x000A__x_\u5f00")), max_size=40),
)
def test_recorded_error_records_with_any_text_decode_equal_both_ways(index: int, value: str) -> None:
    # Every text property of a real error record (a guest's included) replaced with hostile text.
    message = ERROR_MESSAGES[index]
    kind = PSRPMessageType[message["type"]]
    escaped = xml_text(serialize_string(value))
    clixml = _TEXT_PROPERTY.sub(lambda m: f'<S N="{m.group(1)}">{escaped}</S>', message["clixml"])
    slow = record_from_event(psrpcore_event(kind, clixml))
    fast = fast_decode(kind, clixml.encode("utf-8"))
    assert fast is None or fast == slow
    if "\r" not in value and not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", value):
        assert fast is not None, "a real error record fell back to psrpcore"
