"""PSRP over WinRM (WS-Management), through pypsrp 0.9's WS-Management client.

Theory of operation
-------------------
pypsrp 0.9 gives two layers: a WS-Management client (HTTP(S), NTLM / Kerberos / CredSSP /
certificate authentication, message encryption, certificate validation) with the WinRS shell
operations on top (Create, Command, Send, Receive, Signal, Delete), and its own synchronous PSRP
object model above that. We use the lower layer only. PSRP itself stays with psrpcore and our
runspace pool, exactly as for the OutOfProc transports, so records are decoded by the same code
(:mod:`.decode`, :mod:`.convert`) whatever the wire, commands stay structured, a pipeline left
early is stopped with a PSRP signal, and many pipelines share one pool.

:class:`WinRMTransport` is therefore an *OutOfProc adapter*: the pool writes OutOfProc packets to
it and reads OutOfProc packets from it, and the transport maps each to its WS-Management shell
operation, as the WinRM service's PowerShell plugin does on the other side:

=====================================  ======================================================
the pool sends                         WS-Management
=====================================  ======================================================
first ``Data`` for the pool            Create shell (``creationXml`` = those fragments)
later ``Data`` for the pool            Send ``stdin`` (``pr`` for a prompt response)
``Command`` for pipeline P             acknowledged at once; the Command goes with P's data
first ``Data`` for P                   Command (``CommandId`` = P, argument = the fragments)
later ``Data`` for P                   Send ``stdin`` to P (on a pooled connection, acked after)
``Signal`` for P                       Signal ``powershell/signal/ctrl_c`` to P
``Close`` for P / for the pool         Signal ``Terminate`` to P / Delete shell
=====================================  ======================================================

Each operation completes before its ``*Ack`` is given back, so the pool's flow control holds.
Receives run in their own tasks, one for the shell and one per running pipeline, each on its own
authenticated connection from a small pool (a Receive blocks on the server for up to the
operation timeout, and an encrypted NTLM context must never be shared by two threads at once).
pypsrp is synchronous: every call runs in a trio worker thread.
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.etree import ElementTree as ET

import trio

from vmbusops.credentials import Secret
from vmbusops.errors import ConfigError, HostAuthError, HostProcessExitedError, TransportError
from vmbusops.psrp.framing import POOL_GUID, DataStream, Packet, PacketKind, PacketReader, encode

log = logging.getLogger(__name__)

T = TypeVar("T")

PS_CTRL_C = "powershell/signal/ctrl_c"
TERMINATE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/signal/Terminate"
_OPERATION_TIMEOUT_FAULT = 2150858793
_RECEIVE_TIMEOUT = 5  # seconds a Receive may wait on the server before it answers "nothing yet"
_MAX_RECEIVERS = 8
_MAX_SENDERS = 8


@dataclass(frozen=True, slots=True)
class WinRMTarget:
    """Where and how to reach one host over WinRM. The password is a Secret, never printed."""

    host: str
    port: int = 5986
    ssl: bool = True
    path: str = "wsman"
    auth: str = "negotiate"
    username: str | None = None
    password: Secret | None = None
    cert_validation: bool | str = True
    encryption: str = "auto"
    client_certificate: str | None = None
    client_key: str | None = None
    configuration_name: str = "Microsoft.PowerShell"
    connect_timeout: float = 30.0

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl else 'http'}://{self.host}:{self.port}/{self.path}"

    def __repr__(self) -> str:
        return f"WinRMTarget({self.url}, auth={self.auth}, user={self.username!r})"


def parse_winrm_address(text: str) -> WinRMTarget:
    """``winrm://host[:port]`` (HTTPS), ``https://host:5986/wsman``, ``http://host:5985/wsman``."""
    if "://" not in text:
        text = f"winrm://{text}"
    parts = urlsplit(text)
    if parts.scheme not in ("winrm", "https", "http") or not parts.hostname:
        raise ConfigError(f"not a WinRM address: {text!r}", hint="write it as winrm://host or https://host:5986/wsman")
    if parts.username or parts.password:
        raise ConfigError("a WinRM address carries no user or password", hint="name a credential in [hosts.NAME]")
    ssl = parts.scheme != "http"
    try:
        port = parts.port or (5986 if ssl else 5985)
    except ValueError as exc:
        raise ConfigError(f"bad port in {text!r}") from exc
    return WinRMTarget(host=parts.hostname, port=port, ssl=ssl, path=parts.path.strip("/") or "wsman")


class _Connection:
    """One authenticated WS-Management connection and a WinRS handle on the shell."""

    def __init__(self, target: WinRMTarget, shell_id: str) -> None:
        from pypsrp.shell import WinRS
        from pypsrp.wsman import WSMan

        kwargs: dict[str, Any] = {}
        if target.client_certificate:
            kwargs["certificate_pem"] = target.client_certificate
            kwargs["certificate_key_pem"] = target.client_key
        self.wsman = WSMan(
            target.host,
            port=target.port,
            ssl=target.ssl,
            path=target.path,
            auth=target.auth,
            username=target.username,
            password=target.password.reveal() if target.password is not None else None,
            # A CA bundle path is passed on to requests' ``verify``, which takes one; pypsrp's
            # annotation says bool only.
            cert_validation=target.cert_validation,  # type: ignore[arg-type]
            encryption=target.encryption,
            connection_timeout=int(target.connect_timeout),
            operation_timeout=_RECEIVE_TIMEOUT,
            read_timeout=_RECEIVE_TIMEOUT + 10,
            no_proxy=True,
            **kwargs,
        )
        self.shell = WinRS(
            self.wsman,
            resource_uri=f"http://schemas.microsoft.com/powershell/{target.configuration_name}",
            id=shell_id,
            input_streams="stdin pr",
            output_streams="stdout",
        )

    def adopt(self, opened: Any) -> None:
        """Operate on a shell another connection created (WinRM shells are not per connection)."""
        self.shell.id = opened.id
        self.shell._selector_set = opened._selector_set
        self.shell.opened = True

    def close(self) -> None:
        self.wsman.close()


class WinRMTransport:
    """OutOfProc packets in and out, WS-Management shell operations on the wire."""

    #: PSRP fragment size: each Data packet is one Command or Send round trip, so make them as
    #: large as WinRM's default envelope (MaxEnvelopeSizekb = 500) takes once base64-encoded.
    fragment_size = 256 * 1024

    def __init__(self, target: WinRMTarget, nursery: trio.Nursery) -> None:
        self._target = target
        self._nursery = nursery
        self._shell_id = str(uuid.uuid4()).upper()
        self._control: _Connection | None = None
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        self._receivers = trio.CapacityLimiter(_MAX_RECEIVERS)
        self._senders = trio.CapacityLimiter(_MAX_SENDERS)
        self._inbound_send, self._inbound = trio.open_memory_channel[bytes](256)
        self._reader = PacketReader()
        self._lock = trio.Lock()
        self._opened = False
        self._closed = False
        self._started: set[uuid.UUID] = set()
        self._error: str | None = None
        self._loops = 0
        self._loops_done = trio.Event()

    def describe(self) -> str:
        return f"{self._target.url} ({self._target.configuration_name})"

    # ------------------------------------------------------------ threads
    async def _in_thread(self, fn: Callable[[], T]) -> T:
        try:
            return await trio.to_thread.run_sync(fn)
        except Exception as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: Exception) -> TransportError:
        from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError

        if isinstance(exc, TransportError):
            return exc
        if isinstance(exc, AuthenticationError) or (isinstance(exc, WinRMTransportError) and exc.code == 401):
            return HostAuthError(
                f"{self._target.url} refused the login as {self._target.username or '(certificate)'} "
                f"({self._target.auth})",
                hint="check the credential (vmbusops cred set NAME) and that the account may use the "
                "endpoint (host_agent/README.md)",
            )
        text = str(exc) or exc.__class__.__name__
        if isinstance(exc, WSManFaultError):
            text = exc.reason or exc.message or text
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return TransportError(
                f"{self._target.url}: the server's TLS certificate is not trusted ({text[:200]})",
                hint="install the issuing CA, or set cert_validation = \"/path/to/ca.pem\" in [hosts.NAME]",
            )
        self._error = self._error or text[:300]
        return HostProcessExitedError(f"the WinRM connection to {self._target.url} failed: {text[:300]}")

    def _new_connection(self) -> _Connection:
        connection = _Connection(self._target, self._shell_id)
        self._all.append(connection)
        return connection

    async def _borrow(self) -> _Connection:
        if self._idle:
            return self._idle.pop()
        assert self._control is not None
        connection = await trio.to_thread.run_sync(self._new_connection)
        connection.adopt(self._control.shell)
        return connection

    # ------------------------------------------------------------ OutOfProc side
    async def send_all(self, data: bytes) -> None:
        self._reader.feed(data)
        async with self._lock:
            while (packet := self._reader.next_packet()) is not None:
                await self._carry(packet)

    async def _carry(self, packet: Packet) -> None:
        kind, guid = packet.kind, packet.guid
        if kind is PacketKind.DATA:
            if guid == POOL_GUID:
                if not self._opened:
                    await self._create_shell(packet.data)
                else:
                    stream = "pr" if packet.stream is DataStream.PROMPT_RESPONSE else "stdin"
                    await self._control_call(lambda shell: shell.send(stream, packet.data))
            elif guid not in self._started:
                self._started.add(guid)
                arg = base64.b64encode(packet.data).decode("ascii")
                await self._control_call(lambda shell: shell.command("", arguments=[arg], command_id=str(guid).upper()))
                self._loops += 1
                self._nursery.start_soon(self._receive_loop, guid)
            else:
                # A pipeline's later fragments (a large command, such as a staged file's chunk)
                # go on a connection of their own, so that pipelines' Sends overlap; the pool
                # sends a pipeline's next fragment only after this one's DataAck, keeping order.
                self._nursery.start_soon(self._send_to_pipeline, guid, packet.data)
                return
            await self._deliver(Packet(kind=PacketKind.DATA_ACK, guid=guid))
        elif kind is PacketKind.COMMAND:
            await self._deliver(Packet(kind=PacketKind.COMMAND_ACK, guid=guid))
        elif kind is PacketKind.SIGNAL:
            await self._control_call(lambda shell: shell.signal(PS_CTRL_C, str(guid).upper()))
            await self._deliver(Packet(kind=PacketKind.SIGNAL_ACK, guid=guid))
        elif kind is PacketKind.CLOSE:
            if guid == POOL_GUID:
                await self._delete_shell()
            elif guid in self._started:
                try:
                    await self._control_call(lambda shell: shell.signal(TERMINATE, str(guid).upper()))
                except TransportError:
                    pass  # the command had already ended on the server
            await self._deliver(Packet(kind=PacketKind.CLOSE_ACK, guid=guid))

    async def _send_to_pipeline(self, guid: uuid.UUID, data: bytes) -> None:
        try:
            async with self._senders:
                if self._closed:
                    return  # the pool is closing; its reader sees the end of the stream
                connection = await self._borrow()
                try:
                    await self._in_thread(lambda: connection.shell.send("stdin", data, command_id=str(guid).upper()))
                finally:
                    self._idle.append(connection)
        except Exception as exc:
            if not self._closed:
                log.debug("WinRM send on %s failed: %s", self.describe(), self._translate(exc))
                # As for a failed Receive: the pool reads end-of-stream as "the host went away".
                self._inbound_send.close()
            return
        await self._deliver(Packet(kind=PacketKind.DATA_ACK, guid=guid))

    async def _control_call(self, fn: Callable[[Any], object]) -> None:
        control = self._control
        if control is None or self._closed:
            raise HostProcessExitedError(f"the WinRM shell on {self._target.url} is closed")
        await self._in_thread(lambda: fn(control.shell))

    async def _create_shell(self, fragments: bytes) -> None:
        from pypsrp.wsman import OptionSet

        control = await self._in_thread(self._new_connection)
        self._control = control
        content = ET.Element("creationXml", xmlns="http://schemas.microsoft.com/powershell")
        content.text = base64.b64encode(fragments).decode("ascii")
        options = OptionSet()
        options.add_option("protocolversion", "2.3", {"MustComply": "true"})
        await self._in_thread(lambda: control.shell.open(options, content))
        self._opened = True
        self._loops += 1
        self._nursery.start_soon(self._receive_loop, None)

    async def _delete_shell(self) -> None:
        control = self._control
        if control is None or not self._opened or self._closed:
            return
        self._opened = False
        try:
            await self._in_thread(control.shell.close)
        except TransportError:
            pass

    async def _deliver(self, packet: Packet) -> None:
        try:
            await self._inbound_send.send(encode(packet))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _receive_loop(self, pipeline: uuid.UUID | None) -> None:
        """Receive for the shell (``pipeline`` None) or one command, until it is done."""
        from pypsrp.exceptions import WSManFaultError

        command_id = str(pipeline).upper() if pipeline else None
        guid = pipeline or POOL_GUID
        try:
            async with self._receivers:
                connection = await self._borrow()
                try:
                    while not self._closed and (pipeline is None or self._opened):
                        try:
                            state, _, streams = await trio.to_thread.run_sync(
                                lambda: connection.shell.receive("stdout", command_id=command_id)
                            )
                        except WSManFaultError as exc:
                            if exc.code == _OPERATION_TIMEOUT_FAULT:
                                continue
                            if self._closed or (pipeline is None and not self._opened):
                                return
                            raise
                        data = streams.get("stdout", b"")
                        if data:
                            await self._deliver(Packet(kind=PacketKind.DATA, guid=guid, data=data))
                        if pipeline is not None and state.endswith("/Done"):
                            return
                finally:
                    self._idle.append(connection)
        except Exception as exc:
            if not self._closed and (pipeline is not None or self._opened):
                error = self._translate(exc)
                log.debug("WinRM receive on %s ended: %s", self.describe(), error)
                # The pool reads end-of-stream as "the host went away" and fails every waiter.
                self._inbound_send.close()
        finally:
            self._loops -= 1
            if self._loops == 0:
                self._loops_done.set()

    async def receive_some(self) -> bytes:
        try:
            return await self._inbound.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return b""

    async def failure_detail(self) -> str:
        return self._error or ""

    async def aclose(self, *, graceful: bool = True) -> None:
        with trio.CancelScope(shield=True):
            if self._opened:
                with trio.move_on_after(10 if graceful else 2):
                    await self._delete_shell()
            self._closed = True
            # Receives end within the operation timeout once the shell is gone.
            if self._loops:
                with trio.move_on_after(_RECEIVE_TIMEOUT + 5):
                    await self._loops_done.wait()
            for connection in self._all:
                await trio.to_thread.run_sync(connection.close)
            self._inbound_send.close()
