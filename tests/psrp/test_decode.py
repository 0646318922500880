"""fast_decode must equal psrpcore + record_from_event whenever it answers, and must answer
for every common record.

Messages come from psrpcore's own server writing to a real psrpcore client in memory (the
client keeps each raw body next to its event), plus hand-written PowerShell 5.1 shapes.
"""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any
from xml.etree import ElementTree

import psrpcore
import pytest
import samples_decode as samples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psrpcore.types import (
    ConsoleColor,
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorDetails,
    ErrorRecord,
    NETException,
    ProgressRecordType,
    PSChar,
    PSCustomObject,
    PSDateTime,
    PSGuid,
    PSInt64,
    PSInvocationState,
    PSList,
    PSRPMessageType,
    PSSecureString,
    PSString,
    PSUInt,
    PSVersion,
)
from psrpcore.types._serializer import _deserialize_string

from vmbusops.psrp.clixml_text import guest_text
from vmbusops.psrp.convert import SECURE_STRING, record_from_event, value_from_ps, whole_text
from vmbusops.psrp.decode import clixml_unescape, fast_decode
from vmbusops.records import (
    ErrorRecord as ErrorRecordOut,
)
from vmbusops.records import (
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    ProgressRecord,
    PSDictValue,
    PSObjectValue,
    Record,
    VerboseRecord,
    WarningRecord,
)

COMMON = frozenset(
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

# Arbitrary text as PowerShell could send it: any code point but lone surrogates (a Python
# str from CLIXML cannot hold a pair split in two), weighted towards what needs escaping.
TRICKY = "<>&\"'\n\r\t\x00\x01\x1f\x7f\x85\u2028\ufffe\uffff_x_X_x0041__xD83C_\u5f00\u7800\u3000 \U0001f389"
texts = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(TRICKY)),
    max_size=80,
)


XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def both_ways(
    captured: list[samples.Captured],
) -> list[tuple[samples.Captured, Record | None, Record | None]]:
    return [(c, fast_decode(c.message_type, c.data), record_from_event(c.event)) for c in captured]


def assert_fast_and_equal(captured: list[samples.Captured]) -> list[Record]:
    """Every common record decoded fast and equal to psrpcore's; returns the records."""
    records = []
    for c, fast, slow in both_ways(captured):
        if slow is None:
            assert fast is None, c.data
            continue
        assert c.message_type in COMMON
        assert fast is not None, c.data
        assert fast == slow, c.data
        records.append(fast)
    return records


def psrpcore_record(message_type: PSRPMessageType, data: bytes) -> Record | None:
    """What the slow path makes of a message body (as psrpcore's _process_message does)."""
    obj = psrpcore.types.deserialize(ElementTree.fromstring(data), cipher=psrpcore.PSRemotingCrypto())
    event = psrpcore.PSRPEvent.create(message_type, obj, uuid.uuid4(), uuid.uuid4())
    return record_from_event(event)


# -- every common stream, through a psrpcore client -------------------------------------------


def test_each_stream_is_fast_decoded() -> None:
    def body(pipe: psrpcore.ServerPipeline) -> None:
        pipe.write_verbose("[DSCEngine] Test-TargetResource returned True")
        pipe.write_warning("disk almost full")
        pipe.write_debug("debug line")
        pipe.write_information("hello", "Write-Information", tags=["a", "b"])
        pipe.write_progress("Copying", 1, "3 of 10", current_operation="file.txt", percent_complete=30)
        pipe.write_progress("Copying", 1, "done", record_type=ProgressRecordType.Completed)
        pipe.write_error(NETException("boom"))
        pipe.write_output("output")

    records = assert_fast_and_equal(samples.exchange(body))
    assert [r.stream.value for r in records] == [
        "verbose", "warning", "debug", "information", "progress", "progress", "error", "output", "state",
    ]  # fmt: skip
    assert records[-1] == PipelineStateRecord(state=PipelineState.COMPLETED)
    assert records[0] == VerboseRecord(message="[DSCEngine] Test-TargetResource returned True")


def test_stopped_pipeline_carries_its_error() -> None:
    records = assert_fast_and_equal(samples.exchange(lambda pipe: None, finish="stop"))
    state = records[-1]
    assert isinstance(state, PipelineStateRecord)
    assert state.state is PipelineState.STOPPED
    assert state.error is not None
    assert state.error.fqid == "PipelineStopped"
    assert state.error.exception_type == "System.Management.Automation.PipelineStoppedException"


def test_failed_pipeline_carries_its_error() -> None:
    def body(pipe: psrpcore.ServerPipeline) -> None:
        error = ErrorRecord(
            Exception=NETException("script failed"),
            CategoryInfo=ErrorCategoryInfo(Category=ErrorCategory.InvalidOperation, Reason="Oops"),
            FullyQualifiedErrorId="ScriptFailed",
        )
        pipe._change_state(PSInvocationState.Failed, error=error)

    records = assert_fast_and_equal(samples.exchange(body, finish="none"))
    assert records[-1] == PipelineStateRecord(
        state=PipelineState.FAILED,
        error=ErrorRecordOut(
            message="script failed",
            fqid="ScriptFailed",
            category="InvalidOperation",
            reason="Oops",
            exception_type="System.Exception",
        ),
    )


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, {"message": "boom"}),
        (
            {
                "category_info": ErrorCategoryInfo(
                    Category=ErrorCategory.ObjectNotFound,
                    Activity="Get-Item",
                    Reason="ItemNotFoundException",
                    TargetName="C:\\missing",
                    TargetType="String",
                ),
                "target_object": "C:\\missing",
                "fully_qualified_error_id": "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand",
            },
            {"category": "ObjectNotFound", "target": "C:\\missing", "target_type": "String"},
        ),
        ({"error_details": ErrorDetails(Message="friendlier")}, {"message": "friendlier"}),
        ({"error_details": ErrorDetails(Message="", RecommendedAction="retry")}, {"message": "boom"}),
        ({"script_stack_trace": "at <ScriptBlock>, <No file>: line 1"}, {"script_stack_trace": "at <Scr"}),
        ({"target_object": 42}, {"target": "42"}),
        ({"target_object": PSCustomObject(Name="vm01", Id=3)}, {"target": "@{Name=vm01; Id=3}"}),
        (
            {
                "category_info": ErrorCategoryInfo(
                    Category=ErrorCategory.PermissionDenied, Reason="_x000A_ & <"
                )
            },
            {"category": "PermissionDenied", "reason": "_x000A_ & <"},
        ),
    ],
)
def test_error_records(kwargs: dict[str, Any], expected: dict[str, str]) -> None:
    records = assert_fast_and_equal(
        samples.exchange(lambda pipe: pipe.write_error(NETException("boom"), **kwargs))
    )
    error = records[0]
    assert isinstance(error, ErrorRecordOut)
    for name, value in expected.items():
        assert str(getattr(error, name)).startswith(value)


# -- output values ------------------------------------------------------------------------------

FAST_VALUES: list[tuple[Any, Any]] = [
    ("text", "text"),
    ("", ""),
    (None, None),
    (True, True),
    (False, False),
    (0, 0),
    (-(2**31), -(2**31)),
    (PSInt64(2**62), 2**62),
    (PSUInt(4_000_000_000), 4_000_000_000),
    (1.25, 1.25),
    (b"\x00\xff", b"\x00\xff"),
    (PSChar("x"), "x"),
    (PSGuid("6E0C2A3B-1111-2222-3333-444455556666"), "6e0c2a3b-1111-2222-3333-444455556666"),
    (PSDateTime(2024, 5, 6, 7, 8, 9, 123456, nanosecond=700), "2024-05-06T07:08:09.1234567"),
    (
        PSDateTime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))),
        "2024-05-06T07:08:09.0000000-05:30",
    ),
    (PSDateTime(2024, 5, 6, tzinfo=datetime.UTC), "2024-05-06T00:00:00.0000000Z"),
    (ConsoleColor.DarkYellow, "DarkYellow"),
    ([1, "two", None], (1, "two", None)),
    (PSList([]), ()),
    ({"a": 1, 2: [True]}, PSDictValue((("a", 1), (2, (True,))))),
    (
        PSCustomObject(Name="vm01", State=ConsoleColor.Green, Disks=["c", "d"], Meta={"k": "v"}),
        PSObjectValue(
            ("System.Management.Automation.PSCustomObject", "System.Object"),
            (
                ("Name", "vm01"),
                ("State", "Green"),
                ("Disks", ("c", "d")),
                ("Meta", PSDictValue((("k", "v"),))),
            ),
        ),
    ),
    (
        PSCustomObject(PSTypeName="Vmbus.Guest", Name="a"),
        PSObjectValue(
            ("Vmbus.Guest", "System.Management.Automation.PSCustomObject", "System.Object"), (("Name", "a"),)
        ),
    ),
]


def _with_notes(value: Any) -> Any:
    """A value as Invoke-Command sends a guest's output: with note properties added."""
    from psrpcore.types import add_note_property

    add_note_property(value, "PSComputerName", "vm01")
    add_note_property(value, "PSShowComputerName", True)
    return value


FAST_VALUES += [
    (_with_notes(PSString("guest o")), "guest o"),
    (_with_notes(PSInt64(7)), 7),
]


@pytest.mark.parametrize(("value", "expected"), FAST_VALUES)
def test_output_values_are_fast_decoded(value: Any, expected: Any) -> None:
    records = assert_fast_and_equal(samples.exchange(lambda pipe: pipe.write_output(value)))
    assert records[0] == OutputRecord(value=expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime.timedelta(days=1, hours=2, seconds=3, microseconds=500), "1.02:00:03.0005000"),
        (PSVersion("1.2.3.4"), "1.2.3.4"),
    ],
)
def test_rare_values_fall_back_to_the_reference_mapping(value: Any, expected: Any) -> None:
    captured = samples.exchange(lambda pipe: pipe.write_output(value))
    output = [c for c in captured if c.message_type == PSRPMessageType.PipelineOutput]
    assert fast_decode(output[0].message_type, output[0].data) is None
    assert record_from_event(output[0].event) == OutputRecord(value=expected)


def test_secure_string_content_never_shows() -> None:
    value = value_from_ps(PSSecureString("hunter2"))
    assert value == SECURE_STRING
    assert "hunter2" not in repr(value)


# -- arbitrary text -------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=texts, other=texts)
def test_arbitrary_text_decodes_identically(message: str, other: str) -> None:
    def body(pipe: psrpcore.ServerPipeline) -> None:
        pipe.write_verbose(message)
        pipe.write_warning(message)
        pipe.write_debug(other)
        pipe.write_information(message, other, tags=[other], user=message, computer=other)
        pipe.write_progress(message, 2, other, current_operation=message)
        pipe.write_error(
            # psrpcore's server writes the record's ToString (the exception message) without
            # CLIXML escaping, so characters XML forbids would break its own message.
            NETException(XML_INVALID.sub("", message)),
            ErrorCategoryInfo(Activity=other, Reason=message, TargetName=other, TargetType=message),
            target_object=other,
            fully_qualified_error_id=message,
            script_stack_trace=other,
        )
        pipe.write_output(message)
        pipe.write_output(PSCustomObject(p=message, q=[other]))
        pipe.write_output({message: other})

    records = assert_fast_and_equal(samples.exchange(body))
    assert records[0] == VerboseRecord(message=message)
    assert records[1] == WarningRecord(message=message)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from("_xX0123456789abcdefABCDEFG\u5f00\u7800\u3000\u3100\u4100\u6100\u5f41"),
            st.characters(codec="utf-8"),
        ),
        max_size=40,
    )
)
def test_clixml_unescape_matches_psrpcore(value: str) -> None:
    assert clixml_unescape(value) == _deserialize_string(value)
    # What the client receives: the same, but a UTF-16 surrogate without its pair is U+FFFD.
    assert guest_text(value) == whole_text(_deserialize_string(value))


def test_a_surrogate_without_its_pair_is_a_replacement_character_on_both_paths() -> None:
    """A guest's .NET string may hold half a surrogate pair ("a" + [char]0xD800); CLIXML carries it
    as _xD800_, and no UTF-8 text (the journal, a terminal, JSON) can hold it as it is. Both paths
    give U+FFFD in its place, as .NET's UTF-8 encoder does; a whole pair stays one character."""

    def body(pipe: psrpcore.ServerPipeline) -> None:
        pipe.write_output("a\ud800b")
        pipe.write_output(PSChar(0xDC00))
        pipe.write_output("x\ud83d\ude00y")
        pipe.write_output(PSCustomObject(p="q\udfffr", n=["\ud800"]))
        pipe.write_verbose("v\ud800")

    records = assert_fast_and_equal(samples.exchange(body))
    values = [r.value for r in records if isinstance(r, OutputRecord)]
    assert values[:3] == ["a\ufffdb", "\ufffd", "x\U0001f600y"]
    assert values[3] == PSObjectValue(
        type_names=("System.Management.Automation.PSCustomObject", "System.Object"),
        properties=(("p", "q\ufffdr"), ("n", ("\ufffd",))),
    )
    assert VerboseRecord(message="v\ufffd") in records
    for record in records:
        repr(record).encode("utf-8")  # nothing left that UTF-8 refuses


# -- PowerShell 5.1 shapes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "data", "expected"),
    [
        (
            PSRPMessageType.VerboseRecord,
            samples.PS51_VERBOSE,
            VerboseRecord(
                message="[WIN-GUEST01]: LCM:  [ Start  Set      ]  [[File]DirectoryCopy] & C:\\Temp\\x\n"
            ),
        ),
        (
            PSRPMessageType.WarningRecord,
            samples.PS51_WARNING_WITH_INVOCATION,
            WarningRecord(message="disk is <10% free"),
        ),
        (
            PSRPMessageType.ProgressRecord,
            samples.PS51_PROGRESS,
            ProgressRecord(activity="Copying <files>", status_description="3 of 10", percent_complete=30),
        ),
        (
            PSRPMessageType.ErrorRecord,
            samples.PS51_GET_ITEM_ERROR,
            ErrorRecordOut(
                message="Cannot find path 'C:\\missing' because it does not exist.",
                fqid="PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand",
                category="ObjectNotFound",
                activity="Get-Item",
                reason="ItemNotFoundException",
                target_name="C:\\missing",
                target_type="String",
                exception_type="System.Management.Automation.ItemNotFoundException",
                target="C:\\missing",
                script_stack_trace="at <ScriptBlock>, <No file>: line 1",
                command_name="Get-Item",
                script_line_number=1,
            ),
        ),
    ],
)
def test_powershell_shapes(message_type: PSRPMessageType, data: bytes, expected: Record) -> None:
    assert fast_decode(message_type, data) == expected
    assert psrpcore_record(message_type, data) == expected


def test_depth_cut_nested_error_record_decodes_where_psrpcore_cannot() -> None:
    data = samples.PS51_GET_ITEM_ERROR_DEPTH_CUT
    assert fast_decode(PSRPMessageType.ErrorRecord, data) == fast_decode(
        PSRPMessageType.ErrorRecord, samples.PS51_GET_ITEM_ERROR
    )
    with pytest.raises(AttributeError):
        psrpcore_record(PSRPMessageType.ErrorRecord, data)


# -- what must fall back ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message_type", "data"),
    [
        (PSRPMessageType.PipelineOutput, b'<Ref RefId="0" />'),
        (PSRPMessageType.PipelineOutput, b"<SS>AAAA</SS>"),
        (PSRPMessageType.PipelineOutput, b"<S>unterminated"),
        (PSRPMessageType.PipelineOutput, b"<S>a&#13;b</S>"),
        (PSRPMessageType.PipelineOutput, b"<I32>2147483648</I32>"),
        (PSRPMessageType.PipelineOutput, b"<DT>2024-13-01T00:00:00</DT>"),
        (PSRPMessageType.PipelineOutput, b'<Obj RefId="0"><MS><S N="a">1</S><S N="a">2</S></MS></Obj>'),
        (
            PSRPMessageType.PipelineOutput,
            b'<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.Host.Size</T></TN>'
            b'<Props><I32 N="Width">1</I32></Props></Obj>',
        ),
        (PSRPMessageType.PipelineState, b'<Obj RefId="0"><MS><I32 N="PipelineState">1</I32></MS></Obj>'),
        (PSRPMessageType.RunspacePoolState, b'<Obj RefId="0"><MS><I32 N="RunspaceState">2</I32></MS></Obj>'),
        (
            PSRPMessageType.VerboseRecord,
            b'<Obj RefId="0"><TN RefId="0"><T>System.Management.Automation.VerboseRecord</T>'
            b"<T>System.Management.Automation.InformationalRecord</T><T>System.Object</T></TN>"
            b'<MS><S N="InformationalRecord_Message">a\x01b</S>'
            b'<B N="InformationalRecord_SerializeInvocationInfo">false</B></MS></Obj>',
        ),
    ],
)
def test_unhandled_shapes_fall_back(message_type: PSRPMessageType, data: bytes) -> None:
    assert fast_decode(message_type, data) is None
