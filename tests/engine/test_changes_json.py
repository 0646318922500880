"""Journal changes as JSON: every change comes back exactly, and nothing else gets through.

The JSON crosses a broker that is never trusted, so anything the parser does not refuse reaches
the controller's journal: each refusal is a ValueError that says what was wrong.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmbusops.engine.changes import Change, JobChange, RunChange, StepChange
from vmbusops.engine.changes_json import _FIELDS, change_from_json, change_to_json
from vmbusops.engine.states import State

ids = st.integers(1, 2**63 - 1)
counts = st.integers(0, 2**63 - 1)
times = st.none() | st.floats(allow_nan=False, allow_infinity=False)
texts = st.none() | st.text()
states = st.sampled_from(State)

changes: st.SearchStrategy[Change] = st.one_of(
    st.builds(JobChange, job_id=ids, state=states, started_at=times, finished_at=times, error=texts),
    st.builds(
        RunChange, run_id=ids, state=st.none() | states, current_step=texts, records=counts, error=texts,
        code=texts, started_at=times, finished_at=times, excerpt=st.none() | st.lists(st.text()),
    ),
    st.builds(
        StepChange, run_id=ids, index=counts, state=states, attempts=st.none() | counts, started_at=times,
        finished_at=times, error=texts, code=texts, exit_code=st.none() | st.integers(-(2**63), 2**63 - 1),
        clear=st.booleans(),
    ),
)  # fmt: skip


#: No deadline: the machine these run on is shared, and a slow example is not a wrong one.
PROPERTIES = settings(deadline=None, database=None)


def wire(change: Change, **kw: Any) -> Any:
    """``change`` as it crosses the broker: JSON text, read back."""
    return json.loads(json.dumps(change_to_json(change, **kw)))


@PROPERTIES
@given(changes)
def test_every_change_comes_back_exactly(change: Change) -> None:
    assert change_from_json(wire(change)) == change


@PROPERTIES
@given(changes, ids)
def test_a_change_sent_without_its_id_comes_back_under_the_readers_id(change: Change, other: int) -> None:
    data = wire(change, ids=False)
    assert "run_id" not in data and "job_id" not in data
    back = change_from_json(data, run_id=other, job_id=other)
    key = "job_id" if isinstance(change, JobChange) else "run_id"
    assert back == dataclasses.replace(change, **{key: other})  # type: ignore[arg-type]


def test_the_shape_is_the_documented_one() -> None:
    step = StepChange(run_id=4, index=1, state=State.IN_PROGRESS, attempts=2, started_at=5.5, clear=True)
    assert change_to_json(step) == {
        "t": "step", "run_id": 4, "index": 1, "state": "in-progress", "attempts": 2, "started_at": 5.5, "clear": True,
    }  # fmt: skip
    run = RunChange(run_id=4, state=None, current_step=None, records=3, excerpt=["a", "b"])
    assert change_to_json(run, ids=False) == {"t": "run", "records": 3, "excerpt": ["a", "b"]}
    assert change_to_json(JobChange(job_id=1, state=State.SUCCESS)) == {"t": "job", "job_id": 1, "state": "success"}


def test_the_parser_knows_every_field_of_every_change() -> None:
    for cls, fields in _FIELDS.items():
        assert list(fields) == [f.name for f in dataclasses.fields(cls)]


STEP = {"t": "step", "run_id": 4, "index": 1, "state": "success"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([STEP], "a journal change must be a JSON object, not an array"),
        ("step", "must be a JSON object, not a string"),
        ({**STEP, "t": "lease"}, "has the type 'lease'; one of job, run, step expected"),
        ({k: v for k, v in STEP.items() if k != "t"}, "has the type None"),
        ({**STEP, "extra": 1, "more": 2}, "a step change has unknown field(s): extra, more"),
        ({k: v for k, v in STEP.items() if k != "index"}, "a step change has no index"),
        ({**STEP, "index": -1}, "index must be a whole number >= 0, not -1"),
        ({**STEP, "index": 1.0}, "index must be a whole number >= 0, not 1.0"),
        ({**STEP, "index": True}, "index must be a whole number >= 0, not True"),
        ({**STEP, "index": "1"}, "index must be a whole number >= 0, not '1'"),
        ({**STEP, "attempts": 2**63}, "attempts is too large"),
        ({**STEP, "run_id": 0}, "run_id must be a whole number >= 1, not 0"),
        ({**STEP, "exit_code": -(2**63) - 1}, "exit_code must be a whole number, not"),
        ({**STEP, "state": "done"}, "state must be one of pending, delayed, in-progress"),
        ({**STEP, "state": None}, "state must be one of"),
        ({**STEP, "started_at": "now"}, "started_at must be a finite number, not 'now'"),
        ({**STEP, "started_at": float("nan")}, "started_at must be a finite number, not nan"),
        ({**STEP, "finished_at": float("inf")}, "finished_at must be a finite number"),
        ({**STEP, "started_at": False}, "started_at must be a finite number, not False"),
        ({**STEP, "error": 5}, "error must be a string, not a number"),
        ({**STEP, "code": None}, "code must be a string, not null"),
        ({**STEP, "clear": 1}, "clear must be true or false, not 1"),
        ({"t": "run", "run_id": 4, "records": 0, "excerpt": "x"}, "excerpt must be an array of strings"),
        ({"t": "run", "run_id": 4, "records": 0, "excerpt": ["x", 1]}, "excerpt must be an array of strings"),
        ({"t": "run", "run_id": 4}, "a run change has no records"),
        ({"t": "job", "state": "success"}, "a job change has no job_id"),
    ],
)
def test_what_change_to_json_would_not_write_is_refused_with_why(data: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        change_from_json(data)
    assert message in str(info.value)


def test_a_change_that_names_its_own_run_is_refused_where_the_reader_names_it() -> None:
    with pytest.raises(ValueError, match="a step change must not carry run_id"):
        change_from_json(STEP, run_id=9)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@PROPERTIES
@given(changes, st.sampled_from(["t", "run_id", "job_id", "index", "state", "records", "attempts", "excerpt",
                                 "clear", "started_at", "error", "exit_code", "current_step", "x"]), json_values)
def test_any_tampered_field_gives_a_change_or_a_value_error_never_anything_else(
    change: Change, field: str, value: object
) -> None:
    data = change_to_json(change)
    data[field] = value
    try:
        back = change_from_json(data)
    except ValueError:
        return
    # Accepted: then it is the change the tampered JSON says, and says it again the same way.
    assert change_from_json(change_to_json(back)) == back
