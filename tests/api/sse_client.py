"""A minimal SSE follower over h11 and a trio socket: a follower that can vanish at any byte.

(httpx leaves its body generators to the garbage collector when a stream is abandoned midway;
this one just closes its socket.)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
import trio


@dataclass
class SSEEvent:
    event: str
    data: dict[str, Any]
    id: str | None


class SSEStream:
    def __init__(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._buffer = b""

    async def _next(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def start(self) -> None:
        event = await self._next()
        assert isinstance(event, h11.Response), event
        self.status = event.status_code
        self.headers = {k.decode().lower(): v.decode() for k, v in event.headers}

    async def body(self) -> bytes:
        out = b""
        while True:
            event = await self._next()
            if isinstance(event, h11.Data):
                out += bytes(event.data)
            else:
                return out

    async def events(self) -> AsyncIterator[SSEEvent]:
        while True:
            event = await self._next()
            if not isinstance(event, h11.Data):
                return
            self._buffer += bytes(event.data)
            while b"\n\n" in self._buffer:
                block, self._buffer = self._buffer.split(b"\n\n", 1)
                parsed = _parse(block.decode("utf-8"))
                if parsed is not None:
                    yield parsed


def _parse(block: str) -> SSEEvent | None:
    name, data, ident = "message", "", None
    for line in block.split("\n"):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line.startswith("id: "):
            ident = line[4:]
    return SSEEvent(name, json.loads(data), ident) if data else None


@asynccontextmanager
async def open_sse(url: str, path: str, headers: dict[str, str]) -> AsyncIterator[SSEStream]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    try:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=path,
            headers=[("Host", parts.netloc), ("Accept", "text/event-stream"), *headers.items()],
        )
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        sse = SSEStream(stream, conn)
        await sse.start()
        yield sse
    finally:
        await stream.aclose()
