"""Test helpers: a minimal PSRP client made only of our framing and psrpcore's client classes.

The product's own client lives elsewhere; these tests drive the simulator with an independent,
small client so a bug shared by both cannot hide. The same client talks to the server in memory
(trio memory streams, no process) and to a real ``python -m vmbusops.sim`` child process.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import psrpcore
import pytest
import trio
import trio.testing
from psrpcore.types import HostInfo, PSCredential, PSInvocationState, PSSecureString, RunspacePoolState
from tests.builders import VM, lab_text

from vmbusops.errors import FramingError
from vmbusops.psrp.framing import POOL_GUID, DataStream, Packet, PacketKind, PacketReader, encode
from vmbusops.sim.hyperv import HyperVHost
from vmbusops.sim.lab import Lab, lab_password, load_lab, parse_lab
from vmbusops.sim.server import PSRPServer
from vmbusops.sim.state import HostStore

TEST_LAB = lab_text(
    [
        VM("web01", more={
            "services": [
                {"name": "W3SVC", "display_name": "World Wide Web Publishing Service", "status": "Running"},
                {"name": "Spooler", "display_name": "Print Spooler", "status": "Stopped"},
            ],
            "processes": [{"name": "w3wp", "id": 4120}],
            "hotfixes": [{"id": "KB5034439", "description": "Security Update", "installed_on": "2024-01-09"}],
            "files": {"C:\\inetpub\\wwwroot\\index.html": "hello from web01\n"},
        }),
        VM("db01", password="Explicit-Pa55", latency_ms=50),
        VM("legacy01", state="Off", guest_services=False),
        VM("app01", guest_services=False),
        VM("flaky01", faults={"session_drop_after_records": 5}),
    ],
    boot_seconds=0.3,
    password_seed="test-seed",
)  # fmt: skip


@dataclass
class PipelineResult:
    events: list[Any] = field(default_factory=list)

    @property
    def state_event(self) -> psrpcore.PipelineStateEvent:
        ev = self.events[-1]
        assert isinstance(ev, psrpcore.PipelineStateEvent)
        return ev

    @property
    def state(self) -> PSInvocationState:
        return self.state_event.state

    def of(self, cls: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls)]

    @property
    def output(self) -> list[Any]:
        return [e.data for e in self.of(psrpcore.PipelineOutputEvent)]

    @property
    def errors(self) -> list[Any]:
        return [e.record for e in self.of(psrpcore.ErrorRecordEvent)]

    @property
    def error_messages(self) -> list[str]:
        return [str(r.Exception.Message) for r in self.errors]

    @property
    def error_ids(self) -> list[str]:
        return [str(r.FullyQualifiedErrorId) for r in self.errors]

    @property
    def verbose(self) -> list[str]:
        return [str(e.record.Message) for e in self.of(psrpcore.VerboseRecordEvent)]


class PSRPTestClient:
    """psrpcore's ClientRunspacePool over OutOfProc packets on trio streams."""

    def __init__(
        self,
        send: trio.abc.SendStream,
        receive: trio.abc.ReceiveStream,
        *,
        max_runspaces: int = 8,
        host_ui: bool = True,
    ):
        self.send_stream = send
        self.receive_stream = receive
        # A guest's verbose, warning and debug records reach only a client whose pool declares a
        # host with a UI; most tests want them, so the client declares one unless told not to.
        host = HostInfo(IsHostNull=False, IsHostUINull=False, IsHostRawUINull=True) if host_ui else None
        self.pool = psrpcore.ClientRunspacePool(min_runspaces=1, max_runspaces=max_runspaces, host=host)
        self.reader = PacketReader()
        self.wire: list[Packet] = []  # every packet received, in order
        self.events: dict[uuid.UUID | None, list[Any]] = {}
        self.eof = False
        self.reader_error: FramingError | None = None  # what the framing parser rejected, if anything
        self.server_done = trio.Event()  # set when an in-memory server's serve() returned
        self._changed = trio.Event()

    async def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        while not condition():
            if self.eof:
                raise AssertionError("the server's output ended")
            await self._changed.wait()

    async def wait_eof(self) -> None:
        while not self.eof:
            await self._changed.wait()

    async def receive_loop(self) -> None:
        while True:
            data = await self.receive_stream.receive_some(65536)
            if not data:
                self.reader.feed_eof()
                self.eof = True
                await self._notify()
                return
            try:
                self.reader.feed(data)
            except FramingError as exc:
                # Packets parsed before the bad line still count; then the stream is over.
                self.reader_error = exc
            for packet in self.reader:
                self.wire.append(packet)
                if packet.kind is PacketKind.DATA:
                    stream = (
                        psrpcore.StreamType.prompt_response
                        if packet.stream is DataStream.PROMPT_RESPONSE
                        else psrpcore.StreamType.default
                    )
                    self.pool.receive_data(psrpcore.PSRPPayload(packet.data, stream, packet.pipeline_id))
                    while (event := self.pool.next_event()) is not None:
                        self.events.setdefault(event.pipeline_id, []).append(event)
            if self.reader_error is not None:
                self.eof = True
                await self._notify()
                return
            await self._notify()

    async def send_packet(self, packet: Packet) -> None:
        await self.send_stream.send_all(encode(packet))

    def acked(self, kind: PacketKind, guid: uuid.UUID) -> int:
        return sum(1 for p in self.wire if p.kind is kind.ack and p.guid == guid)

    async def flush(self) -> None:
        while (payload := self.pool.data_to_send()) is not None:
            guid = payload.pipeline_id or POOL_GUID
            before = self.acked(PacketKind.DATA, guid)
            stream = (
                DataStream.PROMPT_RESPONSE
                if payload.stream_type is psrpcore.StreamType.prompt_response
                else DataStream.DEFAULT
            )
            await self.send_packet(Packet(kind=PacketKind.DATA, guid=guid, data=payload.data, stream=stream))
            await self.wait_for(lambda guid=guid, before=before: self.acked(PacketKind.DATA, guid) > before)

    async def open(self, *, exchange_key: bool = True) -> None:
        self.pool.open()
        await self.flush()
        await self.wait_for(lambda: self.pool.state == RunspacePoolState.Opened)
        if exchange_key:
            self.pool.exchange_key()
            await self.flush()
            await self.wait_for(
                lambda: any(
                    isinstance(e, psrpcore.EncryptedSessionKeyEvent) for e in self.events.get(None, [])
                )
            )

    async def start(self, command: str, *, script: bool = False, **params: Any) -> psrpcore.ClientPowerShell:
        ps = psrpcore.ClientPowerShell(self.pool)
        if script:
            ps.add_script(command)
        else:
            ps.add_command(command)
        for name, value in params.items():
            ps.add_parameter(name, value)
        ps.start()
        pid = ps.pipeline_id
        await self.send_packet(Packet(kind=PacketKind.COMMAND, guid=pid))
        await self.wait_for(lambda: self.acked(PacketKind.COMMAND, pid) > 0)
        await self.flush()
        return ps

    def result(self, ps: psrpcore.ClientPowerShell) -> PipelineResult:
        return PipelineResult(list(self.events.get(ps.pipeline_id, [])))

    def finished(self, ps: psrpcore.ClientPowerShell) -> bool:
        return any(isinstance(e, psrpcore.PipelineStateEvent) for e in self.events.get(ps.pipeline_id, []))

    async def wait(self, ps: psrpcore.ClientPowerShell) -> PipelineResult:
        await self.wait_for(lambda: self.finished(ps))
        return self.result(ps)

    async def close_pipeline(self, ps: psrpcore.ClientPowerShell) -> None:
        if ps.state == PSInvocationState.Running:
            # psrpcore's client refuses to close a running pipeline; mark it stopping first.
            ps.begin_stop()
        ps.close()
        await self.send_packet(Packet(kind=PacketKind.CLOSE, guid=ps.pipeline_id))
        await self.wait_for(lambda: self.acked(PacketKind.CLOSE, ps.pipeline_id) > 0)

    async def run(self, command: str, *, script: bool = False, **params: Any) -> PipelineResult:
        ps = await self.start(command, script=script, **params)
        result = await self.wait(ps)
        await self.close_pipeline(ps)
        return result

    async def stop(self, ps: psrpcore.ClientPowerShell) -> None:
        ps.begin_stop()
        await self.send_packet(Packet(kind=PacketKind.SIGNAL, guid=ps.pipeline_id))
        await self.wait_for(lambda: self.acked(PacketKind.SIGNAL, ps.pipeline_id) > 0)

    async def close(self) -> None:
        await self.send_packet(Packet(kind=PacketKind.CLOSE, guid=POOL_GUID))
        await self.wait_for(lambda: self.acked(PacketKind.CLOSE, POOL_GUID) > 0)


#: vmbusops' guest invoker, read as the agent reads it (package data), sent as a script command.
INVOKER_SCRIPT = (
    resources.files("vmbusops")
    .joinpath("guestops", "powershell", "Invoke-VmbusOpsGuest.ps1")
    .read_text(encoding="utf-8")
)


def invoker_params(
    lab: Lab,
    vm: str,
    *steps: str,
    indices: list[int] | None = None,
    run_id: str | None = None,
    arguments: list[Any] | None = None,
    credential: Any = None,
    vm_id: str | None = None,
) -> dict[str, Any]:
    """Parameters for the guest invoker that run ``steps`` in ``vm`` (as its administrator by default).

    Each call gets its own RunId unless given one, as the agent's do: step files are named by it.
    """
    params: dict[str, Any] = {
        "VMName": vm,
        "Credential": admin(lab, vm) if credential is None else credential,
        "Script": list(steps),
        "StepIndex": indices if indices is not None else list(range(len(steps))),
        "RunId": run_id or uuid.uuid4().hex,
    }
    if vm_id is not None:
        del params["VMName"]
        params["VMId"] = vm_id
    if arguments is not None:
        params["ArgumentList"] = arguments
    return params


async def run_in_guest(
    client: PSRPTestClient, lab: Lab, vm: str, *steps: str, **options: Any
) -> PipelineResult:
    """Run ``steps`` in ``vm`` through the guest invoker, as the agent does."""
    return await client.run(INVOKER_SCRIPT, script=True, **invoker_params(lab, vm, *steps, **options))


async def start_in_guest(
    client: PSRPTestClient, lab: Lab, vm: str, *steps: str, **options: Any
) -> psrpcore.ClientPowerShell:
    """Start ``steps`` in ``vm`` through the guest invoker; the caller waits for it."""
    return await client.start(INVOKER_SCRIPT, script=True, **invoker_params(lab, vm, *steps, **options))


def step_markers(result: PipelineResult) -> list[str]:
    return [
        str(e.record.MessageData)
        for e in result.of(psrpcore.InformationRecordEvent)
        if "vmbusops.step" in [str(t) for t in (e.record.Tags or [])]
    ]


def credential(user: str, password: str) -> PSCredential:
    return PSCredential(UserName=user, Password=PSSecureString(password))


@pytest.fixture
def lab() -> Lab:
    return parse_lab(TEST_LAB, source="<test lab>")


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab.toml"
    path.write_text(TEST_LAB, encoding="utf-8")
    return path


@pytest.fixture
def store(lab: Lab, tmp_path: Path) -> HostStore:
    return HostStore(lab, tmp_path / "state")


@asynccontextmanager
async def in_memory_client(
    store: HostStore, *, max_runspaces: int = 8, host_ui: bool = True
) -> AsyncIterator[PSRPTestClient]:
    """A server on one end of in-memory streams and an opened client on the other."""
    client_end, server_end = trio.testing.memory_stream_pair()
    server = PSRPServer(HyperVHost(store.lab, store), server_end)
    client = PSRPTestClient(client_end, client_end, max_runspaces=max_runspaces, host_ui=host_ui)

    async def serve() -> None:
        await server.serve(server_end)
        client.server_done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        nursery.start_soon(client.receive_loop)
        await client.open()
        yield client
        nursery.cancel_scope.cancel()


@pytest.fixture
async def client(store: HostStore) -> AsyncIterator[PSRPTestClient]:
    async with in_memory_client(store) as c:
        yield c


def admin(lab: Lab, vm: str) -> PSCredential:
    return credential("Administrator", lab_password(lab, vm))


@dataclass
class SimProcess:
    process: trio.Process
    client: PSRPTestClient
    stderr: bytearray


def sim_command(lab_file: Path | None, state_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "vmbusops.sim", "--state-dir", str(state_dir)]
    if lab_file is not None:
        cmd += ["--lab", str(lab_file)]
    return cmd


@asynccontextmanager
async def sim_process(
    lab_file: Path | None, state_dir: Path, *, env: dict[str, str] | None = None, open_pool: bool = True
) -> AsyncIterator[SimProcess]:
    """A real ``python -m vmbusops.sim`` child with our test client on its pipes."""
    full_env = {**os.environ, **(env or {})}
    async with trio.open_nursery() as nursery:
        process = await trio.lowlevel.open_process(
            sim_command(lab_file, state_dir),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        stderr = bytearray()

        async def drain_stderr() -> None:
            assert process.stderr is not None
            while chunk := await process.stderr.receive_some(4096):
                stderr.extend(chunk)

        client = PSRPTestClient(process.stdin, process.stdout)
        nursery.start_soon(client.receive_loop)
        nursery.start_soon(drain_stderr)
        if open_pool:
            await client.open()
        try:
            yield SimProcess(process, client, stderr)
        finally:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await process.stdin.aclose()
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
            nursery.cancel_scope.cancel()


__all__ = [
    "INVOKER_SCRIPT",
    "TEST_LAB",
    "PSRPTestClient",
    "admin",
    "credential",
    "in_memory_client",
    "invoker_params",
    "load_lab",
    "run_in_guest",
    "sim_process",
    "start_in_guest",
    "step_markers",
]
