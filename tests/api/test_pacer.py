"""The followers' pacer: followers resting at once wake at the same tick, on one timer; a follower
that goes away while resting neither wakes nor strands the others; a tick that a follower's
``serve`` takes leaves it resting, and the timer then counts from the last tick (trio's MockClock)."""

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


async def test_a_follower_cancelled_while_it_rests_strands_no_one(autojump_clock: trio.testing.MockClock) -> None:
    pacer = Pacer()
    woke: list[float] = []
    start = trio.current_time()
    with trio.fail_after(10):
        await rest_cancelled_soon(pacer, resting(pacer, woke))
    # Woken by the timer the first rest started, neither by the other's end nor never; and the
    # timer did not reschedule the cancelled follower (trio would have raised).
    assert [round(at - start, 6) for at in woke] == [1.0]


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


async def test_a_tick_its_serve_takes_leaves_a_follower_resting_until_one_it_does_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    answers = [True, True, False]
    asked: list[float] = []

    def serve() -> bool:
        asked.append(trio.current_time())
        return answers[len(asked) - 1]

    woke: list[float] = []

    async def follower() -> None:
        await pacer.rest(1.0, serve)
        woke.append(trio.current_time())

    start = trio.current_time()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower)
            for at in (0.2, 0.4, 0.6):
                await trio.sleep_until(start + at)
                pacer.tick()
    assert [round(at - start, 6) for at in asked] == [0.2, 0.4, 0.6]
    assert [round(at - start, 6) for at in woke] == [0.6]


async def test_when_ticks_stop_the_timer_wakes_a_served_follower_a_rest_after_the_last_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    woke: list[float] = []

    async def follower() -> None:
        await pacer.rest(1.0, lambda: True)
        woke.append(trio.current_time())

    start = trio.current_time()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower)
            for at in (0.5, 1.5, 2.5):  # each within the timer's four periods of the one before
                await trio.sleep_until(start + at)
                pacer.tick()
    assert [round(at - start, 6) for at in woke] == [6.5]  # 2.5 + 4 x 1.0


async def test_a_serve_that_fails_wakes_its_follower_and_the_tick_goes_on_to_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pacer = Pacer()
    woke: list[str] = []

    def broken() -> bool:
        raise RuntimeError("a follower's bug")

    async def follower(name: str, serve: Callable[[], bool]) -> None:
        await pacer.rest(1.0, serve)
        woke.append(name)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower, "broken", broken)
            nursery.start_soon(follower, "served", lambda: True)
            nursery.start_soon(follower, "not served", lambda: False)
            await trio.sleep(0.1)
            pacer.tick()
            await trio.sleep(0.1)
            assert sorted(woke) == ["broken", "not served"]
            nursery.cancel_scope.cancel()
