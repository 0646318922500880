"""A PSRP runspace pool over an OutOfProc byte stream, driven by trio.

Theory of operation
-------------------
psrpcore's :class:`~psrpcore.ClientRunspacePool` is the protocol state machine; this module is
the thin I/O around it. One :class:`RunspacePool` owns one transport and runs two tasks in the
nursery it was opened in:

* the **reader** reads bytes, splits them into OutOfProc packets (:mod:`.framing`), feeds
  ``Data`` to psrpcore and routes every event: records to the pipeline they belong to, acks to
  whoever waits for them, pool state changes to the pool. It never waits for anything but the
  transport and a pipeline's bounded record buffer, so it can never deadlock on an ack.
* the **writer** sends what psrpcore has queued, keeping at most one ``Data`` packet in flight
  per target (the pool, each pipeline) until its ``DataAck`` arrives - PowerShell's own flow
  control, per command, so one pipeline's start never waits for another's ack.

``Command``, ``Signal`` and ``Close`` packets are sent by the caller that needs them, which then
waits for the matching ack (except a finished pipeline's ``Close``, whose ack carries nothing). If the
transport ends, or the peer writes garbage or a message that cannot be decoded, the pool becomes
*broken*: the error is stored once and every waiter - callers waiting for acks, pipelines waiting
for records, the pool waiting to open - wakes up and raises it. Nothing waits forever.

A pipeline is an async context manager that yields records as they arrive. Leaving it early -
``break``, an exception, a cancel scope expiring - stops the pipeline on the server with a PSRP
``Signal``, waits (bounded, shielded) for its final state, and closes it, so cancellation never
leaves a command running in a guest.

The receive path (:mod:`.receive`) decodes the common records on a fast path (:mod:`.decode`);
anything else goes through psrpcore's generic deserializer and is converted by
:func:`.convert.record_from_event`. Tests prove both give equal records. CreatePipeline
messages are built from templates where they can be (:mod:`.encode`).

The pool declares a host with a UI (:func:`.hostcalls.host_info`) and answers every host call
as the table in :mod:`.hostcalls` says.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import psrpcore
import trio
from psrpcore.types import PSInvocationState, PSRPMessageType, RunspacePoolState

from vmbusops.credentials import GuestCredential
from vmbusops.errors import (
    HostProcessExitedError,
    PSRPError,
    TransportError,
    VmbusOpsError,
)
from vmbusops.psrp.command import Command, Statement
from vmbusops.psrp.convert import record_from_event
from vmbusops.psrp.encode import CreatePipelineEncoder, add_statements
from vmbusops.psrp.framing import POOL_GUID, DataStream, Packet, PacketKind, PacketReader, encode
from vmbusops.psrp.hostcalls import (
    HostCallAction,
    action_of,
    host_info,
    record_from_host_call,
    refusal_error_record,
)
from vmbusops.psrp.pipeline import DEFAULT_STOP_TIMEOUT, Pipeline
from vmbusops.psrp.psrpcore_private import (
    ClientPipeline,
    TemplatedPipeline,
    has_queued_messages,
    queue_client_message,
)
from vmbusops.psrp.receive import ClientPool, HostLineEvent, RecordEvent
from vmbusops.psrp.transport import Transport
from vmbusops.records import ErrorRecord, PipelineState, PipelineStateRecord, Record

log = logging.getLogger(__name__)

FRAGMENT_SIZE = 32 * 1024
DEFAULT_RECORD_BUFFER = 1024


class RunspacePool:
    """One PSRP runspace pool on one transport. Use :func:`open_runspace_pool`."""

    def __init__(
        self,
        transport: Transport,
        nursery: trio.Nursery,
        *,
        max_runspaces: int,
        record_buffer: int = DEFAULT_RECORD_BUFFER,
    ) -> None:
        self._transport = transport
        # A transport that pays a round trip per packet (WinRM: one Send each) asks for larger ones.
        self._fragment_size: int = getattr(transport, "fragment_size", FRAGMENT_SIZE)
        self._nursery = nursery
        self._pool = ClientPool(min_runspaces=1, max_runspaces=max_runspaces, host=host_info())
        self._encoder = CreatePipelineEncoder(self._pool)
        self._reader = PacketReader()
        self._record_buffer = record_buffer
        self._pipelines: dict[uuid.UUID, Pipeline] = {}
        self._ack_waiters: dict[tuple[PacketKind, uuid.UUID], trio.Event] = {}
        self._control_lock = trio.Lock()
        self._deferred = bytearray()
        self._writer_wakeup = trio.Event()
        self._outbox: dict[uuid.UUID, deque[psrpcore.PSRPPayload]] = {}
        self._in_flight: set[uuid.UUID] = set()
        self._opened = trio.Event()
        self._session_key = trio.Event()
        self._state_changed = trio.Event()
        self._error: VmbusOpsError | None = None
        self._broken = trio.Event()
        self._closed = False
        self._reader_scope = trio.CancelScope(shield=True)
        self._writer_scope = trio.CancelScope(shield=True)
        self.description = transport.describe()

    # ------------------------------------------------------------------ state
    @property
    def broken(self) -> bool:
        return self._error is not None

    def _broken_error(self) -> VmbusOpsError:
        return self._error or TransportError(f"the runspace pool on {self.description} is closed")

    def _fail(self, exc: VmbusOpsError) -> None:
        """Break the pool once; wake every waiter so that each raises ``exc``."""
        if self._error is not None:
            return
        self._error = exc
        self._broken.set()
        log.debug("runspace pool on %s broken: %s", self.description, exc)
        for event in self._ack_waiters.values():
            event.set()
        self._ack_waiters.clear()
        for pipe in self._pipelines.values():
            pipe._break(exc)
        self._opened.set()
        self._session_key.set()
        self._writer_wakeup.set()
        self._notify_state()

    async def wait_broken(self) -> VmbusOpsError:
        """Wait until the pool breaks (the host died, the connection went away, the peer wrote
        garbage) and return the error every caller sees. The reader notices at once, whether or
        not a command is running; a pool closed on purpose never breaks."""
        await self._broken.wait()
        assert self._error is not None
        return self._error

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise self._error

    def _notify_state(self) -> None:
        self._state_changed.set()
        self._state_changed = trio.Event()

    # ------------------------------------------------------------------ reader
    async def _read_loop(self) -> None:
        # Shielded: when a caller is cancelled (Ctrl-C, a timeout), its pipelines must still be
        # able to send their stop signal and hear the ack. Only the pool's own close ends it.
        with self._reader_scope:
            await self._read_packets()

    async def _read_packets(self) -> None:
        try:
            while True:
                data = await self._transport.receive_some()
                if not data:
                    self._reader.feed_eof()
                    detail = await self._transport.failure_detail()
                    if not self._closed:
                        self._fail(
                            HostProcessExitedError(
                                f"the PowerShell host {self.description} closed its output"
                                + (f" ({detail})" if detail else ""),
                                hint="the host process died or was stopped; any command that was running "
                                "in a guest may not have finished",
                            )
                        )
                    return
                self._reader.feed(data)
                while (packet := self._reader.next_packet()) is not None:
                    await self._on_packet(packet)
        except VmbusOpsError as exc:
            self._fail(exc)
        except psrpcore.PSRPCoreError as exc:
            self._fail(PSRPError(f"the PowerShell host {self.description} sent an invalid PSRP message: {exc}"))
        except Exception as exc:  # whatever a message's decoding raises is the peer's doing
            # A well-framed message whose CLIXML cannot be read (not XML, a shape no decoder knows):
            # PowerShell's own client breaks the session on a message it cannot deserialize, and
            # so does this one, rather than let the error escape the reader and its nursery.
            log.debug("undecodable message from %s", self.description, exc_info=True)
            self._fail(
                PSRPError(
                    f"the PowerShell host {self.description} sent a message this client cannot read "
                    f"({type(exc).__name__}: {exc})",
                    hint="the session was closed; run it again, and if it recurs report it with the "
                    "agent's debug log",
                )
            )

    async def _on_packet(self, packet: Packet) -> None:
        if packet.kind is PacketKind.DATA:
            self._pool.receive_data(
                psrpcore.PSRPPayload(packet.data, psrpcore.StreamType.default, packet.pipeline_id)
            )
            while (event := self._pool.next_event()) is not None:
                await self._on_event(event)
            if has_queued_messages(self._pool):
                self._writer_wakeup.set()
            return
        if packet.kind is PacketKind.DATA_ACK:
            self._in_flight.discard(packet.guid)
            if self._outbox:
                self._writer_wakeup.set()
        waiter = self._ack_waiters.pop((packet.kind, packet.guid), None)
        if waiter is not None:
            waiter.set()
        elif packet.kind in (PacketKind.COMMAND, PacketKind.SIGNAL, PacketKind.CLOSE):
            raise PSRPError(f"the PowerShell host sent a client-side packet <{packet.kind.value}>")
        # An unexpected ack (for example a late CloseAck after a timeout) is harmless.

    async def _on_event(self, event: Any) -> None:
        if isinstance(event, RecordEvent):
            pipe = self._pipelines.get(event.pipeline_id) if event.pipeline_id else None
            if pipe is None:
                return
            if isinstance(event.record, PipelineStateRecord):
                pipe._finish(event.record)
                self._notify_state()
            else:
                await pipe._deliver(event.record)
            return
        if isinstance(event, HostLineEvent):
            pipe = self._pipelines.get(event.pipeline_id)
            record = record_from_host_call(event.method, [event.text])
            if pipe is not None and record is not None and not pipe._echoes.is_echo(record):
                await pipe._deliver(record)
            return
        if isinstance(event, psrpcore.RunspacePoolStateEvent):
            if event.state == RunspacePoolState.Opened:
                self._opened.set()
            elif event.state in (RunspacePoolState.Broken, RunspacePoolState.Closed):
                reason = ""
                if event.reason is not None:
                    reason = f": {event.reason}"
                if not self._closed:
                    self._fail(PSRPError(f"the runspace pool on {self.description} is {event.state.name}{reason}"))
            return
        if isinstance(event, psrpcore.EncryptedSessionKeyEvent):
            self._session_key.set()
            return
        if isinstance(event, psrpcore.PipelineHostCallEvent | psrpcore.RunspacePoolHostCallEvent):
            await self._on_host_call(event)
            return
        record = record_from_event(event)
        pid = getattr(event, "pipeline_id", None)
        pipe = self._pipelines.get(pid) if pid else None
        if pipe is None or record is None:
            return
        if isinstance(record, PipelineStateRecord):
            pipe._finish(record)
            self._notify_state()
        else:
            await pipe._deliver(record)

    async def _on_host_call(
        self, event: psrpcore.PipelineHostCallEvent | psrpcore.RunspacePoolHostCallEvent
    ) -> None:
        """Act on a host call as the table in :mod:`.hostcalls` says; answer it if it expects one."""
        method = event.method_identifier
        action = action_of(method)
        pipe = self._pipelines.get(event.pipeline_id) if event.pipeline_id else None
        if action is HostCallAction.REFUSE or event.ci != -100:
            # A non-interactive host: a call that needs an answer gets an error at once, so a
            # command that prompts (Read-Host, a confirmation, Get-Credential) fails, never hangs.
            self._refuse_host_call(event)
            return
        if pipe is None:
            return
        if action is HostCallAction.EXIT_CODE:
            code = event.method_parameters[0] if event.method_parameters else None
            if isinstance(code, int) and not isinstance(code, bool):
                pipe.exit_code = int(code)
            return
        if action is HostCallAction.RECORD:
            record = record_from_host_call(method, event.method_parameters)
            if record is not None and not pipe._echoes.is_echo(record):
                await pipe._deliver(record)

    def _refuse_host_call(
        self, event: psrpcore.PipelineHostCallEvent | psrpcore.RunspacePoolHostCallEvent
    ) -> None:
        if event.ci == -100:
            return
        err = refusal_error_record(event.method_identifier)
        if event.pipeline_id:
            ps = self._pool.pipeline_table.get(event.pipeline_id)
            if ps is not None:
                ps.host_response(event.ci, error_record=err)
        else:
            self._pool.host_response(event.ci, error_record=err)
        self._writer_wakeup.set()

    # ------------------------------------------------------------------ writer
    async def _write_loop(self) -> None:
        with self._writer_scope:
            await self._write_payloads()

    async def _write_payloads(self) -> None:
        # Flow control is per target, as in PowerShell's client (one transport manager per
        # command): at most one Data packet in flight for the pool and for each pipeline, but
        # different pipelines do not wait for each other's DataAck. The writer never waits for
        # an ack itself; the reader wakes it when one arrives.
        try:
            while True:
                await self._writer_wakeup.wait()
                self._writer_wakeup = trio.Event()
                self._raise_if_broken()
                if self._deferred:
                    await self._send_control_bytes(b"")
                while (payload := self._pool.data_to_send(self._fragment_size)) is not None:
                    self._outbox.setdefault(payload.pipeline_id or POOL_GUID, deque()).append(payload)
                # Every target's next packet in one write: each pipe write wakes the host.
                batch = bytearray()
                for guid in [g for g, queue in self._outbox.items() if queue and g not in self._in_flight]:
                    payload = self._outbox[guid].popleft()
                    if not self._outbox[guid]:
                        del self._outbox[guid]
                    stream = (
                        DataStream.PROMPT_RESPONSE
                        if payload.stream_type == psrpcore.StreamType.prompt_response
                        else DataStream.DEFAULT
                    )
                    self._in_flight.add(guid)
                    batch += encode(Packet(kind=PacketKind.DATA, guid=guid, data=payload.data, stream=stream))
                if batch:
                    await self._transport.send_all(bytes(batch))
        except VmbusOpsError as exc:
            self._fail(exc)

    def _expect_ack(self, kind: PacketKind, guid: uuid.UUID) -> trio.Event:
        key = (kind, guid)
        if key in self._ack_waiters:
            raise RuntimeError(f"two waiters for {kind.value} {guid}")
        event = trio.Event()
        self._ack_waiters[key] = event
        return event

    def _defer_control(self, kind: PacketKind, guid: uuid.UUID) -> None:
        """Queue a packet whose ack no one waits for; it rides with the next write."""
        self._deferred += encode(Packet(kind=kind, guid=guid))
        self._writer_wakeup.set()

    async def _send_control_bytes(self, packet: bytes) -> None:
        """Write ``packet`` after any deferred packets, in one write (a pipe write wakes the host)."""
        async with self._control_lock:
            data, self._deferred = bytes(self._deferred) + packet, bytearray()
            if data:
                await self._transport.send_all(data)

    async def _control(self, kind: PacketKind, guid: uuid.UUID) -> None:
        """Send Command, Signal or Close and wait for its ack."""
        self._raise_if_broken()
        ack = self._expect_ack(kind.ack, guid)
        await self._send_control_bytes(encode(Packet(kind=kind, guid=guid)))
        await ack.wait()
        self._raise_if_broken()

    async def _flush(self) -> None:
        self._raise_if_broken()
        self._writer_wakeup.set()

    async def _signal(self, pipeline_id: uuid.UUID) -> None:
        ps = self._pool.pipeline_table.get(pipeline_id)
        if ps is not None and ps.state == PSInvocationState.Running:
            ps.begin_stop()
        await self._control(PacketKind.SIGNAL, pipeline_id)

    async def _wait_pipeline_done(self, pipe: Pipeline) -> None:
        while pipe.final is None:
            self._raise_if_broken()
            await self._state_changed.wait()

    # ------------------------------------------------------------------ public
    async def _open(self, timeout: float) -> None:
        self._nursery.start_soon(self._read_loop)
        self._nursery.start_soon(self._write_loop)
        self._pool.open()
        await self._flush()
        with trio.move_on_after(timeout) as scope:
            await self._opened.wait()
        if scope.cancelled_caught:
            raise TransportError(
                f"the PowerShell host {self.description} did not open a runspace pool within {timeout:g}s"
            )
        self._raise_if_broken()

    async def ensure_session_key(self) -> None:
        """Exchange the session key once, before the first SecureString is sent."""
        if self._session_key.is_set():
            self._raise_if_broken()
            return
        self._pool.exchange_key()
        await self._flush()
        await self._session_key.wait()
        self._raise_if_broken()

    @asynccontextmanager
    async def invoke(
        self,
        statements: Iterable[Statement],
        *,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> AsyncIterator[Pipeline]:
        """Start a pipeline of one or more statements and yield it while it runs.

        On leaving the block, a pipeline that has not ended is stopped (PSRP Signal) and waited
        for, shielded from cancellation and bounded by ``stop_timeout``; then it is closed.
        """
        self._raise_if_broken()
        statement_list: list[list[Command]] = [list(statement) for statement in statements if statement]
        if not statement_list:
            raise ValueError("a pipeline needs at least one command")
        needs_key = any(
            _contains_secret(value)
            for statement in statement_list
            for command in statement
            for value in (*command.parameters.values(), *command.arguments)
        )
        if needs_key:
            # Before encoding: the template encrypts SecureStrings with the session key.
            await self.ensure_session_key()
        body = self._encoder.encode(statement_list)
        ps: ClientPipeline
        if body is None:
            ps = psrpcore.ClientPowerShell(self._pool)
            add_statements(ps, statement_list)
        else:
            # psrpcore needs a pipeline object for its state machine, not the object model of
            # the command list: that is already serialized in ``body``.
            ps = TemplatedPipeline(self._pool)
        pipe = Pipeline(self, ps, self._record_buffer)
        self._pipelines[pipe.id] = pipe
        try:
            # The CreatePipeline Data goes only after the CommandAck. PowerShell's server
            # (OutOfProcServerMediator) queues every input line as its own thread-pool work item:
            # Data handled before its Command has registered the pipeline's transport is acked
            # and dropped, and the pipeline never answers. PowerShell's own client waits too.
            self._raise_if_broken()
            command_ack = self._expect_ack(PacketKind.COMMAND_ACK, pipe.id)
            await self._send_control_bytes(encode(Packet(kind=PacketKind.COMMAND, guid=pipe.id)))
            pipe._command_sent = True
            await command_ack.wait()
            self._raise_if_broken()
            self._start_pipeline(ps, body)
            pipe._started = True
            await self._flush()
            yield pipe
        finally:
            with trio.CancelScope(shield=True):
                await self._end_pipeline(pipe, stop_timeout)

    def _start_pipeline(self, ps: ClientPipeline, body: bytes | None) -> None:
        """Queue the CreatePipeline message: the templated body if there is one, else psrpcore's."""
        if body is None:
            assert isinstance(ps, psrpcore.ClientPowerShell)
            ps.start()
            return
        queue_client_message(self._pool, PSRPMessageType.CreatePipeline, body, ps.pipeline_id)
        ps.state = PSInvocationState.Running

    async def _end_pipeline(self, pipe: Pipeline, stop_timeout: float) -> None:
        try:
            if pipe._started and pipe.final is None and not self.broken:
                await pipe.stop(timeout=stop_timeout)
            pipe._abandon()
            if pipe._command_sent and not self.broken:
                # The pipeline has ended; its CloseAck carries nothing the caller needs, so the
                # caller does not wait a round trip for it (the reader takes it when it comes).
                self._defer_control(PacketKind.CLOSE, pipe.id)
        except VmbusOpsError:
            pass  # the pool is broken; every caller already sees that error
        finally:
            self._pipelines.pop(pipe.id, None)
            ps = self._pool.pipeline_table.get(pipe.id)
            if ps is not None and ps.state != PSInvocationState.Running:
                ps.close()
            else:
                self._pool.pipeline_table.pop(pipe.id, None)

    async def run(self, statements: Iterable[Statement], **kwargs: Any) -> list[Record]:
        """Run a pipeline to its end and return every record (the state record last)."""
        async with self.invoke(statements, **kwargs) as pipe:
            return await pipe.collect()

    async def _close(self) -> None:
        with trio.CancelScope(shield=True):
            # A pool that never opened (or broke) has no one to say goodbye to.
            if self._opened.is_set() and not self.broken:
                with trio.move_on_after(10):
                    for pipe in list(self._pipelines.values()):
                        await self._end_pipeline(pipe, 5)
                    try:
                        await self._control(PacketKind.CLOSE, POOL_GUID)
                    except VmbusOpsError:
                        pass
            self._closed = True
            self._writer_scope.cancel()
            await self._transport.aclose(graceful=self._opened.is_set() and not self.broken)
            self._reader_scope.cancel()



def _contains_secret(value: Any) -> bool:
    """Whether serializing ``value`` needs the session key (a SecureString inside)."""
    if isinstance(value, psrpcore.types.PSSecureString | psrpcore.types.PSCredential | GuestCredential):
        return True
    if isinstance(value, list | tuple):
        return any(_contains_secret(v) for v in value)
    return False


@asynccontextmanager
async def open_runspace_pool(
    connect: Callable[[trio.Nursery], Awaitable[Transport]],
    *,
    max_runspaces: int = 64,
    open_timeout: float = 60.0,
    record_buffer: int = DEFAULT_RECORD_BUFFER,
) -> AsyncIterator[RunspacePool]:
    """Connect a transport and open a runspace pool on it; close both on exit.

    ``connect`` is an async callable taking the pool's nursery and returning a Transport.
    """
    try:
        async with trio.open_nursery() as nursery:
            transport = await connect(nursery)
            pool = RunspacePool(transport, nursery, max_runspaces=max_runspaces, record_buffer=record_buffer)
            try:
                await pool._open(open_timeout)
                yield pool
            finally:
                await pool._close()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The pool's own tasks never raise, so a group here holds the caller's one exception:
        # hand it back as itself, not wrapped, so callers can catch our error types.
        single = _single_leaf(group)
        if single is None:
            raise
        raise single from None


def _single_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        else:
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


def error_from_state(record: PipelineStateRecord) -> ErrorRecord | None:
    """The error that ended a failed pipeline, if it carried one."""
    return record.error if record.state is PipelineState.FAILED else None


__all__ = [
    "Command",
    "Pipeline",
    "RunspacePool",
    "Statement",
    "error_from_state",
    "open_runspace_pool",
]
