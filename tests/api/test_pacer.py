"""The followers' pacer: followers resting at once wake at the same tick, on one timer, and a
follower that goes away while it keeps time does not strand the others (trio's MockClock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from vmbusops.api.broadcast import Pacer


async def test_followers_resting_at_once_wake_at_the_same_tick(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    woke: dict[str, float] = {}

    async def follower(name: str, after: float) -> None:
        await trio.sleep(after)
        await pacer.rest(1.0)
        woke[name] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower, "first", 0.0)
        nursery.start_soon(follower, "late", 0.4)
        nursery.start_soon(follower, "later", 0.9)
    # One tick, a period after the first rested: the later ones rested less, not a period each.
    assert {name: round(at - start, 6) for name, at in woke.items()} == {"first": 1.0, "late": 1.0, "later": 1.0}
    # The next rest starts a tick of its own.
    before = trio.current_time()
    await pacer.rest(1.0)
    assert round(trio.current_time() - before, 6) == 1.0


async def test_a_follower_cancelled_while_it_keeps_time_wakes_the_others(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    woke: list[float] = []
    start = trio.current_time()
    with trio.fail_after(10):
        await rest_cancelled_soon(pacer, resting(pacer, woke))
    assert [round(at - start, 6) for at in woke] == [0.25]  # woken with the keeper's end, not stranded


def resting(pacer: Pacer, woke: list[float]) -> Callable[[], Awaitable[None]]:
    """A follower that rests once and notes when it woke."""

    async def follower() -> None:
        await pacer.rest(1.0)
        woke.append(trio.current_time())

    return follower


async def rest_cancelled_soon(pacer: Pacer, other: Callable[[], Awaitable[None]]) -> None:
    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as keeper:
            nursery.start_soon(other)  # starts after the keeper below begins its rest

            async def cancel_soon() -> None:
                await trio.sleep(0.25)
                keeper.cancel()

            nursery.start_soon(cancel_soon)
            await pacer.rest(1.0)
    assert keeper.cancelled_caught


async def test_a_tick_wakes_every_resting_follower_and_the_timer_then_only_bounds_the_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    woke: list[float] = []
    follower = resting(pacer, woke)
    start = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(follower)
            await trio.sleep(0.3)
            pacer.tick()
        assert [round(at - start, 6) for at in woke] == [0.3] * 3  # at the tick, not at the timer
        # Once ticks come, the timer does not race them: it waits four times the period.
        before = trio.current_time()
        await pacer.rest(1.0)
        assert round(trio.current_time() - before, 6) == 4.0
