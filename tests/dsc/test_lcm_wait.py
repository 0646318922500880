"""Waiting for a busy LCM, on trio's MockClock against an in-memory guest (a scripted LCM)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import trio
import trio.testing

from vmbusops.errors import SessionLostError
from vmbusops.guestops.dsc import GuestRun, LcmWaitTimeout, wait_lcm
from vmbusops.guestops.host import InvokeOutcome
from vmbusops.records import OutputRecord, PipelineState, PSObjectValue, Record


class ScriptedLcm:
    """A guest whose LCM reports the given states in turn (None: the guest does not answer)."""

    def __init__(self, states: Sequence[str | None]) -> None:
        self.states = list(states)
        self.asked: list[float] = []
        self.notes: list[str] = []
        self.waited_ready = 0

    async def run(
        self,
        script: str,
        *,
        arguments: Sequence[Any] = (),
        on_record: Callable[[Record], Awaitable[None]] | None = None,
        quiet: bool = False,
    ) -> GuestRun:
        assert script == "Get-DscLocalConfigurationManager" and quiet  # the agent's own poll: not journaled
        self.asked.append(trio.current_time())
        state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        if state is None:
            return GuestRun(InvokeOutcome(failure=SessionLostError("web01: the session ended", vm="web01")), [])
        value = PSObjectValue(type_names=("MSFT_DSCMetaConfiguration",), properties=(("LCMState", state),))
        return GuestRun(InvokeOutcome(state=PipelineState.COMPLETED, exit_code=0), [OutputRecord(value=value)])

    async def wait_ready(self) -> None:
        self.waited_ready += 1

    async def note(self, text: str) -> None:
        self.notes.append(text)

    def progress(self, text: str) -> None:
        return None


async def test_waits_while_busy_and_through_a_guest_that_does_not_answer(autojump_clock: trio.testing.MockClock) -> None:
    guest = ScriptedLcm(["Busy", "Busy", None, "Busy", "PendingConfiguration"])
    state = await wait_lcm(guest, "web01", deadline=trio.current_time() + 60)
    assert state == "PendingConfiguration"
    assert guest.waited_ready == 1
    assert guest.notes[0].startswith("vmbusops: the LCM on web01 is Busy; waiting")
    assert guest.notes[-1] == "vmbusops: the LCM on web01 is PendingConfiguration now"


async def test_an_idle_lcm_is_not_waited_for() -> None:
    guest = ScriptedLcm(["Idle"])
    assert await wait_lcm(guest, "web01", deadline=trio.current_time()) == "Idle"
    assert guest.notes == []


async def test_the_wait_is_bounded_by_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    guest = ScriptedLcm(["Busy"])
    start = trio.current_time()
    with pytest.raises(LcmWaitTimeout, match="still Busy when the step's time to wait for it ran out"):
        await wait_lcm(guest, "web01", deadline=start + 120)
    assert 100 < trio.current_time() - start <= 120
    assert 20 < len(guest.asked) < 40  # it backs off to one look every few seconds
