"""The simulated Hyper-V host in the test's own process: no child process, same bytes.

``open_host("sim")`` starts ``python -m vmbusops.sim`` and speaks OutOfProc PSRP over its pipes.
:func:`open_sim_host` runs the same simulator server (``PSRPServer`` over ``HostStore`` and the
lab) in this trio run instead, on one end of an in-memory stream; the product's runspace pool and
host operations run on the other end, unchanged. Only what a process adds is missing: its start-up
(an interpreter and its imports, about a second here), its stderr, and the crash chaos
(``crash_on``), which tests of the process itself cover. Tests whose subject is the engine, a
step or a host operation use this; tests whose subject is the process keep the real one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
import trio.testing

from vmbusops.errors import HostProcessExitedError
from vmbusops.guestops.host import HyperVHost
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.transport import Transport
from vmbusops.sim import default_state_dir
from vmbusops.sim.cluster import serving
from vmbusops.sim.hyperv import HyperVHost as SimulatedHost
from vmbusops.sim.hyperv import SessionCount
from vmbusops.sim.lab import load_lab
from vmbusops.sim.server import PSRPServer
from vmbusops.sim.state import HostStore


class MemoryTransport:
    """The pool's end of an in-memory stream whose other end the simulator serves."""

    def __init__(self, stream: trio.StapledStream[trio.testing.MemorySendStream, trio.testing.MemoryReceiveStream], served: trio.Event) -> None:
        self._stream = stream
        self._served = served
        # As a process's stdin: concurrent pipelines take turns writing whole packets.
        self._send_lock = trio.Lock()

    def describe(self) -> str:
        return "the in-memory simulator"

    async def failure_detail(self) -> str:
        return ""

    async def send_all(self, data: bytes) -> None:
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise HostProcessExitedError(f"{self.describe()} stopped reading its input") from exc

    async def receive_some(self) -> bytes:
        try:
            return bytes(await self._stream.receive_some(256 * 1024))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def aclose(self, *, graceful: bool = True) -> None:
        """As a process's stdin closing: the server sees the end of its input and returns."""
        with trio.CancelScope(shield=True):
            await self._stream.send_stream.aclose()
            with trio.move_on_after(5 if graceful else 0.2):
                await self._served.wait()
            await self._stream.receive_stream.aclose()


@asynccontextmanager
async def open_sim_host(
    lab: Path | str | None,
    *,
    state_dir: Path | None = None,
    max_runspaces: int = 256,
    sessions: SessionCount | None = None,
    identity: str | None = None,
) -> AsyncIterator[HyperVHost]:
    """The host operations on the simulator, as ``open_host("sim")`` gives them, in this process.

    The state directory defaults to the one the simulator process would use ($VMBUSOPS_HOME/sim),
    so a test may mix this with a real simulator process over the same lab and state. The
    simulator counts its open PowerShell Direct sessions in ``sessions`` when one is given;
    ``identity`` serves one host of a lab with ``[[hosts]]``, as ``sim:HOST`` does (a failed host's
    process would exit: here its commands fail instead).
    """
    sim_lab = load_lab(lab)
    store = HostStore(sim_lab, state_dir or default_state_dir())

    async def connect(nursery: trio.Nursery) -> Transport:
        client_end, server_end = trio.testing.memory_stream_pair()
        served = trio.Event()
        serves = None if identity is None else serving(sim_lab, identity).name
        server = PSRPServer(SimulatedHost(sim_lab, store, sessions=sessions, identity=serves), server_end)

        async def serve() -> None:
            try:
                await server.serve(server_end)
            finally:
                # The process would exit here, and its stdout end: the pool reads EOF.
                with trio.CancelScope(shield=True):
                    await server_end.send_stream.aclose()
                served.set()

        nursery.start_soon(serve)
        return MemoryTransport(client_end, served)

    try:
        async with open_runspace_pool(connect, max_runspaces=max_runspaces) as pool:
            yield HyperVHost(pool)
    finally:
        store.close()
