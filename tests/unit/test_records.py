"""Record values survive the journal's JSON and render the same live and from the journal."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.records import (
    DebugRecord,
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    ProgressRecord,
    PSDictValue,
    PSObjectValue,
    Record,
    Value,
    VerboseRecord,
    WarningRecord,
    record_json,
    record_to_json,
    value_display,
    value_from_json,
    value_to_json,
)

leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text(max_size=20), st.binary(max_size=8),
    st.floats(allow_nan=False),
)
values: st.SearchStrategy[Value] = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(tuple),
        st.lists(st.tuples(st.text(max_size=5), inner), max_size=3).map(lambda kv: PSDictValue(tuple(kv))),
        st.builds(
            PSObjectValue,
            st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=2).map(tuple),
            st.dictionaries(st.text(max_size=6), inner, max_size=3).map(lambda d: tuple(d.items())),
            st.one_of(st.none(), st.text(max_size=10)),
        ),
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(values)
def test_json_round_trip_and_same_display(value: Value) -> None:
    back = value_from_json(value_to_json(value))
    assert back == value
    assert value_display(back) == value_display(value)


def test_an_object_whose_tostring_is_its_type_shows_its_properties() -> None:
    service = PSObjectValue(
        ("System.ServiceProcess.ServiceController",),
        (("Name", "WinRM"), ("Status", "Running")),
        "System.ServiceProcess.ServiceController",
    )
    assert value_display(value_from_json(value_to_json(service))) == "@{Name=WinRM; Status=Running}"


compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
text = st.text(max_size=12)
error_records = st.builds(
    ErrorRecord, message=text, fqid=text, target=st.none() | text, script_line_number=st.integers()
)
records: st.SearchStrategy[Record] = st.one_of(
    st.builds(OutputRecord, value=values),
    error_records,
    st.builds(WarningRecord, message=text),
    st.builds(VerboseRecord, message=text),
    st.builds(DebugRecord, message=text),
    st.builds(
        InformationRecord,
        message_data=values,
        source=text,
        tags=st.lists(text, max_size=3).map(tuple),
        process_id=st.integers(),
    ),
    st.builds(
        ProgressRecord,
        activity=text,
        percent_complete=st.integers(-1, 100),
        seconds_remaining=st.integers(),
        completed=st.booleans(),
    ),
    st.builds(
        PipelineStateRecord,
        state=st.sampled_from(PipelineState),
        error=st.none() | error_records,
        exit_code=st.none() | st.integers(),
    ),
)


@settings(max_examples=500, deadline=None)
@given(records)
def test_the_journal_text_of_a_record_is_json_dumps_of_its_dict(record: Record) -> None:
    assert record_json(record) == compact(record_to_json(record))
    assert json.loads(record_json(record)) == record_to_json(record)


@pytest.mark.parametrize(
    "value", [float("nan"), float("-inf"), 2**80, True, None, 1.5, "\ud800 \x00 \u2028 ü", b"\x00"]
)
def test_nan_big_ints_and_odd_text_are_written_as_json_writes_them(value: Value) -> None:
    for record in (OutputRecord(value=value), InformationRecord(message_data=value, tags=("a", "ü"))):
        assert record_json(record) == compact(record_to_json(record))
