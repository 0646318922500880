"""The agent's HTTP connections: Hypercorn's trio ``TCPServer`` with the client's certificate
(:class:`~.tls.PeerCertTCPServer`) and a short way out for a streamed response's body
(:class:`BodyWriter`).

Hypercorn hands each body message of a response down its layers: the HTTP stream, the HTTP/1.1
protocol, h11 (which frames it as a chunk), then its TCP server, which takes its send lock and
sends under a shielded cancel scope, two trips through trio's scheduler. An SSE follower sends a
small chunk per tick of the pacer for as long as it follows, and that path cost it more than the
system call that sends the chunk. So on an HTTP/1.x connection whose response's body is under
way, a chunk is framed as Hypercorn would have had it framed: by the connection's own h11
``Connection`` (whose state moves the same way), which also shows, framing the first, whether
the body goes in chunks; if so, the others are framed the same way here (h11 keeps no state for
a chunk). On a plain (not TLS) connection the chunk is then written to the socket (trio's
socket's own, reached by a non-public name: without it, all goes Hypercorn's way) at once,
with no wait, when no other send is under way. What the socket does not take at
once (its buffer is full: a slow client) is sent the TCP server's way, under its send lock, and
the writer waits for that as it would have waited for Hypercorn's send: a slow client still holds
back what sends to it, and nothing is buffered but the socket's own buffer and that one chunk's
rest. A failed write is sent that way too, so a client that has gone is noticed as before; and
so is every chunk over TLS (whose stream encrypts), past the layers above. The response's start
and its end (h11's ``EndOfMessage``, the chunked body's last chunk) go all of Hypercorn's way, as
does every body over HTTP/2.

The connection puts itself in a context variable, as the certificate is (see :mod:`.tls`): the
request's tasks inherit it. What is used of Hypercorn's trio worker (its TCP server's
``protocol``, ``send_lock`` and ``protocol_send``, its HTTP/1.1 protocol's ``connection``) is
not its documented interface: ``tests/api/test_connection.py`` checks, against a real server,
that the way is taken and what goes on the wire.
"""

from __future__ import annotations

import contextvars
import socket
import weakref

import h11
import trio
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import run as hypercorn_run
from starlette.types import Scope

from vmbusops.api.tls import PeerCertTCPServer

#: The request's connection, held weakly: a task a request starts (a job's) inherits the context,
#: and must not keep its closed connection alive until it ends.
_CONNECTION: contextvars.ContextVar[weakref.ref[AgentTCPServer] | None] = contextvars.ContextVar(
    "vmbusops_connection", default=None
)


class AgentTCPServer(PeerCertTCPServer):
    """A connection of the agent's server: the peer certificate, and the connection told to the
    request tasks (:func:`body_writer`)."""

    async def run(self) -> None:
        _CONNECTION.set(weakref.ref(self))
        await super().run()


class BodyWriter:
    """Writes a response's body chunks straight to an HTTP/1.x connection's socket, or its TLS
    stream (see the module's docstring)."""

    __slots__ = ("_chunked", "_h11", "_server", "_sock")

    def __init__(self, server: AgentTCPServer, connection: h11.Connection, sock: socket.socket | None) -> None:
        self._server = server
        self._h11 = connection
        self._sock = sock
        #: Whether h11 frames this body in chunks, as it told by framing the first one: then the
        #: others are framed here the same way (h11 keeps no state for a chunk, and its
        #: connection's state stays as it was), else each is framed by h11 (an HTTP/1.0 client's
        #: body, which ends when the connection does, goes as it is).
        self._chunked = False

    @property
    def to_socket(self) -> bool:
        """Whether chunks go straight to a plain socket (not TLS): :meth:`write` then has
        sent what it does not return."""
        return self._sock is not None

    def write(self, chunk: bytes) -> bytes | None:
        """Write ``chunk`` as the body's next part at once, if it may be: ``None`` if not (the
        caller sends it the server's way), else what the socket did not take, which the caller
        must send (:meth:`send_rest`) before anything else."""
        server = self._server
        connection = self._h11
        if server.send_lock.locked() or connection.our_state is not h11.SEND_BODY:
            return None
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunk else b""
        else:
            data = connection.send(h11.Data(data=chunk))
            self._chunked = len(data) > len(chunk)
        if self._sock is None:
            return data  # TLS
        try:
            sent = self._sock.send(data)
        except OSError:
            # Full (a slow client), or an error: the server's own send waits for the socket, or
            # meets the error and closes the connection, as for any body.
            return data
        return data[sent:]

    async def send_rest(self, data: bytes) -> None:
        """Send what :meth:`write` left, the server's way: under its send lock, after any send
        under way, waiting for the socket to take it. Shielded from cancellation, as the server
        shields its own sends: part of the chunk is on the wire already, and a chunk cut short
        would leave the client a body it cannot read on."""
        with trio.CancelScope(shield=True):
            await self._server.protocol_send(RawData(data=data))


def body_writer(scope: Scope) -> BodyWriter | None:
    """A writer for the body of the response the request task of ``scope`` has started, when
    its connection is one of the agent's, HTTP/1.0 or 1.1 and past the start of the response; ``None``
    otherwise."""
    held = _CONNECTION.get()
    server = held() if held is not None else None
    if server is None or scope.get("method") == "HEAD" or scope.get("http_version") not in ("1.0", "1.1"):
        return None
    stream: object = server.stream  # typed as TLS, which it is only when the server is
    sock: socket.socket | None = None
    if isinstance(stream, trio.SocketStream):
        sock = getattr(stream.socket, "_sock", None)
        if not isinstance(sock, socket.socket):
            return None
    elif not isinstance(stream, trio.SSLStream):
        return None
    protocol = getattr(server, "protocol", None)
    protocol = getattr(protocol, "protocol", None)
    if type(protocol) is not H11Protocol:
        return None
    connection = protocol.connection
    if type(connection) is not h11.Connection or connection.our_state is not h11.SEND_BODY:
        return None
    return BodyWriter(server, connection, sock)


def install_agent_server() -> None:
    """Make Hypercorn's trio worker build connections with :class:`AgentTCPServer`."""
    hypercorn_run.TCPServer = AgentTCPServer  # type: ignore[attr-defined]
