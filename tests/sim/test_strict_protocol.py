"""Where the simulator is as strict as PowerShell's server: dispatch order and the host UI rule."""

from __future__ import annotations

import psrpcore
from psrpcore.types import PSInvocationState
from sim_testclient import PSRPTestClient, in_memory_client, run_in_guest

from vmbusops.psrp.framing import DataStream, Packet, PacketKind
from vmbusops.sim.lab import Lab
from vmbusops.sim.state import HostStore


async def test_data_sent_before_its_command_is_acked_and_dropped(client: PSRPTestClient, lab: Lab) -> None:
    ps = psrpcore.ClientPowerShell(client.pool)
    ps.add_command("Get-VM")
    ps.start()
    payload = client.pool.data_to_send()
    assert payload is not None and payload.pipeline_id == ps.pipeline_id
    pid = ps.pipeline_id
    # The client's bug: the CreatePipeline Data goes out before the pipeline's Command.
    await client.send_packet(
        Packet(kind=PacketKind.DATA, guid=pid, data=payload.data, stream=DataStream.DEFAULT)
    )
    await client.wait_for(lambda: client.acked(PacketKind.DATA, pid) == 1)
    await client.send_packet(Packet(kind=PacketKind.COMMAND, guid=pid))
    await client.wait_for(lambda: client.acked(PacketKind.COMMAND, pid) == 1)
    # The server is still serving: a well-ordered pipeline runs...
    result = await client.run("Get-VM", Name="web01")
    assert result.state == PSInvocationState.Completed
    assert [str(vm.Name) for vm in result.output] == ["web01"]
    # ...while the dropped one never started: no record, no state, only the two acks.
    assert not client.finished(ps)
    assert [p.kind for p in client.wire if p.guid == pid] == [PacketKind.DATA_ACK, PacketKind.COMMAND_ACK]
    assert not any(p.guid == pid for p in client.wire if p.kind is PacketKind.DATA)


async def test_guest_verbose_warning_debug_need_a_host_ui(store: HostStore, lab: Lab) -> None:
    script = (
        "Write-Output out; Write-Verbose verb -Verbose; Write-Warning warn; Write-Debug dbg -Debug; "
        "Write-Information info; Write-Error err"
    )
    results = {}
    for host_ui in (True, False):
        async with in_memory_client(store, host_ui=host_ui) as client:
            result = await run_in_guest(client, lab, "web01", script)
            assert result.state == PSInvocationState.Completed
            results[host_ui] = result
    with_ui, without_ui = results[True], results[False]
    assert with_ui.verbose == ["verb"]
    assert [str(e.record.Message) for e in with_ui.of(psrpcore.WarningRecordEvent)] == ["warn"]
    assert [str(e.record.Message) for e in with_ui.of(psrpcore.DebugRecordEvent)] == ["dbg"]
    # Without a host UI PowerShell drops them; the other streams pass either way.
    assert without_ui.verbose == []
    assert without_ui.of(psrpcore.WarningRecordEvent) == []
    assert without_ui.of(psrpcore.DebugRecordEvent) == []
    for result in (with_ui, without_ui):
        assert result.output == ["out"]
        assert result.error_messages == ["err"]
        assert [str(e.record.MessageData) for e in result.of(psrpcore.InformationRecordEvent)] == [
            "vmbusops-step begin 0",
            "info",
            "vmbusops-step end 0 exit=0 errors=1",
        ]


async def test_host_cmdlet_warnings_pass_without_a_host_ui(store: HostStore) -> None:
    # The rule is about a remote session's records: the host's own cmdlets still warn.
    async with in_memory_client(store, host_ui=False) as client:
        result = await client.run("Start-VM", Name="web01")
    assert [str(e.record.Message) for e in result.of(psrpcore.WarningRecordEvent)] == [
        "The virtual machine 'web01' is already in the specified state."
    ]


async def test_with_a_host_ui_each_record_is_followed_by_its_host_call(store: HostStore, lab: Lab) -> None:
    script = (
        "Write-Verbose verb -Verbose; Write-Warning warn; Write-Debug dbg -Debug; "
        "Write-Progress -Activity act -Status st; 'out'"
    )
    kinds: dict[bool, list[str]] = {}
    for host_ui in (True, False):
        async with in_memory_client(store, host_ui=host_ui) as client:
            result = await run_in_guest(client, lab, "web01", script)
        kinds[host_ui] = [
            f"call {e.method_identifier.name} {e.method_parameters[0]}"
            if isinstance(e, psrpcore.PipelineHostCallEvent)
            else type(e).__name__
            for e in result.events
            if not isinstance(e, psrpcore.InformationRecordEvent | psrpcore.PipelineStateEvent)
        ]
        calls = result.of(psrpcore.PipelineHostCallEvent)
        assert all(int(c.ci) == -100 for c in calls)  # void calls: nothing to answer
    # As pwsh 7.6.9 sends them (measured): the record, then the matching host call.
    assert kinds[True] == [
        "VerboseRecordEvent",
        "call WriteVerboseLine verb",
        "WarningRecordEvent",
        "call WriteWarningLine warn",
        "DebugRecordEvent",
        "call WriteDebugLine dbg",
        "ProgressRecordEvent",
        "call WriteProgress 0",
        "PipelineOutputEvent",
    ]
    assert kinds[False] == ["ProgressRecordEvent", "PipelineOutputEvent"]
