"""The PSRP client against PowerShell's own OutOfProc server (``pwsh -NoLogo -NoProfile -s``).

This is the transport ``--host pwsh`` uses, and PowerShell is the referee here: its serializer
writes the records, its server schedules the packets, its parameter binder reads what we send.
Tests that do not break their pool share one per module (a pwsh costs 1-2 s to start).
"""

from __future__ import annotations

import time
from pathlib import Path

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


# -- the host: records once, exit codes, prompts ------------------------------------------------

# PowerShell Direct, modelled with a child pwsh (the file says why the runspace gets our host).
GUEST_SESSION = (Path(__file__).parent / "fixtures" / "guest_session.ps1").read_text(encoding="utf-8")


def by_stream(records: list[Record]) -> dict[str, list[Record]]:
    out: dict[str, list[Record]] = {}
    for r in records:
        out.setdefault(r.stream.value, []).append(r)
    return out


async def test_every_line_written_through_the_host_arrives_once(shared: SharedPool) -> None:
    # PowerShell sends each of these as a record *and* a host call (or, for $Host.UI, as a host
    # call only): each must reach the caller exactly once, in order.
    text = (
        "Write-Verbose 'v1' -Verbose; Write-Warning 'w1'; Write-Debug 'd1' -Debug; Write-Host 'h1'; "
        "Write-Progress -Activity 'a1' -Status 's1' -PercentComplete 5; "
        "$Host.UI.WriteLine('wl'); $Host.UI.Write('w-no-newline'); 'oh' | Out-Host; "
        "$Host.UI.WriteErrorLine('el'); $Host.UI.WriteVerboseLine('v2'); 'o'"
    )
    records = await shared.run(lambda pool: pool.run(script(text)))
    from vmbusops.records import display_text

    shown = [(r.stream.value, display_text(r)) for r in records]
    assert shown == [
        ("verbose", "v1"),
        ("warning", "w1"),
        ("debug", "d1"),
        ("information", "h1"),
        ("progress", "a1: s1 5%"),
        ("information", "wl"),
        ("information", "w-no-newline"),
        ("information", "oh"),
        ("error", "el"),
        ("verbose", "v2"),
        ("output", "o"),
        ("state", "Completed"),
    ]


async def test_guest_verbose_and_warning_arrive_through_invoke_command(shared: SharedPool) -> None:
    text = GUEST_SESSION + (
        "Invoke-Command -Session $s -ScriptBlock { Write-Verbose 'guest v' -Verbose; Write-Warning 'guest w'; "
        "Write-Debug 'guest d' -Debug; 'guest o' }; Remove-PSSession $s"
    )
    records = await shared.run(lambda pool: pool.run(script(text)))
    streams = by_stream(records)
    assert [getattr(r, "message", None) for r in streams["verbose"]] == ["guest v"]
    assert [getattr(r, "message", None) for r in streams["warning"]] == ["guest w"]
    assert [getattr(r, "message", None) for r in streams["debug"]] == ["guest d"]
    assert outputs(records) == ["guest o"]


async def test_exit_in_a_guest_brings_no_code_but_exit_in_our_pipeline_does(shared: SharedPool) -> None:
    async def body(pool: RunspacePool) -> tuple[list[Record], int | None, list[Record], int | None]:
        guest_text = GUEST_SESSION + (
            "Invoke-Command -Session $s { 'before'; exit 3 }; $s.Runspace.RunspaceStateInfo.State.ToString()"
        )
        async with pool.invoke(script(guest_text)) as pipe:
            guest = await pipe.collect()
        guest_code = pipe.exit_code
        async with pool.invoke(script("'top'; exit 3")) as pipe:
            top = await pipe.collect()
        return guest, guest_code, top, pipe.exit_code

    guest, guest_code, top, top_code = await shared.run(body)
    # The guest's SetShouldExit made Invoke-Command close the remote runspace; no code came back.
    assert outputs(guest)[0] == "before"
    assert outputs(guest)[1] in ("Closing", "Closed", "Broken")
    assert guest_code is None and final(guest).exit_code is None
    assert outputs(top) == ["top"]
    assert top_code == 3
    assert final(top) == PipelineStateRecord(state=PipelineState.COMPLETED, exit_code=3)


@pytest.mark.parametrize(
    "prompt",
    [
        "Read-Host 'name'",
        "Read-Host 'secret' -AsSecureString",
        "Get-Credential",
        "$Host.UI.PromptForChoice('c', 'm', [System.Management.Automation.Host.ChoiceDescription[]]@('&a', '&b'), 0)",
        "$Host.UI.RawUI.ReadKey()",
        "Set-Variable -Name confirmed -Value 1 -Confirm",
    ],
)
async def test_a_prompt_is_answered_with_a_clear_error_at_once(shared: SharedPool, prompt: str) -> None:
    start = time.perf_counter()
    records = await shared.run(lambda pool: pool.run(script(prompt + "; 'after'")), timeout=10)
    elapsed = time.perf_counter() - start
    errors = [r for r in records if r.stream.value == "error"]
    state = final(records)
    messages = [getattr(e, "message", "") for e in errors] + ([state.error.message] if state.error else [])
    assert any("unattended" in m and "no one is there to answer" in m for m in messages), records
    assert elapsed < 5
