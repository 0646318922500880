"""Record values survive the journal's JSON and render the same live and from the journal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.records import PSDictValue, PSObjectValue, Value, value_display, value_from_json, value_to_json

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
