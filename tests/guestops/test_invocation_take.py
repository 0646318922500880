"""A guest invocation taken in bulk: runs of records between the step markers, in order, unnumbered."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from vmbusops.errors import TransportError
from vmbusops.guestops.host import GuestInvocation, Taken
from vmbusops.guestops.invoker import MARKER_TAG, StepMarker
from vmbusops.records import (
    ErrorRecord,
    InformationRecord,
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    Record,
)


def marker(text: str) -> InformationRecord:
    return InformationRecord(message_data=f"vmbusops-step {text}", tags=(MARKER_TAG,))


class Packets:
    """A record stream that gives its packets as they are listed, then ends (or breaks)."""

    def __init__(self, *packets: Sequence[Record], broken: bool = False) -> None:
        self.packets = [list(p) for p in packets]
        self.broken = broken
        self.final = None
        self.exit_code = None

    async def take(self) -> list[Record]:
        if self.packets:
            return self.packets.pop(0)
        if self.broken:
            raise TransportError("the session broke")
        return []

    async def __anext__(self) -> Record:
        while self.packets and not self.packets[0]:
            self.packets.pop(0)
        if not self.packets:
            if self.broken:
                raise TransportError("the session broke")
            raise StopAsyncIteration
        return self.packets[0].pop(0)


def parts(taken: list[Taken]) -> list[tuple[list[Record], StepMarker | None]]:
    return [(t.records, t.marker) for t in taken]


async def test_take_gives_the_runs_between_markers_in_order_and_observes_them() -> None:
    a, b, c = OutputRecord(value="a"), OutputRecord(value="b"), OutputRecord(value="c")
    error = ErrorRecord(message="bad")
    end = PipelineStateRecord(state=PipelineState.COMPLETED)
    inv = GuestInvocation(
        "web01",
        Packets(  # type: ignore[arg-type]
            [marker("begin 0"), a, error, marker("end 0 exit=0 errors=1"), marker("begin 1"), b],
            [c, marker("end 1 exit=3"), end],
        ),
        None,
    )
    first = await inv.take()
    assert parts(first) == [
        ([], StepMarker("begin", 0)),
        ([a, error], StepMarker("end", 0, 0, 1)),
        ([], StepMarker("begin", 1)),
        ([b], None),
    ]
    assert len({t.time for t in first}) == 1  # taken at once
    second = await inv.take()
    assert parts(second) == [
        ([c], StepMarker("end", 1, 3)),
        ([PipelineStateRecord(state=PipelineState.COMPLETED, exit_code=3)], None),
    ]
    assert await inv.take() == []
    outcome = inv.outcome
    assert (outcome.exit_code, outcome.script_errors, outcome.error_records, outcome.records) == (3, 1, 1, 5)
    assert outcome.state is PipelineState.COMPLETED


async def test_without_markers_take_and_iteration_give_the_same_records() -> None:
    packets = ([marker("begin 0"), OutputRecord(value="x")], [marker("end 0 exit=0")], [OutputRecord(value="y")])
    taken = GuestInvocation("web01", Packets(*packets), None, markers=False)  # type: ignore[arg-type]
    bulk: list[Record] = []
    while got := await taken.take():
        assert all(t.marker is None for t in got)
        bulk += [r for t in got for r in t.records]
    one_by_one = GuestInvocation("web01", Packets(*packets), None, markers=False)  # type: ignore[arg-type]
    recs = [rec async for rec in one_by_one]
    assert [r.record for r in recs] == bulk == [OutputRecord(value="x"), OutputRecord(value="y")]
    assert [r.seq for r in recs] == [1, 2]  # iterating numbers within the invocation
    assert taken.outcome.exit_code == one_by_one.outcome.exit_code == 0


async def test_a_broken_session_is_the_outcome_s_failure_and_raised() -> None:
    inv = GuestInvocation("web01", Packets([OutputRecord(value="x")], broken=True), None)  # type: ignore[arg-type]
    assert parts(await inv.take()) == [([OutputRecord(value="x")], None)]
    with pytest.raises(TransportError):
        await inv.take()
    assert isinstance(inv.outcome.failure, TransportError)
