"""The PSRP client against PowerShell's own OutOfProc server (``pwsh -NoLogo -NoProfile -s``).

This is the transport ``--host pwsh`` uses, and PowerShell is the referee here: its serializer
writes the records, its server schedules the packets, its parameter binder reads what we send.
Tests that do not break their pool share one per module (a pwsh costs 1-2 s to start).
"""

from __future__ import annotations

import time

import pytest
import trio
from pwsh_pool import SharedPool, shared_pool_fixture

from vmbusops.psrp.client import Command, RunspacePool
from vmbusops.records import OutputRecord, PipelineState, PipelineStateRecord, Record

pytestmark = pytest.mark.pwsh

shared = shared_pool_fixture(max_runspaces=8)


def script(text: str, **params: object) -> list[list[Command]]:
    return [[Command(text, params, is_script=True)]]


def outputs(records: list[Record]) -> list[object]:
    return [r.value for r in records if isinstance(r, OutputRecord)]


def final(records: list[Record]) -> PipelineStateRecord:
    last = records[-1]
    assert isinstance(last, PipelineStateRecord)
    return last


# -- many pipelines -------------------------------------------------------------------------------


async def test_a_thousand_pipelines_back_to_back_all_answer(shared: SharedPool) -> None:
    # The CreatePipeline data must follow the CommandAck: the server handles each input line on
    # its own thread-pool item, and data that overtakes its Command is dropped (the pipeline then
    # never answers; before the fix about 1 in 40 did not).
    async def body(pool: RunspacePool) -> tuple[list[object], float]:
        got: list[object] = []
        start = time.perf_counter()
        for i in range(1000):
            with trio.fail_after(10):
                records = await pool.run([[Command("Write-Output", {"InputObject": i})]])
            assert final(records).state is PipelineState.COMPLETED
            got.extend(outputs(records))
        return got, time.perf_counter() - start

    got, elapsed = await shared.run(body, timeout=120)
    assert got == list(range(1000))
    print(f"1000 pipelines back to back on real pwsh: {elapsed:.2f}s")


async def test_two_hundred_pipelines_at_once_all_answer(shared: SharedPool) -> None:
    async def body(pool: RunspacePool) -> list[object]:
        got: list[object] = []

        async def one(i: int) -> None:
            records = await pool.run(script("param($i) 'started'; $i", i=i))
            assert final(records).state is PipelineState.COMPLETED
            got.append(outputs(records)[1])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(200):
                    nursery.start_soon(one, i)
        return got

    got = await shared.run(body)
    assert sorted(got) == list(range(200))  # type: ignore[type-var]
