"""The PSRP server: OutOfProc packets in, psrpcore's server pool in the middle, packets out.

Theory of operation
-------------------
One reader loop takes packets from the client (``PacketReader`` over the input stream) and
answers each as PowerShell's ``OutOfProcessMediator`` does:

- ``Data`` for the pool (all-zero GUID): ``DataAck`` first, then the fragments go to psrpcore's
  ``ServerRunspacePool``, which answers negotiation (SessionCapability, ApplicationPrivateData,
  RunspacePoolState Opened) and key exchange (EncryptedSessionKey) by itself.
- ``Command P``: a ``ServerPipeline`` is created and ``CommandAck`` sent. ``Data P`` is acknowledged
  before anything of the pipeline is streamed; ``Data P`` that comes before ``Command P`` is
  acknowledged and dropped (the pipeline never starts), as PowerShell's mediator drops Data it
  processes before the pipeline's Command has registered; its CreatePipeline message starts a task that runs
  the commands against the simulated host (``vmbusops.sim.hyperv``). The pool is psrpcore's
  with one change: CreatePipeline is read by ``vmbusops.sim.create_pipeline`` when it can, which
  is several times cheaper than psrpcore's generic deserializer.
- ``Signal P``: ``SignalAck``, then the pipeline's task is cancelled and it ends Stopped.
- ``Close P``: a still-running pipeline is cancelled without a state message, then ``CloseAck``.
- ``Close`` for the pool: everything stops, RunspacePoolState Closed and ``CloseAck`` are
  written, the server returns.

Everything the server writes goes through one ordered :class:`Outbox`: acknowledgements as ready
lines, PSRP messages as (target, object id, bytes). psrpcore queues its own messages in the pool's
send buffer; they are moved to the outbox right after each psrpcore call, so the order on the wire
is the order of events. A single writer task drains the outbox: consecutive messages for the same
target are packed, fragment after fragment, into one ``Data`` packet, and everything ready is
written with one ``send_all``. Pipelines wait when the outbox holds more than ``high_water`` bytes,
so a fast producer cannot outrun a slow reader without bound.

Pipelines run concurrently, at most ``max_runspaces`` at a time (from InitRunspacePool or
SetMaxRunspaces); the rest wait for a runspace as PowerShell's pool does.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from psrpcore import (
    CreatePipelineEvent,
    GetAvailableRunspacesEvent,
    InitRunspacePoolEvent,
    PSRPPayload,
    ResetRunspaceStateEvent,
    ServerPipeline,
    SetMaxRunspacesEvent,
    SetMinRunspacesEvent,
    StreamType,
)
from psrpcore.types import (
    HostMethodIdentifier,
    InformationRecordMsg,
    PipelineHostCall,
    PipelineState,
    ProgressRecordMsg,
    ProgressRecordType,
    PSInt64,
    PSInvocationState,
    PSRPMessageType,
    PSVersion,
    RunspacePoolState,
)

from vmbusops.errors import FramingError
from vmbusops.psrp.framing import POOL_GUID, DataStream, Packet, PacketKind, PacketReader, encode
from vmbusops.psrp.psrpcore_private import next_object_id, take_queued_messages
from vmbusops.sim import clixml
from vmbusops.sim.create_pipeline import ParsedCreatePipelineEvent, SimRunspacePool
from vmbusops.sim.hyperv import CommandSpec, HyperVHost
from vmbusops.sim.invoker import INVOKER_FUNCTION, is_invoker_script
from vmbusops.sim.streams import InformationMessage, ProgressUpdate, SimError, TerminatingError

log = logging.getLogger("vmbusops.sim")

# Fragment bytes per Data packet: big enough to amortise framing, small enough that a client
# reading 32 KiB at a time is not handed one huge line.
MAX_PACKET_DATA = 64 * 1024
HIGH_WATER = 1024 * 1024
YIELD_EVERY = 64
GARBAGE = b"vmbusops simulator: injected garbage that is not an OutOfProc packet\r\n"
#: A well-framed output message whose CLIXML is not XML: a raw ESC, which PowerShell would have
#: written as ``_x001B_`` (XML 1.0 has no such character).
MALFORMED = b"<S>vmbusops simulator: \x1b[31m not XML</S>"
# psrpcore's own PipelineState Completed message body, serialized once.
_COMPLETED = clixml.psrpcore_xml(PipelineState(PipelineState=int(PSInvocationState.Completed)))


@dataclass(slots=True)
class _Message:
    pipeline_id: uuid.UUID | None
    stream: DataStream
    object_id: int
    data: bytes


class Outbox:
    """Ordered bytes and PSRP messages waiting for the writer."""

    def __init__(self, *, high_water: int = HIGH_WATER) -> None:
        self._items: deque[bytes | _Message] = deque()
        self._size = 0
        self._high_water = high_water
        self._ready = trio.Event()
        self._space = trio.lowlevel.ParkingLot()
        self._empty = trio.lowlevel.ParkingLot()
        self.closed = False
        self._in_flight = False

    @property
    def size(self) -> int:
        return self._size

    def add_line(self, line: bytes) -> None:
        self._items.append(line)
        self._size += len(line)
        self._ready.set()

    def add_message(self, message: _Message) -> None:
        self._items.append(message)
        self._size += len(message.data)
        self._ready.set()

    async def wait_for_space(self) -> None:
        while self._size > self._high_water and not self.closed:
            await self._space.park()

    async def wait_empty(self) -> None:
        """Until everything queued has been written (not just taken) by the writer."""
        while (self._items or self._in_flight) and not self.closed:
            await self._empty.park()

    def sent(self) -> None:
        """The writer finished writing what it took."""
        self._in_flight = False
        if not self._items:
            self._empty.unpark_all()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def take(self, limit: int = 4 * 1024 * 1024) -> bytes:
        """Everything ready (up to about ``limit`` bytes of input) as OutOfProc lines."""
        out: list[bytes] = []
        group: list[bytes] = []
        group_key: tuple[uuid.UUID | None, DataStream] | None = None
        group_size = 0
        taken = 0

        def flush() -> None:
            nonlocal group, group_size, group_key
            if group and group_key is not None:
                out.append(
                    encode(
                        Packet(
                            kind=PacketKind.DATA,
                            guid=group_key[0] or POOL_GUID,
                            stream=group_key[1],
                            data=b"".join(group),
                        )
                    )
                )
            group = []
            group_size = 0
            group_key = None

        while self._items and taken < limit:
            item = self._items.popleft()
            if isinstance(item, bytes):
                flush()
                out.append(item)
                taken += len(item)
                continue
            key = (item.pipeline_id, item.stream)
            if key != group_key or group_size >= MAX_PACKET_DATA:
                flush()
                group_key = key
            for frag in clixml.fragments(item.object_id, item.data):
                if group_size and group_size + len(frag) > MAX_PACKET_DATA:
                    flush()
                    group_key = key
                group.append(frag)
                group_size += len(frag)
            taken += len(item.data)
        flush()
        self._size -= taken
        if not self._items:
            self._size = 0
            self._ready = trio.Event()
        self._in_flight = bool(out)
        if self._size <= self._high_water:
            self._space.unpark_all()
        return b"".join(out)

    def close(self) -> None:
        self.closed = True
        self._space.unpark_all()
        self._empty.unpark_all()


@dataclass(slots=True)
class _Run:
    pipe: ServerPipeline
    commands: list[CommandSpec]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    started: bool = False
    # Closed by the client: end without a state message (the client has forgotten the pipeline).
    quiet: bool = False


class _PipelineStreams:
    """The Streams a running pipeline writes to: each record becomes a queued PSRP message."""

    def __init__(self, server: PSRPServer, pipeline_id: uuid.UUID) -> None:
        self._server = server
        self._pid = pipeline_id
        self._count = 0
        self._since_yield = 0

    @property
    def records_written(self) -> int:
        return self._count

    @property
    def host_has_ui(self) -> bool:
        return self._server.host_has_ui

    def _queue(self, message_type: PSRPMessageType, data: bytes) -> None:
        self._count += 1
        self._server.queue_message(self._pid, message_type, data)

    def output(self, value: Any) -> None:
        if value is None:
            # PowerShell sends $null output as an empty PipelineOutput message.
            self._queue(PSRPMessageType.PipelineOutput, b"")
            return
        self._queue(PSRPMessageType.PipelineOutput, clixml.output_xml(value))

    def error(self, error: SimError) -> None:
        self._queue(PSRPMessageType.ErrorRecord, clixml.error_xml(error))

    def _echo(self, method: HostMethodIdentifier, parameters: list[Any]) -> None:
        """The host call PowerShell makes right after a record when the client declared a UI.

        Measured with pwsh 7.6.9: a verbose, warning, debug or progress record is followed by
        WriteVerboseLine / WriteWarningLine / WriteDebugLine / WriteProgress with the same content,
        on the default stream, void (call id -100). Not a record: lab faults do not count it.
        """
        if self._server.host_has_ui:
            if len(parameters) == 1 and type(parameters[0]) is str:
                data = clixml.host_line_xml(method.name, int(method), parameters[0])
            else:
                data = clixml.psrpcore_xml(PipelineHostCall(ci=-100, mi=method, mp=parameters))
            self._server.queue_message(self._pid, PSRPMessageType.PipelineHostCall, data)

    def warning(self, message: str) -> None:
        self._queue(PSRPMessageType.WarningRecord, clixml.warning_xml(message))
        self._echo(HostMethodIdentifier.WriteWarningLine, [message])

    def verbose(self, message: str) -> None:
        self._queue(PSRPMessageType.VerboseRecord, clixml.verbose_xml(message))
        self._echo(HostMethodIdentifier.WriteVerboseLine, [message])

    def debug(self, message: str) -> None:
        self._queue(PSRPMessageType.DebugRecord, clixml.debug_xml(message))
        self._echo(HostMethodIdentifier.WriteDebugLine, [message])

    def information(self, info: InformationMessage) -> None:
        host = self._server.host.computer_name
        computer = info.computer or host
        user = info.user or f"{host}\\Administrator"
        now = datetime.datetime.now()
        if type(info.message_data) is str and len(info.tags) <= 1:
            data = clixml.information_xml(
                info.message_data,
                source=info.source,
                time_generated=now,
                user=user,
                computer=computer,
                process_id=clixml.PROCESS_ID,
                native_thread_id=clixml.native_thread_id(),
                tag=info.tags[0] if info.tags else None,
            )
        else:
            data = clixml.psrpcore_xml(
                InformationRecordMsg(
                    MessageData=clixml.to_psobject(info.message_data),
                    Source=info.source,
                    TimeGenerated=now,
                    Tags=list(info.tags),
                    User=user,
                    Computer=computer,
                    ProcessId=clixml.PROCESS_ID,
                    NativeThreadId=clixml.native_thread_id(),
                    ManagedThreadId=0,
                )
            )
        self._queue(PSRPMessageType.InformationRecord, data)

    def progress(self, update: ProgressUpdate) -> None:
        record = ProgressRecordMsg(
            Activity=update.activity,
            ActivityId=update.activity_id,
            StatusDescription=update.status,
            CurrentOperation=update.current_operation,
            ParentActivityId=update.parent_activity_id,
            PercentComplete=update.percent_complete,
            Type=ProgressRecordType.Completed if update.completed else ProgressRecordType.Processing,
            SecondsRemaining=update.seconds_remaining,
        )
        self._queue(PSRPMessageType.ProgressRecord, clixml.psrpcore_xml(record))
        # The host call carries the record as remoting serializes a ProgressRecord: the same
        # properties as the record message (psrpcore reads them back so).
        self._echo(HostMethodIdentifier.WriteProgress, [PSInt64(0), record])

    async def checkpoint(self) -> None:
        await self._server.outbox.wait_for_space()
        # Yielding after every record would hand the writer one record at a time; yielding every
        # YIELD_EVERY records lets records pile up into shared packets. A script that sleeps or
        # waits yields anyway, so its records still go out as they happen.
        self._since_yield += 1
        if self._since_yield >= YIELD_EVERY:
            self._since_yield = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def inject_garbage(self) -> None:
        self._server.outbox.add_line(GARBAGE)

    def inject_malformed(self) -> None:
        self._queue(PSRPMessageType.PipelineOutput, MALFORMED)

    async def crash(self) -> None:
        await self._server.crash()


def application_private_data() -> dict[str, Any]:
    # What Windows PowerShell 5.1 advertises; clients read PSVersion to pick protocol features.
    return {
        "PSVersionTable": {
            "PSVersion": PSVersion("5.1.17763.5576"),
            "PSEdition": "Desktop",
            "BuildVersion": PSVersion("10.0.17763.5576"),
            "CLRVersion": PSVersion("4.0.30319.42000"),
            "WSManStackVersion": PSVersion("3.0"),
        }
    }


class PSRPServer:
    """One client connection: a runspace pool and its pipelines over OutOfProc framing."""

    def __init__(
        self,
        host: HyperVHost,
        send_stream: trio.abc.SendStream,
        *,
        crash: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.host = host
        self._send = send_stream
        self._crash = crash
        self.pool = SimRunspacePool(application_private_data=application_private_data())
        self.outbox = Outbox()
        self._runs: dict[uuid.UUID, _Run] = {}
        self._limiter = trio.CapacityLimiter(1)
        self._nursery: trio.Nursery | None = None
        self._closed = False

    @property
    def host_has_ui(self) -> bool:
        """Whether the client declared a host with a UI when it opened the pool.

        PowerShell's server gives a pipeline the pool's host unless the pipeline brings its own
        (HostInfo.UseRunspaceHost false); a remote session's verbose, warning and debug records
        reach the client only through a host UI. psrpcore's clients, like most, leave
        UseRunspaceHost at true, so the pool's declaration decides; a pipeline that brings a
        host of its own is not modelled.
        """
        host = self.pool.host
        return host is not None and not host.IsHostNull and not host.IsHostUINull

    # ---- output ----------------------------------------------------------------------------

    def queue_message(
        self, pipeline_id: uuid.UUID | None, message_type: PSRPMessageType, data: bytes
    ) -> None:
        """Queue a PSRP message built outside psrpcore, numbered from the pool's own counter."""
        # The object id must come from psrpcore's counter so our messages and psrpcore's never
        # share an id.
        object_id = next_object_id(self.pool)
        self.outbox.add_message(
            _Message(
                pipeline_id,
                DataStream.DEFAULT,
                object_id,
                clixml.psrp_message(message_type, data, self.pool.runspace_pool_id, pipeline_id),
            )
        )

    def _pump(self) -> None:
        """Move what psrpcore queued in the pool's send buffer to the outbox, in order."""
        for message in take_queued_messages(self.pool):
            stream = (
                DataStream.PROMPT_RESPONSE
                if message.stream_type is StreamType.prompt_response
                else (DataStream.DEFAULT)
            )
            self.outbox.add_message(_Message(message.pipeline_id, stream, message.object_id, message.data))

    def _ack(self, packet: Packet) -> None:
        self.outbox.add_line(encode(Packet(kind=packet.kind.ack, guid=packet.guid)))

    async def _writer(self) -> None:
        try:
            while True:
                await self.outbox.wait_ready()
                # One more turn of the scheduler so running pipelines can add to this batch.
                await trio.lowlevel.checkpoint()
                chunk = self.outbox.take()
                if chunk:
                    await self._send.send_all(chunk)
                self.outbox.sent()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client stopped reading; output dropped")
            self.outbox.close()

    async def crash(self) -> None:
        """Chaos: let what is queued reach the client, then die without a word."""
        with trio.move_on_after(5):
            await self.outbox.wait_empty()
        if self._crash is not None:
            await self._crash()

    # ---- input -----------------------------------------------------------------------------

    async def serve(self, receive_stream: trio.abc.ReceiveStream) -> None:
        """Serve one client until it closes the pool or its input ends."""
        reader = PacketReader()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._writer)
            try:
                while not self._closed:
                    data = await receive_stream.receive_some(65536)
                    if not data:
                        log.info("input ended")
                        break
                    reader.feed(bytes(data))
                    while not self._closed and (packet := reader.next_packet()) is not None:
                        await self._handle(packet)
            except FramingError as exc:
                log.warning("client sent bad framing, closing: %s", exc)
            await self._stop_all()
            with trio.move_on_after(10):
                await self.outbox.wait_empty()
            nursery.cancel_scope.cancel()

    async def _handle(self, packet: Packet) -> None:
        kind = packet.kind
        pid = packet.pipeline_id
        if kind is PacketKind.DATA:
            self._ack(packet)
            if pid is not None and pid not in self.pool.pipeline_table:
                # PowerShell's mediator runs each input line as its own work item: a pipeline's
                # Data handled before its Command registered the pipeline is acknowledged and
                # dropped, and that pipeline never starts. Lines are handled here in order, so
                # only Data whose Command has not arrived at all can be dropped honestly.
                log.warning("dropped Data for pipeline %s: its Command has not arrived", pid)
                return
            stream = (
                StreamType.prompt_response
                if packet.stream is DataStream.PROMPT_RESPONSE
                else StreamType.default
            )
            self.pool.receive_data(PSRPPayload(packet.data, stream, pid))
            while (event := self.pool.next_event()) is not None:
                self._on_event(event)
            self._pump()
        elif kind is PacketKind.COMMAND:
            if pid is not None:
                ServerPipeline(self.pool, pid)
            self._ack(packet)
        elif kind is PacketKind.SIGNAL:
            self._ack(packet)
            run = self._runs.get(pid) if pid is not None else None
            if run is not None:
                run.scope.cancel()
        elif kind is PacketKind.CLOSE:
            if pid is None:
                log.info("client closed the runspace pool")
                await self._stop_all()
                # PowerShell reports the pool Closed before acknowledging; clients (pypsrp) wait
                # for that state message, not just for the ack.
                self.pool.pipeline_table.clear()
                if self.pool.state == RunspacePoolState.Opened:
                    self.pool.close()
                    self._pump()
                self._ack(packet)
                self._closed = True
                return
            run = self._runs.pop(pid, None)
            if run is not None:
                run.quiet = True
                run.scope.cancel()
                await run.done.wait()
            pipe = self.pool.pipeline_table.get(pid)
            if pipe is not None:
                self.pool.pipeline_table.pop(pid, None)
            self._ack(packet)
        else:
            log.warning("ignoring unexpected %s packet from the client", kind.value)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, InitRunspacePoolEvent):
            # A plain int: psrpcore's PSInt32 would make every acquire and release build objects.
            self._limiter.total_tokens = max(1, int(self.pool.max_runspaces))
            log.info("runspace pool opened (max runspaces %d)", self.pool.max_runspaces)
        elif isinstance(event, CreatePipelineEvent):
            pid = event.pipeline_id
            pipe = self.pool.pipeline_table.get(pid)
            if pipe is None or self._nursery is None:
                return
            commands: list[CommandSpec]
            if isinstance(event, ParsedCreatePipelineEvent):
                commands = list(event.commands)
            else:  # psrpcore's path: the message had something the fast parser does not read
                commands = list(pipe.metadata.commands) if pipe.metadata is not None else []
            run = _Run(pipe, commands)
            self._runs[pid] = run
            self._nursery.start_soon(self._run_pipeline, run)
        elif isinstance(event, SetMaxRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, True)
            self._limiter.total_tokens = max(1, int(event.count))
        elif isinstance(event, SetMinRunspacesEvent | ResetRunspaceStateEvent):
            self.pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, GetAvailableRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, int(self._limiter.available_tokens))

    async def _stop_all(self) -> None:
        for run in list(self._runs.values()):
            run.quiet = True
            run.scope.cancel()
        for run in list(self._runs.values()):
            await run.done.wait()
        self._runs.clear()

    # ---- pipelines ---------------------------------------------------------------------------

    async def _run_pipeline(self, run: _Run) -> None:
        pipe = run.pipe
        outcome: tuple[PSInvocationState, SimError | None] | None = None
        try:
            with run.scope:
                async with self._limiter:
                    # Real PowerShell sends only the final state; set Running without a message.
                    pipe.state = PSInvocationState.Running
                    commands = run.commands
                    if log.isEnabledFor(logging.INFO):
                        # A script's text is never logged; the guest invoker is named.
                        names = ", ".join(
                            str(c.command_text)
                            if not c.is_script
                            else f"{INVOKER_FUNCTION} (script)"
                            if is_invoker_script(str(c.command_text))
                            else "(script)"
                            for c in commands
                        )
                        log.info("pipeline %s: %s", pipe.pipeline_id, names)
                    streams = _PipelineStreams(self, pipe.pipeline_id)
                    try:
                        await self.host.run(commands, streams)
                        outcome = (PSInvocationState.Completed, None)
                    except TerminatingError as exc:
                        outcome = (PSInvocationState.Failed, exc.error)
                    except Exception as exc:  # a simulator bug must not take the whole host down
                        log.exception("pipeline %s crashed", pipe.pipeline_id)
                        outcome = (
                            PSInvocationState.Failed,
                            SimError(
                                message=f"vmbusops simulator internal error: {type(exc).__name__}",
                                fqid="SimulatorInternalError",
                                category="NotSpecified",
                            ),
                        )
        finally:
            if not run.quiet and not self.outbox.closed:
                if outcome is None:
                    if pipe.state is PSInvocationState.NotStarted:
                        pipe.state = PSInvocationState.Running
                    pipe.stop()
                elif outcome[1] is None:
                    # What pipe.complete() would queue, without serializing it every time.
                    self.queue_message(pipe.pipeline_id, PSRPMessageType.PipelineState, _COMPLETED)
                    pipe.state = PSInvocationState.Completed
                else:
                    pipe.prepare_message(
                        PipelineState(
                            PipelineState=int(outcome[0]),
                            ExceptionAsErrorRecord=clixml.to_error_record(outcome[1]),
                        )
                    )
                    pipe.state = outcome[0]
                self._pump()
            log.info("pipeline %s ended %s", pipe.pipeline_id, "quietly" if run.quiet else pipe.state.name)
            if self._runs.get(pipe.pipeline_id) is run:
                del self._runs[pipe.pipeline_id]
            run.done.set()
