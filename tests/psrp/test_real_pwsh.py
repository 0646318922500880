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
from vmbusops.records import ErrorRecord, OutputRecord, PipelineState, PipelineStateRecord, Record

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


# -- every stream, as PowerShell sent it --------------------------------------------------------


async def test_every_stream_decodes_with_its_details(shared: SharedPool) -> None:
    text = (
        "Write-Verbose 'v' -Verbose; Write-Warning 'w'; Write-Debug 'd' -Debug; "
        "Write-Information -MessageData 'info' -Tags 'a','b'; "
        "Write-Progress -Id 7 -Activity 'Copying' -Status '3 of 10' -PercentComplete 30 -SecondsRemaining 9; "
        "Write-Error -Message 'bad' -Category InvalidData -ErrorId 'My.Id' -TargetObject 'C:\\x'; "
        "Write-Host 'shown as text' -ForegroundColor Green; "
        "'s'; 42; $true; [pscustomobject]@{Name='vm01'; Disks=@('c','d')}"
    )
    records = await shared.run(lambda pool: pool.run(script(text)))
    from vmbusops.records import (
        DebugRecord,
        ErrorRecord,
        InformationRecord,
        ProgressRecord,
        PSObjectValue,
        VerboseRecord,
        WarningRecord,
        display_text,
    )

    streams = by_stream(records)
    assert streams["verbose"] == [VerboseRecord(message="v")]
    assert streams["warning"] == [WarningRecord(message="w")]
    assert streams["debug"] == [DebugRecord(message="d")]
    info, host = streams["information"]
    assert isinstance(info, InformationRecord) and (info.message_data, info.tags) == ("info", ("a", "b"))
    assert isinstance(host, InformationRecord) and host.tags == ("PSHOST",)
    assert display_text(host) == "shown as text"
    (progress,) = streams["progress"]
    assert progress == ProgressRecord(
        activity="Copying", activity_id=7, status_description="3 of 10", percent_complete=30, seconds_remaining=9
    )
    (error,) = streams["error"]
    assert isinstance(error, ErrorRecord)
    assert (error.message, error.fqid, error.category, error.target, error.target_name) == (
        "bad", "My.Id", "InvalidData", "C:\\x", "C:\\x",
    )  # fmt: skip
    assert error.exception_type == "Microsoft.PowerShell.Commands.WriteErrorException"
    values = outputs(records)
    assert values[:3] == ["s", 42, True]
    vm = values[3]
    assert isinstance(vm, PSObjectValue) and vm.get("Name") == "vm01" and vm.get("Disks") == ("c", "d")


async def test_a_cmdlet_error_and_a_throw_keep_their_details(shared: SharedPool) -> None:
    async def body(pool: RunspacePool) -> tuple[list[Record], list[Record]]:
        return await pool.run(script("Get-Item -LiteralPath '/nosuch'")), await pool.run(script("throw 'kaboom'"))

    cmdlet, thrown = await shared.run(body)
    (error,) = by_stream(cmdlet)["error"]
    assert getattr(error, "fqid", None) == "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand"
    assert getattr(error, "category", None) == "ObjectNotFound"
    assert getattr(error, "command_name", None) == "Get-Item"
    state = final(thrown)
    assert state.state is PipelineState.FAILED and state.error is not None
    assert (state.error.message, state.error.reason) == ("kaboom", "RuntimeException")


# -- stopping ---------------------------------------------------------------------------------------


async def test_stop_mid_stream_and_while_output_floods(shared: SharedPool) -> None:
    async def body(pool: RunspacePool) -> tuple[PipelineStateRecord | None, PipelineStateRecord | None, float, list[Record]]:
        async with pool.invoke(script("foreach ($i in 1..100000) { Write-Verbose \"line $i\" -Verbose; Start-Sleep -Milliseconds 5 }")) as slow:
            seen = 0
            async for record in slow:
                if record.stream.value == "verbose":
                    seen += 1
                    if seen == 5:
                        break
        start = time.perf_counter()
        async with pool.invoke(script("foreach ($i in 1..100000000) { $i }")) as flood:
            seen = 0
            async for _ in flood:
                seen += 1
                if seen == 5000:
                    break
        stopped_in = time.perf_counter() - start
        after = await pool.run(script("'still here'"))
        return slow.final, flood.final, stopped_in, after

    slow_final, flood_final, stopped_in, after = await shared.run(body)
    assert slow_final is not None and slow_final.state is PipelineState.STOPPED
    assert flood_final is not None and flood_final.state is PipelineState.STOPPED
    assert stopped_in < 15
    assert outputs(after) == ["still here"]


# -- what crosses the wire ---------------------------------------------------------------------------


async def test_a_credential_arrives_intact_through_the_session_key(shared: SharedPool) -> None:
    import hashlib

    from vmbusops.credentials import GuestCredential, Secret

    password = "pä$$ w0rd <&> _x0041_ \U0001f511"  # a test value, never printed
    expected = hashlib.sha256(password.encode("utf-8")).hexdigest().upper()
    text = (
        "param($Credential) $Credential.UserName; "
        "[Convert]::ToHexString([Security.Cryptography.SHA256]::HashData("
        "[Text.Encoding]::UTF8.GetBytes($Credential.GetNetworkCredential().Password)))"
    )
    credential = GuestCredential("CONTOSO\\admin", Secret(password))

    async def body(pool: RunspacePool) -> tuple[list[Record], list[Record]]:
        # Twice: the first pipeline exchanges the key and builds the template, the second fills it.
        return await pool.run(script(text, Credential=credential)), await pool.run(script(text, Credential=credential))

    for records in await shared.run(body):
        got = outputs(records)
        assert got[0] == "CONTOSO\\admin"
        assert got[1] == expected, "the password did not arrive intact"


async def test_messages_far_larger_than_a_fragment_both_ways(shared: SharedPool) -> None:
    import hashlib

    big = "".join(chr(0x20 + (i * 7919) % 0x5E) for i in range(300_000)) + "<&>\u00e9\U0001f389"
    text = (
        "param($Big, $Size) $Big.Length; "
        "[Convert]::ToHexString([Security.Cryptography.SHA256]::HashData([Text.Encoding]::UTF8.GetBytes($Big))); "
        "'y' * $Size; [pscustomobject]@{Blob = 'z' * $Size; Items = 1..5000}"
    )

    async def body(pool: RunspacePool) -> list[Record]:
        return await pool.run(script(text, Big=big, Size=500_000))

    records = await shared.run(body)
    length, digest, sent_back, obj = outputs(records)
    assert length == len(big.encode("utf-16-le")) // 2
    assert digest == hashlib.sha256(big.encode("utf-8")).hexdigest().upper()
    assert sent_back == "y" * 500_000
    from vmbusops.records import PSObjectValue

    assert isinstance(obj, PSObjectValue)
    assert obj.get("Blob") == "z" * 500_000
    assert obj.get("Items") == tuple(range(1, 5001))


# -- pools of their own: opening, closing, a server killed ------------------------------------------


async def test_pools_open_and_close(pwsh_path: str) -> None:
    from pwsh_pool import pwsh_connector

    from vmbusops.psrp.client import open_runspace_pool

    for _ in range(2):
        with trio.fail_after(30):
            async with open_runspace_pool(pwsh_connector(pwsh_path), max_runspaces=2) as pool:
                assert outputs(await pool.run(script("$PSVersionTable.PSVersion.Major"))) == [7]


async def test_a_server_killed_mid_pipeline_is_a_clear_error(pwsh_path: str) -> None:
    import os
    import signal

    from pwsh_pool import pwsh_connector

    from vmbusops.errors import HostProcessExitedError
    from vmbusops.psrp.client import open_runspace_pool

    async def kill_mid_pipeline() -> None:
        async with open_runspace_pool(pwsh_connector(pwsh_path), max_runspaces=2) as pool:
            (pid,) = outputs(await pool.run(script("$PID")))
            assert isinstance(pid, int)
            async with pool.invoke(script("'started'; Start-Sleep -Seconds 60")) as pipe:
                async for record in pipe:
                    if isinstance(record, OutputRecord):
                        os.kill(pid, signal.SIGKILL)

    with trio.fail_after(30), pytest.raises(HostProcessExitedError) as info:
        await kill_mid_pipeline()
    assert "closed its output" in str(info.value)


async def test_what_pwsh_sends_now_decodes_equal_both_ways(pwsh_path: str) -> None:
    # The recorded fixtures' cases, live: every record message the installed pwsh sends decodes
    # on the fast path, equal to psrpcore's generic path, and every host call the client turns
    # into a record matches psrpcore's reading of it.
    import sys
    import uuid
    from xml.etree import ElementTree

    import psrpcore
    from psrpcore.types import PSRPMessageType

    from vmbusops.psrp.convert import record_from_event
    from vmbusops.psrp.decode import fast_decode, fast_host_line
    from vmbusops.psrp.hostcalls import record_from_host_call

    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    import record_pwsh

    # Each guest case starts a child pwsh; two of them cover the guest's shapes (streams, the
    # remoting error record) and keep this test's time modest. The fixtures hold all of them.
    cases = {k: v for k, v in record_pwsh.CASES.items() if not k.startswith("guest_") or k in ("guest_streams", "guest_errors")}
    with trio.fail_after(60):
        messages = await record_pwsh.record(pwsh_path, cases)
    checked = 0
    for message in messages:
        kind = PSRPMessageType[message["type"]]
        clixml = message["clixml"]
        obj = psrpcore.types.deserialize(ElementTree.fromstring(clixml), cipher=psrpcore.PSRemotingCrypto())
        event = psrpcore.PSRPEvent.create(kind, obj, uuid.uuid4(), uuid.uuid4())
        if kind is PSRPMessageType.PipelineHostCall:
            line = fast_host_line(clixml.encode("utf-8"))
            if line is not None:
                assert record_from_host_call(line[0], [line[1]]) == record_from_host_call(
                    event.method_identifier, event.method_parameters
                )
            continue
        slow = record_from_event(event)
        if slow is None:
            continue
        assert fast_decode(kind, clixml.encode("utf-8")) == slow, message["case"]
        checked += 1
    assert {m["case"] for m in messages} == set(cases)
    assert checked >= 25


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Write-Verbose ('x' * 300) -Verbose", [("verbose", "x" * 300)]),  # wider than the buffer
        ("Write-Warning \"multi`nline\"", [("warning", "multi\nline")]),
        ("Write-Verbose \"cr`r`nlf <&>\" -Verbose", [("verbose", "cr\r\nlf <&>")]),
        ("Write-Host 'nn' -NoNewline; Write-Host 'nn'", [("information", "nn"), ("information", "nn")]),
        ("Write-Verbose 'same' -Verbose; $Host.UI.WriteVerboseLine('same')", [("verbose", "same"), ("verbose", "same")]),
        ("Write-Information 'i' -InformationAction Continue", [("information", "i")]),
    ],
)
async def test_echo_edge_cases_arrive_once(shared: SharedPool, text: str, expected: list[tuple[str, str]]) -> None:
    from vmbusops.records import display_text

    records = await shared.run(lambda pool: pool.run(script(text)))
    assert [(r.stream.value, display_text(r)) for r in records[:-1]] == expected


@pytest.mark.parametrize("by_id", [False, True])
async def test_the_guest_invoker_binds_as_a_templated_script_command(shared: SharedPool, by_id: bool) -> None:
    # The product's main script command, with every parameter it takes, sent twice (template
    # built, then filled): PowerShell's binder accepts it and it gets as far as Invoke-Command
    # -VMName, which on Linux has no Hyper-V module. A binding error would name a parameter.
    from vmbusops.credentials import GuestCredential, Secret
    from vmbusops.guestops.invoker import invoker_command

    async def body(pool: RunspacePool) -> list[list[Record]]:
        runs = []
        for run in range(2):
            command = invoker_command(
                vm="web01",
                vm_id="6e0c2a3b-1111-2222-3333-444455556666" if by_id else None,
                steps=[(0, "Write-Output $args[0]")],
                credential=GuestCredential("admin", Secret("not-a-real-password")),
                arguments=[f"arg{run}", 7],
                run_id=f"run{run}",
            )
            runs.append(await pool.run([[command]]))
        return runs

    for records in await shared.run(body):
        errors = [r for r in records if isinstance(r, ErrorRecord)]
        assert [(e.fqid, e.activity) for e in errors] == [
            ("HyperVModuleNotAvailable,Microsoft.PowerShell.Commands.InvokeCommandCommand", "Invoke-Command")
        ], errors
