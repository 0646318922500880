"""PSRP over OutOfProc framing, in memory: acks, ordering, stop, close, concurrency, batching."""

from __future__ import annotations

import psrpcore
import trio
from psrpcore.types import PSInvocationState
from sim_testclient import PSRPTestClient, in_memory_client, run_in_guest, start_in_guest

from vmbusops.psrp.framing import POOL_GUID, PacketKind
from vmbusops.sim.lab import Lab
from vmbusops.sim.state import HostStore


def _index(client: PSRPTestClient, kind: PacketKind, guid: object) -> int:
    return next(i for i, p in enumerate(client.wire) if p.kind is kind and p.guid == guid)


async def test_pool_open_acks_data_before_negotiation(client: PSRPTestClient) -> None:
    first = client.wire[0]
    assert first.kind is PacketKind.DATA_ACK
    assert first.guid == POOL_GUID
    assert client.pool.state == psrpcore.types.RunspacePoolState.Opened
    # The key exchange worked: the client holds a session key from our server.
    assert any(isinstance(e, psrpcore.EncryptedSessionKeyEvent) for e in client.events[None])


async def test_pipeline_data_ack_comes_before_records(client: PSRPTestClient, lab: Lab) -> None:
    ps = await start_in_guest(client, lab, "web01", "Write-Verbose a -Verbose; 1")
    result = await client.wait(ps)
    pid = ps.pipeline_id
    assert _index(client, PacketKind.COMMAND_ACK, pid) < _index(client, PacketKind.DATA_ACK, pid)
    assert _index(client, PacketKind.DATA_ACK, pid) < _index(client, PacketKind.DATA, pid)
    assert result.verbose == ["a"]
    assert result.output == [1]
    # Only the final state is sent, like PowerShell (no Running state message).
    assert [e.state for e in result.of(psrpcore.PipelineStateEvent)] == [PSInvocationState.Completed]
    await client.close_pipeline(ps)
    assert client.acked(PacketKind.CLOSE, pid) == 1


async def test_signal_stops_a_running_pipeline(client: PSRPTestClient, lab: Lab) -> None:
    ps = await start_in_guest(
        client, lab, "web01", "$VerbosePreference = 'Continue'; Write-Verbose before; Start-Sleep -Seconds 30; Write-Verbose after"
    )
    await client.wait_for(lambda: client.result(ps).verbose == ["before"])
    with trio.fail_after(5):
        await client.stop(ps)
        result = await client.wait(ps)
    assert result.state == PSInvocationState.Stopped
    assert result.verbose == ["before"]
    assert str(result.state_event.reason.FullyQualifiedErrorId) == "PipelineStopped"
    assert client.acked(PacketKind.SIGNAL, ps.pipeline_id) == 1


async def test_close_of_running_pipeline_sends_no_state(client: PSRPTestClient, lab: Lab) -> None:
    ps = await start_in_guest(client, lab, "web01", "Start-Sleep 30")
    with trio.fail_after(5):
        await client.close_pipeline(ps)
    # The server stays usable after the close.
    result = await client.run("Get-VM", Name="web01")
    assert [o.Name for o in result.output] == ["web01"]
    assert not client.finished(ps)


async def test_pool_close_acks_and_server_returns(store: HostStore) -> None:
    async with in_memory_client(store) as client:
        await client.close()
        assert client.wire[-1].kind is PacketKind.CLOSE_ACK
        with trio.fail_after(5):
            await client.server_done.wait()


async def _timed_sleepers(store: HostStore, lab: Lab, max_runspaces: int, count: int) -> float:
    async with in_memory_client(store, max_runspaces=max_runspaces) as client:
        start = trio.current_time()
        pipes = [
            await start_in_guest(client, lab, "web01", "Start-Sleep -Milliseconds 300; 'done'")
            for _ in range(count)
        ]
        results = [await client.wait(ps) for ps in pipes]
        assert all(r.output == ["done"] for r in results)
        return trio.current_time() - start


async def test_pipelines_run_concurrently_up_to_max_runspaces(store: HostStore, lab: Lab) -> None:
    parallel = await _timed_sleepers(store, lab, max_runspaces=4, count=4)
    serial = await _timed_sleepers(store, lab, max_runspaces=1, count=4)
    assert parallel < 0.9
    assert serial >= 1.2


async def test_many_records_are_batched_into_few_packets(client: PSRPTestClient, lab: Lab) -> None:
    ps = await start_in_guest(client, lab, "web01", '1..3000 | % { Write-Verbose "line $_" -Verbose }')
    result = await client.wait(ps)
    assert result.verbose == [f"line {i}" for i in range(1, 3001)]
    data_packets = [p for p in client.wire if p.kind is PacketKind.DATA and p.guid == ps.pipeline_id]
    assert len(data_packets) < 300


async def test_large_output_is_fragmented_and_reassembled(
    client: PSRPTestClient, lab: Lab, store: HostStore
) -> None:
    root = store.guest_root(lab.vms[0])
    big = "y" * 200_000
    (root / "C" / "big.txt").write_text(big, encoding="utf-8")
    result = await run_in_guest(client, lab, "web01", "Get-Content C:\\big.txt -Raw")
    assert result.output == [big]


async def test_host_refuses_scripts_and_unknown_commands(client: PSRPTestClient) -> None:
    script = await client.run("Get-VM | Stop-VM", script=True)
    assert script.state == PSInvocationState.Failed
    assert "does not support this script command" in str(script.state_event.reason.Exception.Message)

    unknown = await client.run("Remove-VM", Name="web01")
    assert unknown.state == PSInvocationState.Failed
    reason = unknown.state_event.reason
    assert str(reason.FullyQualifiedErrorId) == "CommandNotFoundException"
    assert str(reason.Exception.Message).startswith(
        "The term 'Remove-VM' is not recognized as the name of a cmdlet, function, script file, or operable program."
    )
    assert reason.CategoryInfo.Category == psrpcore.types.ErrorCategory.ObjectNotFound


async def test_parameter_binding_errors_fail_the_pipeline(client: PSRPTestClient) -> None:
    bad = await client.run("Get-VM", Nmae="web01")
    assert bad.state == PSInvocationState.Failed
    assert str(bad.state_event.reason.FullyQualifiedErrorId) == (
        "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.GetVM"
    )
    assert str(bad.state_event.reason.Exception.Message) == (
        "A parameter cannot be found that matches parameter name 'Nmae'."
    )
    missing = await client.run("Copy-VMFile", Name="web01", FileSource="Host")
    assert missing.state == PSInvocationState.Failed
    assert str(missing.state_event.reason.Exception.Message) == (
        "Cannot process command because of one or more missing mandatory parameters: SourcePath DestinationPath."
    )
    # Unique prefixes bind, as in PowerShell.
    ok = await client.run("Get-VM", Na="db01")
    assert [o.Name for o in ok.output] == ["db01"]


async def test_runspace_availability_messages_are_answered(client: PSRPTestClient) -> None:
    # An opened pool asks the server and returns the request's call id.
    assert isinstance(client.pool.set_max_runspaces(3), int)
    await client.flush()
    await client.wait_for(
        lambda: any(isinstance(e, psrpcore.SetRunspaceAvailabilityEvent) for e in client.events.get(None, []))
    )
    assert client.pool.max_runspaces == 3


async def test_pool_close_reports_closed_state_before_the_ack(store: HostStore) -> None:
    async with in_memory_client(store) as client:
        await client.close()
        assert client.pool.state == psrpcore.types.RunspacePoolState.Closed
        states = [e.state for e in client.events[None] if isinstance(e, psrpcore.RunspacePoolStateEvent)]
        assert states[-1] == psrpcore.types.RunspacePoolState.Closed
