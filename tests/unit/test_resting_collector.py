"""The agent's collector runs when its event loop rests (vmbusops.heap.RestingCollector): the
young generation once enough objects are tracked, an older one when its count says so, and
nothing while the loop is busy or too few objects came."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import pytest
import trio
import trio.testing

from vmbusops import heap


@contextmanager
def collections_seen() -> Iterator[list[int]]:
    """The generation of each collection meanwhile, with no automatic one (a threshold out of
    reach), so that any collection seen is the instrument's."""
    seen: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop":
            seen.append(info["generation"])

    threshold = gc.get_threshold()
    gc.set_threshold(10_000_000, threshold[1], threshold[2])
    gc.callbacks.append(note)
    try:
        yield seen
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*threshold)


def run_resting(main: Any) -> None:
    # A mock clock that jumps only after the loop has waited a little: the loop's waits have a
    # timeout, as a real loop's rest does.
    collector = cast(trio.abc.Instrument, heap.RestingCollector())
    trio.run(main, instruments=[collector], clock=trio.testing.MockClock(autojump_threshold=0.001))


def test_a_resting_loop_collects_the_young_generation_once_enough_objects_are_tracked() -> None:
    kept: list[list[int]] = []

    async def main() -> None:
        with collections_seen() as seen:
            gc.collect(2)  # every generation's count at zero: the next at rest is the young one
            seen.clear()
            kept.extend([] for _ in range(heap.REST_YOUNG // 2))
            await trio.sleep(1)
            assert seen == []  # too few since the last collection
            kept.extend([] for _ in range(2 * heap.REST_YOUNG))
            assert seen == []  # busy: nothing until the loop rests
            await trio.sleep(1)
            assert seen == [0]
            await trio.sleep(1)
            assert seen == [0]  # and the count starts again

    run_resting(main)


@pytest.mark.parametrize("generation", [1, 2])
def test_an_older_generation_is_collected_at_a_rest_once_its_count_has_passed_its_threshold(generation: int) -> None:
    kept: list[list[int]] = []

    async def main() -> None:
        with collections_seen() as seen:
            gc.collect(2)  # no generation's count past its threshold
            for _ in range(gc.get_threshold()[generation] + 1):
                gc.collect(generation - 1)  # each counts towards the next generation's threshold
            seen.clear()
            kept.extend([] for _ in range(2 * heap.REST_YOUNG))
            await trio.sleep(1)
            assert seen == [generation]

    run_resting(main)


def test_only_the_settled_program_collects_at_rest() -> None:
    async def main() -> None:
        heap.collect_at_rest()  # this test's process is not the program: nothing is added
        kept = [[] for _ in range(2 * heap.REST_YOUNG)]
        with collections_seen() as seen:
            await trio.sleep(0.001)
            assert seen == []
        del kept

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.001))
