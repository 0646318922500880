"""Waiting for the event loop to rest: after every other ready task, or after the patience even
if the loop never rests; a waiter cancelled meanwhile leaves the others waiting as before
(trio's MockClock, which stands still unless the test moves it)."""

from __future__ import annotations

import trio
import trio.testing

from vmbusops.api.idle import idle


async def test_a_waiter_returns_after_every_ready_task_has_run(mock_clock: trio.testing.MockClock) -> None:
    steps = 0
    seen: list[int] = []

    async def busy() -> None:
        nonlocal steps
        for _ in range(50):
            steps += 1
            await trio.lowlevel.checkpoint()

    async def waiter() -> None:
        await idle(patience=1.0)  # the clock stands still: only the loop's rest ends the wait
        seen.append(steps)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(busy)
    assert seen == [50]


async def test_a_loop_that_never_rests_lets_a_waiter_go_after_its_patience(mock_clock: trio.testing.MockClock) -> None:
    done = False
    jumps = 0

    async def busy() -> None:  # always ready, and a millisecond passes at each step
        nonlocal jumps
        while not done:
            mock_clock.jump(0.001)
            jumps += 1
            await trio.lowlevel.checkpoint()

    async def waiter() -> None:
        nonlocal done
        await idle(patience=0.0105)
        done = True

    with trio.fail_after(60):  # the mock clock's: a waiter that never went would fail here, not hang
        async with trio.open_nursery() as nursery:
            nursery.start_soon(busy)
            nursery.start_soon(waiter)
    assert jumps >= 10  # it waited its patience out, and no more than that: the test ends


async def test_a_cancelled_waiter_leaves_and_the_others_still_wake(mock_clock: trio.testing.MockClock) -> None:
    woke: list[str] = []

    async def waiter(name: str) -> None:
        await idle(patience=1.0)
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "first")
        async with trio.open_nursery() as inner:
            inner.start_soon(waiter, "cancelled")
            # trio's own wait lets the loop wait without a timeout: the waiters stay parked
            await trio.testing.wait_all_tasks_blocked()
            assert woke == []
            inner.cancel_scope.cancel()
        nursery.start_soon(waiter, "second")
    assert sorted(woke) == ["first", "second"]
