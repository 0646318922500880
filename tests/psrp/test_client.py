"""The real PSRP client through a real child process, against the simulator.

Nothing here is mocked: each test starts ``python -m vmbusops.sim`` as a child, speaks OutOfProc
PSRP to it over pipes, and checks what an operator would see.
"""

from __future__ import annotations

import base64
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import trio

from vmbusops.errors import FramingError, HostProcessExitedError, PSRPError, TransportError
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.host import HyperVHost
from vmbusops.psrp.client import Command, open_runspace_pool
from vmbusops.psrp.framing import PacketKind, PacketReader
from vmbusops.psrp.transport import ProcessTransport, Transport, simulator_argv
from vmbusops.records import (
    OutputRecord,
    PipelineState,
    PipelineStateRecord,
    PSObjectValue,
    VerboseRecord,
)


async def test_structured_commands_several_statements_one_pipeline(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_host("sim", config=lab.config) as host:
        records = await host.pool.run(
            [
                [Command("Get-VM", {"Name": "web01"})],
                [Command("Get-VMIntegrationService", {"VMName": "app01", "Name": "Guest Service Interface"})],
            ]
        )
    outputs = [r.value for r in records if isinstance(r, OutputRecord)]
    assert len(outputs) == 2
    vm, service = outputs
    assert isinstance(vm, PSObjectValue) and vm.get("Name") == "web01" and vm.get("State") == "Running"
    assert isinstance(service, PSObjectValue) and service.get("Enabled") is False
    assert records[-1] == PipelineStateRecord(state=PipelineState.COMPLETED)


def test_command_names_cannot_smuggle_script() -> None:
    for bad in ("Get-VM; Remove-VM x", "Get-VM | Stop-VM", "$(evil)", "", "Get VM"):
        with pytest.raises(ValueError, match="not a command name"):
            Command(bad)


async def test_records_arrive_live_before_the_pipeline_ends(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    script = "Write-Output 'first'; Start-Sleep -Milliseconds 800; Write-Output 'second'"
    arrivals: list[tuple[float, object]] = []
    async with open_host("sim", config=lab.config) as host:
        async with host.invoke_in_guest("web01", script, lab.credential()) as inv:
            async for rec in inv:
                arrivals.append((trio.current_time(), rec.record))
    first_at = next(t for t, r in arrivals if isinstance(r, OutputRecord) and r.value == "first")
    end_at = next(t for t, r in arrivals if isinstance(r, PipelineStateRecord))
    assert end_at - first_at >= 0.6, "the first record was held back until the pipeline ended"


async def test_many_pipelines_run_at_once_on_one_pool(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    firsts: list[float] = []
    ends: list[float] = []
    script = "Write-Output 'started'; Start-Sleep -Milliseconds 600; Write-Output 'done'"

    async def one(host: object, vm: str) -> None:
        async with host.invoke_in_guest(vm, script, lab.credential(vm)) as inv:  # type: ignore[attr-defined]
            async for rec in inv:
                if isinstance(rec.record, OutputRecord) and rec.record.value == "started":
                    firsts.append(trio.current_time())
                if isinstance(rec.record, PipelineStateRecord):
                    assert rec.record.state is PipelineState.COMPLETED
                    ends.append(trio.current_time())

    async with open_host("sim", config=lab.config, max_runspaces=40) as host:
        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, host, ("web01", "web02")[i % 2])
    assert len(firsts) == len(ends) == 40
    # Every pipeline had started before any finished: they really ran concurrently.
    assert max(firsts) < min(ends)


async def test_leaving_a_pipeline_early_stops_the_guest_command(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    cred = lab.credential()
    script = (
        "foreach ($i in 1..2000) { Set-Content -Path \"C:\\stop-test\\$i.txt\" -Value 'x'; "
        "Write-Verbose \"wrote $i\" -Verbose; Start-Sleep -Milliseconds 20 }"
    )
    async with open_host("sim", config=lab.config) as host:
        await host.copy_to_guest("web01", __file__, "C:\\stop-test\\0.txt")
        async with host.invoke_in_guest("web01", script, cred) as inv:
            seen = 0
            async for rec in inv:
                if isinstance(rec.record, VerboseRecord):
                    seen += 1
                    if seen == 5:
                        break
        assert inv._pipe.final is not None and inv._pipe.final.state is PipelineState.STOPPED

        async def count_files() -> int:
            records, outcome = await host.run_in_guest("web01", "Get-ChildItem -Path 'C:\\stop-test'", cred)
            assert outcome.ok, outcome
            return sum(1 for r in records if isinstance(r.record, OutputRecord))

        after_stop = await count_files()
        await trio.sleep(0.5)
        assert await count_files() == after_stop, "the guest kept writing after the stop"
        assert after_stop < 50


async def test_a_timeout_is_a_cancel_scope_that_stops_the_pipeline(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_host("sim", config=lab.config) as host:
        start = trio.current_time()
        # The deadline is set once the pipeline runs, so a slow start cannot time out before it.
        with trio.CancelScope() as scope:
            async with host.invoke_in_guest("web01", "Start-Sleep -Seconds 60", lab.credential()) as inv:
                scope.deadline = trio.current_time() + 0.4
                async for _ in inv:
                    pass
        assert scope.cancelled_caught
        assert trio.current_time() - start < 10
        assert inv._pipe.final is not None and inv._pipe.final.state is PipelineState.STOPPED
        # The pool is healthy afterwards.
        records, outcome = await host.run_in_guest("web01", "Write-Output ok", lab.credential())
        assert outcome.ok
        assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["ok"]


async def test_a_dying_child_fails_every_waiter_and_nothing_hangs(make_lab: Callable[..., Any]) -> None:
    lab = make_lab(crash_on="Copy-VMFile")
    failures: list[BaseException] = []

    async def long_running(host: object) -> None:
        try:
            async with host.invoke_in_guest("web01", "Start-Sleep -Seconds 60", lab.credential()) as inv:  # type: ignore[attr-defined]
                async for _ in inv:
                    pass
        except TransportError as exc:
            failures.append(exc)

    with trio.fail_after(20):
        async with open_host("sim", config=lab.config) as host, trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(long_running, host)
            await trio.sleep(0.3)
            with pytest.raises(HostProcessExitedError, match="closed its output") as info:
                await host.copy_to_guest("web01", __file__, "C:\\x.py")
    assert len(failures) == 3
    assert all(isinstance(f, HostProcessExitedError) for f in failures)
    assert "exit code 70" in str(info.value)  # the simulator's EXIT_CRASH: it died, it did not just close


async def test_garbage_from_the_host_is_a_framing_error(make_lab: Callable[..., Any]) -> None:
    lab = make_lab(garbage_on="Get-VM")
    with trio.fail_after(20), pytest.raises(FramingError, match="not an OutOfProc packet"):
        async with open_host("sim", config=lab.config) as host:
            await host.list_vms()


async def test_a_message_that_is_not_xml_breaks_the_pool_in_one_error(make_lab: Callable[..., Any]) -> None:
    """A well-framed message the client cannot decode (the simulator's ``malformed_on``: a raw
    ESC in the CLIXML) breaks the session with one PSRPError for every waiter; nothing escapes
    the pool's reader and nothing hangs."""
    lab = make_lab(malformed_on="Get-VM")
    with trio.fail_after(20):
        async with open_host("sim", config=lab.config) as host:
            with pytest.raises(PSRPError, match="sent a message this client cannot read") as info:
                await host.list_vms()
            assert "ParseError" in str(info.value) and info.value.hint
            with pytest.raises(PSRPError, match="cannot read"):
                await host.run_in_guest("web01", "Write-Output ok", lab.credential())


async def test_a_child_that_exits_at_once_is_reported_with_its_last_words() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('cannot load profile\\n'); sys.exit(3)"]

    async def connect(nursery: trio.Nursery) -> Transport:
        return await ProcessTransport.start(argv, nursery=nursery)

    with trio.fail_after(20), pytest.raises(HostProcessExitedError) as info:
        async with open_runspace_pool(connect):
            pass
    assert "exit code 3" in str(info.value)
    assert "cannot load profile" in str(info.value)


async def test_a_child_that_stopped_reading_is_reported_with_its_last_words_on_the_send_path() -> None:
    """A send to a child that closed its input says how the child ended, as a receive does."""
    script = (
        "import os, sys, time; os.close(0); os.close(1); sys.stderr.write('cannot load profile\\n');"
        " sys.stderr.flush(); time.sleep(0.3); sys.exit(3)"
    )
    async with trio.open_nursery() as nursery:
        transport = await ProcessTransport.start([sys.executable, "-c", script], nursery=nursery)
        with trio.fail_after(20):
            assert await transport.receive_some() == b""  # its output is closed, so its input is too
            with pytest.raises(HostProcessExitedError) as info:
                await transport.send_all(b"x" * 65536)
        await transport.aclose(graceful=False)
    assert "stopped reading its input" in str(info.value)
    assert "exit code 3" in str(info.value)
    assert "cannot load profile" in str(info.value)


async def test_a_child_that_never_answers_times_out_opening() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]

    async def connect(nursery: trio.Nursery) -> Transport:
        return await ProcessTransport.start(argv, nursery=nursery)

    with trio.fail_after(20), pytest.raises(TransportError, match="did not open a runspace pool"):
        async with open_runspace_pool(connect, open_timeout=0.5):
            pass


class RecordingTransport:
    """A real process transport that also keeps what the client wrote, to inspect the wire."""

    def __init__(self, inner: ProcessTransport) -> None:
        self.inner = inner
        self.sent = bytearray()

    async def send_all(self, data: bytes) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def receive_some(self) -> bytes:
        return await self.inner.receive_some()

    async def aclose(self, *, graceful: bool = True) -> None:
        await self.inner.aclose(graceful=graceful)

    def describe(self) -> str:
        return self.inner.describe()

    async def failure_detail(self) -> str:
        return await self.inner.failure_detail()


async def test_the_password_crosses_the_wire_only_as_an_encrypted_secure_string(
    make_lab: Callable[..., Any],
) -> None:
    lab = make_lab()
    cred = lab.credential()
    recorder: RecordingTransport | None = None

    async def connect(nursery: trio.Nursery) -> Transport:
        nonlocal recorder
        recorder = RecordingTransport(
            await ProcessTransport.start(simulator_argv(lab=str(lab.path)), nursery=nursery)
        )
        return recorder

    async with open_runspace_pool(connect) as pool:
        _, outcome = await HyperVHost(pool).run_in_guest("web01", "Write-Output 'in'", cred)
    assert outcome.ok, outcome
    assert recorder is not None
    reader = PacketReader()
    reader.feed(bytes(recorder.sent))
    wire = b"".join(p.data for p in reader if p.kind is PacketKind.DATA)
    secret = cred.password.reveal()
    for encoding in ("utf-8", "utf-16-le"):
        assert secret.encode(encoding) not in wire
        assert base64.b64encode(secret.encode(encoding)) not in wire
    assert b"<SS" in wire, "the credential was not sent as a SecureString"
    assert b"PublicKey" in wire, "no session key exchange happened"


async def test_every_pipeline_is_closed_on_the_wire(make_lab: Callable[..., Any]) -> None:
    # A finished pipeline's Close is not awaited: it rides with the next write (usually the next
    # pipeline's Command). It must still go out, once per pipeline, and the pool's Close last.
    lab = make_lab()
    recorder: RecordingTransport | None = None

    async def connect(nursery: trio.Nursery) -> Transport:
        nonlocal recorder
        recorder = RecordingTransport(await ProcessTransport.start(simulator_argv(lab=str(lab.path)), nursery=nursery))
        return recorder

    ids = []
    async with open_runspace_pool(connect) as pool:
        for _ in range(20):
            async with pool.invoke([[Command("Get-VM", {"Name": "web01"})]]) as pipe:
                ids.append(pipe.id)
                await pipe.collect()
    assert recorder is not None
    reader = PacketReader()
    reader.feed(bytes(recorder.sent))
    packets = list(reader)
    closes = [p.guid for p in packets if p.kind is PacketKind.CLOSE]
    assert closes[:-1] == ids
    assert closes[-1] == uuid.UUID(int=0)
    assert packets[-1].kind is PacketKind.CLOSE


async def test_take_gives_what_has_arrived_in_order_a_packet_at_a_time(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    script = '1..300 | ForEach-Object { Write-Output "line $_" }'
    takes: list[list[Any]] = []
    async with open_host("sim", config=lab.config) as host:
        async with host.invoke_in_guest("web01", script, lab.credential()) as inv:
            while taken := await inv.take():
                takes.append([r for t in taken for r in t.records])
            assert await inv.take() == []  # and stays ended
    records = [r for t in takes for r in t]
    assert [r.value for r in records[:-1]] == [f"line {i}" for i in range(1, 301)]
    assert records[-1] == PipelineStateRecord(state=PipelineState.COMPLETED, exit_code=0)
    assert len(takes) < len(records)  # many records to a take: a packet carries many
