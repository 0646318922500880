"""A streamed body written straight to a plain HTTP/1.1 connection's socket (``api/connection.py``),
against a real Hypercorn server on loopback and real clients: the bytes on the wire are h11's
chunked encoding of exactly what was sent, the connection carries the next request after it, a
client that does not read holds the sender back, one that goes away ends the stream, and over TLS
the body goes to the server's TLS stream past the layers above it (HTTP/1.1), or all Hypercorn's
way (HTTP/2), and arrives the same.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from tests.api.test_tls import issue, write

from vmbusops.api import connection
from vmbusops.api.app import Api
from vmbusops.api.connection import AgentTCPServer, BodyWriter
from vmbusops.api.follow import EventStream


class Feed:
    """The chunks of the streamed responses, as a test hands them out, and what became of them."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](0)
        self.made = 0
        self.closed = trio.Event()

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in self.receive:
                self.made += 1
                yield chunk
        finally:
            self.closed.set()


class Writes:
    """What :meth:`BodyWriter.write` did: how many chunks it wrote at once, how many in part."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.whole = self.part = self.declined = 0
        write_ = BodyWriter.write

        def counted(writer: BodyWriter, chunk: bytes) -> bytes | None:
            rest = write_(writer, chunk)
            if rest is None:
                self.declined += 1
            elif rest:
                self.part += 1
            else:
                self.whole += 1
            return rest

        monkeypatch.setattr(BodyWriter, "write", counted)


@asynccontextmanager
async def server(
    feed: Feed, monkeypatch: pytest.MonkeyPatch, configure: Callable[[HypercornConfig], None] | None = None
) -> AsyncIterator[int]:
    monkeypatch.setattr(hypercorn_run, "TCPServer", AgentTCPServer)

    async def events(request: Request) -> Response:
        return EventStream(feed.chunks(), headers={"Cache-Control": "no-store"})

    async def plain(request: Request) -> Response:
        return PlainTextResponse("next")

    app = Api(routes=[Route("/events", events), Route("/plain", plain)])
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    if configure is not None:
        configure(config)
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(lambda task_status: serve(app, config, task_status=task_status))  # type: ignore[arg-type]
        yield int(binds[0].rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


async def request(stream: trio.SocketStream, conn: h11.Connection, target: str) -> None:
    req = h11.Request(method="GET", target=target, headers=[("Host", "test")])
    await stream.send_all(conn.send(req) + conn.send(h11.EndOfMessage()))  # type: ignore[operator]


async def next_event(stream: trio.SocketStream, conn: h11.Connection) -> Any:
    while (event := conn.next_event()) is h11.NEED_DATA:
        conn.receive_data(await stream.receive_some(1 << 16))
    return event


@asynccontextmanager
async def following(port: int) -> AsyncIterator[tuple[trio.SocketStream, h11.Connection]]:
    """A client of ``/events`` past the response's start: its stream and its h11 connection. The
    stream is closed on the way out however the test ends: a socket left to the garbage collector
    (a failed test's, held by its traceback) is reported as unclosed in whichever later test the
    collection happens to come."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        conn = h11.Connection(h11.CLIENT)
        await request(stream, conn, "/events")
        assert (await next_event(stream, conn)).status_code == 200
        yield stream, conn


def chunked(*chunks: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"


async def test_chunks_go_straight_to_the_socket_as_h11_frames_them_and_the_connection_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    chunks = [b"event: a\ndata: 1\n\n", b"x" * 70_000, "é\n\n".encode()]
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
            wire = b""
            while b"\r\n\r\n" not in wire:
                wire += await stream.receive_some(1 << 16)
            head, _, body = wire.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            assert b"\r\ntransfer-encoding: chunked" in head.lower()
            for chunk in chunks:
                await feed.send.send(chunk)
            await feed.send.aclose()
            expected = chunked(*chunks)
            while len(body) < len(expected):
                body += await stream.receive_some(1 << 16)
            assert body == expected
            # The response ended as h11 ends it, so the connection takes the next request.
            await stream.send_all(b"GET /plain HTTP/1.1\r\nHost: test\r\n\r\n")
            rest = b""
            while not rest.endswith(b"next"):
                rest += await stream.receive_some(1 << 16)
            assert rest.startswith(b"HTTP/1.1 200 ")
    assert feed.closed.is_set()
    assert writes.whole == len(chunks) and writes.part == writes.declined == 0


async def test_an_http_1_0_client_gets_the_body_as_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(b"GET /events HTTP/1.0\r\nHost: test\r\n\r\n")
            wire = b""
            while b"\r\n\r\n" not in wire:
                wire += await stream.receive_some(1 << 16)
            await feed.send.send(b"one\n\n")
            await feed.send.send(b"two\n\n")
            await feed.send.aclose()
            while not wire.endswith(b"two\n\n"):
                wire += await stream.receive_some(1 << 16)
            head, _, body = wire.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding" not in head.lower()
            assert body == b"one\n\ntwo\n\n"
    assert writes.whole == 2


async def test_httpx_reads_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, httpx.AsyncClient() as client:
            async with client.stream("GET", f"http://127.0.0.1:{port}/events") as response:
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert response.headers["cache-control"] == "no-store"
                lines = response.aiter_lines()
                for n in range(3):
                    await feed.send.send(f"id: {n}\ndata: {{}}\n\n".encode())
                    assert [await lines.__anext__() for _ in range(3)] == [f"id: {n}", "data: {}", ""]
                await feed.send.aclose()
                assert [line async for line in lines] == []
    assert writes.whole == 3


async def test_a_client_that_does_not_read_holds_the_stream_back_and_then_gets_every_byte(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the socket does not take at once is sent the server's way, and the stream waits for it:
    the chunks made while the client reads nothing are a few socket buffers' worth, not all."""
    feed, writes = Feed(), Writes(monkeypatch)
    size, count = 1 << 20, 64
    chunks = [bytes([65 + i % 26]) * size for i in range(count)]
    with trio.fail_after(30):
        async with server(feed, monkeypatch) as port, await trio.open_tcp_stream("127.0.0.1", port) as stream:
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 16)
            await request(stream, conn, "/events")
            assert (await next_event(stream, conn)).status_code == 200

            async def feed_all() -> None:
                for chunk in chunks:
                    await feed.send.send(chunk)
                await feed.send.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(feed_all)
                await trio.testing.wait_all_tasks_blocked(0.05)
                held = feed.made
                body = bytearray()
                while not isinstance(event := await next_event(stream, conn), h11.EndOfMessage):
                    body += event.data
    assert 1 <= held < count // 2
    assert body == b"".join(chunks)
    assert writes.part >= 1


@pytest.mark.parametrize("mid_chunk", [False, True])
async def test_a_client_that_goes_away_ends_the_stream(monkeypatch: pytest.MonkeyPatch, mid_chunk: bool) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, following(port) as (stream, conn):
            await feed.send.send(b"one\n\n")
            assert (await next_event(stream, conn)).data == b"one\n\n"
            if mid_chunk:
                # Reset, not closed: the next write may fail at the socket, and goes the
                # server's way, which meets the error and closes the connection.
                stream.socket.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            await stream.aclose()
            with trio.move_on_after(5):
                while not feed.closed.is_set():
                    with trio.move_on_after(0.01):
                        await feed.send.send(b"more\n\n" * 1000)
            assert feed.closed.is_set()
    assert writes.whole >= 1


async def test_while_another_send_is_under_way_a_chunk_waits_its_turn_the_servers_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    made = connection.body_writer
    held: list[trio.Lock] = []

    def remembered(scope: Any) -> BodyWriter | None:
        writer = made(scope)
        assert writer is not None
        held.append(writer._server.send_lock)
        return writer

    monkeypatch.setattr("vmbusops.api.follow.body_writer", remembered)
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, following(port) as (stream, conn):
            await feed.send.send(b"one\n\n")
            assert (await next_event(stream, conn)).data == b"one\n\n"
            release = trio.Event()

            async def hold(task_status: trio.TaskStatus[None]) -> None:
                async with held[0]:
                    task_status.started()
                    await release.wait()

            async with trio.open_nursery() as nursery:
                await nursery.start(hold)
                await feed.send.send(b"two\n\n")  # declined: goes to the server, which waits for the lock
                await trio.testing.wait_all_tasks_blocked()
                assert writes.declined == 1
                release.set()
            assert (await next_event(stream, conn)).data == b"two\n\n"
            await feed.send.send(b"three\n\n")  # the lock is free again: written at once
            assert (await next_event(stream, conn)).data == b"three\n\n"
            await feed.send.aclose()
            assert isinstance(await next_event(stream, conn), h11.EndOfMessage)
    assert writes.whole == 2 and writes.declined == 1


async def test_a_write_the_socket_refuses_goes_the_servers_way(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error from the socket is left to the server's own send (which, on a real error, closes
    the connection as it always has): here the socket is fine, and the bytes arrive in order."""
    feed, writes = Feed(), Writes(monkeypatch)
    made = connection.body_writer

    class Refusing:
        def send(self, data: bytes) -> int:
            raise BrokenPipeError

    def refusing(scope: Any) -> BodyWriter | None:
        writer = made(scope)
        assert writer is not None
        return BodyWriter(writer._server, writer._h11, Refusing())  # type: ignore[arg-type]

    monkeypatch.setattr("vmbusops.api.follow.body_writer", refusing)
    with trio.fail_after(10):
        async with server(feed, monkeypatch) as port, following(port) as (stream, conn):
            for chunk in (b"one\n\n", b"two\n\n"):
                await feed.send.send(chunk)
                assert (await next_event(stream, conn)).data == chunk
            await feed.send.aclose()
            assert isinstance(await next_event(stream, conn), h11.EndOfMessage)
    assert writes.part == 2


def _tls(tmp_path: Path) -> tuple[Path, Callable[[HypercornConfig], None]]:
    ca = issue("test ca", None, ca=True)
    ca_cert, _ = write(tmp_path, "ca", ca)
    cert, key = write(tmp_path, "server", issue("127.0.0.1", ca, server=True))

    def configure(config: HypercornConfig) -> None:
        config.certfile = str(cert)
        config.keyfile = str(key)

    return ca_cert, configure


@pytest.mark.parametrize("http2", [False, True])
async def test_over_tls_the_body_goes_past_hypercorns_layers_to_its_tls_stream_or_all_its_way_on_http_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, http2: bool
) -> None:
    feed, writes = Feed(), Writes(monkeypatch)
    ca_cert, configure = _tls(tmp_path)
    verify = ssl.create_default_context(cafile=str(ca_cert))
    with trio.fail_after(10):
        async with server(feed, monkeypatch, configure) as port, httpx.AsyncClient(verify=verify, http2=http2) as client:
            async with client.stream("GET", f"https://127.0.0.1:{port}/events") as response:
                assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
                lines = response.aiter_lines()
                await feed.send.send(b"id: 1\ndata: {}\n\n")
                assert await lines.__anext__() == "id: 1"
                await feed.send.send(b"x" * 200_000 + b"\n\n")
                await feed.send.aclose()
                assert [line async for line in lines] == ["data: {}", "", "x" * 200_000, ""]
    # Over HTTP/1.1 each chunk is framed here and sent by the server's TCP server, which
    # encrypts it; over HTTP/2 all goes Hypercorn's way.
    assert writes.part == (0 if http2 else 2) and writes.whole == writes.declined == 0


class LockedSender:
    """What a body writer asks of its connection's server, as Hypercorn's trio ``TCPServer`` does
    it: a send lock, and a send that takes the lock and then sends the whole of its data shielded."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.send_lock = trio.Lock()

    async def protocol_send(self, event: Any) -> None:
        async with self.send_lock:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(event.data)


async def test_a_chunk_the_socket_took_in_part_is_sent_whole_even_when_its_follower_is_cancelled() -> None:
    """Part of the chunk is on the wire: what is left goes too, or the client could read no
    further in the body."""
    ours, theirs = trio.socket.socketpair()
    server_side, client_side = trio.SocketStream(ours), trio.SocketStream(theirs)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
    conn.next_event()  # the request: the connection may answer it now
    head = conn.send(h11.Response(status_code=200, headers=[("Transfer-Encoding", "chunked")]))
    await server_side.send_all(head)
    sender = LockedSender(server_side)
    writer = BodyWriter(sender, conn, ours._sock)  # type: ignore[arg-type,attr-defined]
    chunk = b"x" * (8 << 20)  # more than a socket pair's buffers take at once
    rest = writer.write(chunk)
    assert rest  # taken in part
    got = bytearray()

    async def read_all() -> None:
        await trio.sleep(0.05)  # the cancel comes while the rest waits for the socket
        while len(got) < len(head) + len(chunked(chunk)) - len(b"0\r\n\r\n"):
            got.extend(await client_side.receive_some(1 << 20))

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            with trio.CancelScope() as scope:
                scope.cancel()
                await writer.send_rest(rest)
    assert bytes(got) == head + chunked(chunk)[: -len(b"0\r\n\r\n")]
    await server_side.aclose()
    await client_side.aclose()
