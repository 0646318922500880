"""A job's records and state changes as Server-Sent Events, resumable without gap or repeat.

Theory of operation
-------------------
The journal numbers a job's records 1, 2, 3... (``n``) in the order they were committed, and the
agent hears of every commit of its engine's writer (:mod:`.broadcast`). A follower's position is
the ``n`` of the last record it sent. It subscribes to the job's commits *before* it reads the
journal, then sends from the journal everything after its position (catch-up, in pages of one
range scan each), then what commits bring:

* a committed record at or below the position was already sent from the journal: skipped;
* a committed record beyond the next one means some were not seen live (committed before the
  subscription, or dropped because this follower fell behind): they are in the journal already,
  so the follower reads them from there at once, and goes on;
* a follower whose queue overflowed (:attr:`~.broadcast.Subscription.lost`) catches up from the
  journal the same way, and is sent every run's state again as a snapshot, since state events
  were lost with the records;
* the stream ends when the job does (:class:`~.broadcast.JobEnded`) after a last catch-up: the
  engine commits every record before the job's final state, so nothing is left behind.

What a commit brings is text made once: every follower of the job whose position is right before
the commit's first record sends the same bytes (:meth:`~.broadcast.RecordsCommitted.sse`); only a
follower at another position (a ``Last-Event-ID`` ahead of the journal) formats its part itself.
A follower takes everything queued for it at once and sends it as one chunk, then rests until
the next tick of the agent's :class:`~.broadcast.Pacer`: the journal writer ticks it once per
rhythm (30 ms while anyone follows, counted from the flusher's last commit's end, so longer
under load), right after the first commit that ends it, so a busy job's
follower sends one chunk per tick with what the commits since its last brought, and a record
after a quiet spell goes out at once. The tick itself sends that chunk for a resting follower
(:meth:`JobFollower.serve`) when it is only records right after the follower's position and
the connection's socket takes it at once: the follower rests on, never woken, its position
moved. Anything else (a state change, the job's end, a gap, a lost queue, a socket that took
part of the chunk, a connection over TLS or HTTP/2) wakes it, and it sends as above. Should no tick come (a process whose writer does not tick, such as the fleet's
controller), a follower rests :data:`COALESCE` seconds at most. :class:`EventStream` hands the
chunks to the HTTP server as they are (on an HTTP/1.x connection of the agent's, framed by the
agent and, unless over TLS, written straight to its socket: :mod:`.connection`), with one task
watching for the client's disconnect.

A follower of a job among the service's running jobs (``AgentService.running``: the jobs the
agent started, or the fleet controller's active jobs) does no work while no commit comes: it
waits on no timer but the keep-alive's (a comment after :data:`KEEPALIVE` seconds without a
chunk), and the job's leaving the running jobs wakes it
(:meth:`~vmbusops.api.service.AgentService.job_left`). Any other job's follower reads the
journal every :data:`IDLE_POLL` seconds while nothing comes: a job another process runs
(``vmbusops run`` beside the agent) brings no commits here, and a fleet agent's local job of a
fleet run brings its commits but no end event.

A follower is let in as any request is, and asks again, at most every :data:`RECHECK` seconds and
before it sends anything, whether the credentials it came with still hold: a token revoked or
expired, or a console session ended, ends its stream, and its client's next request is refused.

Each record event's ``id`` is its ``n``. A client reconnects with ``Last-Event-ID`` (or
``?after=``) and continues exactly there. State events (``job``, ``run``) carry no id: they are
snapshots, sent again in full on every (re)connection.

A record's JSON is spliced from the stored JSON text (:class:`RecordText`), never decoded and
encoded again: the same object ``vmbusops logs --json`` prints.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from contextlib import aclosing
from functools import partial
from typing import Any

import trio
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vmbusops.api.broadcast import JobEnded, RecordsCommitted, Subscription
from vmbusops.api.connection import BodyWriter, body_writer
from vmbusops.api.idle import idle
from vmbusops.api.service import AgentService
from vmbusops.engine import RunChanged
from vmbusops.engine.journal import JobView, Journal, RunView, StoredRecord
from vmbusops.engine.journal_rows import spliced_record

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: How often a follower of a job not among the service's running jobs reads the journal while
#: nothing comes.
IDLE_POLL = 0.5
KEEPALIVE = 15.0
#: Records per catch-up page: a page is read, formatted and handed to the socket in one step of
#: the event loop (about 0.3 ms), which is what a status call arriving meanwhile may wait for.
CATCH_UP_BATCH = 100
#: Runs' states per chunk of the snapshot a follower starts with: some 0.3 ms of the event loop.
SNAPSHOT_RUNS = 100
#: A catch-up page waits for the event loop to rest (:func:`~.idle.idle`) this long at most, so a
#: loop that is never idle still lets followers catch up, a page per this long (plus the page's own
#: time) at worst, between all of them: some 70,000 records/s.
CATCH_UP_PATIENCE = 0.001
#: A follower rests this long at most between two chunks (four times that once the writer ticks the
#: pacer, whose ticks then end the rest: see :class:`~.broadcast.Pacer`): what commits bring
#: meanwhile goes out together. Each chunk costs the agent tens of microseconds (a system call,
#: waking its follower, and the HTTP server's send path where it is taken) whatever its size, so
#: a follower of a busy job sends several records per chunk; a record after a quiet spell does
#: not wait at all.
COALESCE = 0.02
#: A follower asks at most this often whether the credentials it was let in with still hold (a
#: token revoked or expired, a console session ended): when they do not, its stream ends, and the
#: client's next request is refused as any other.
RECHECK = 1.0
#: The scope key under which the application puts the HTTP server's own ``send`` (see
#: :class:`EventStream`).
SERVER_SEND = "vmbusops.server_send"


def sse(event: str, data: dict[str, Any], ident: str | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {_dumps(data)}\n\n"


def job_data(job: JobView) -> dict[str, Any]:
    return {"job": job.id, "state": job.state.value, "cancel_requested": job.cancel_requested}


def run_data(run: RunView) -> dict[str, Any]:
    return {"vm": run.vm, "state": run.state.value, "step": run.current_step, "error": run.error, "code": run.code}


def changed_data(event: RunChanged) -> dict[str, Any]:
    return {"vm": event.vm, "state": event.state.value, "step": event.step, "error": event.error, "code": event.code}


class RecordText:
    """A stored record's JSON as the API gives it (:func:`~vmbusops.engine.journal_rows.spliced_record`),
    the object ``vmbusops logs --json`` prints (``cli.record_lines``), with the VM and step names
    encoded once each."""

    def __init__(self, runs: Iterable[RunView]) -> None:
        self._vm = {r.id: _dumps(r.vm) for r in runs}
        self._step: dict[str | None, str] = {None: "null"}

    def __call__(self, row: StoredRecord) -> str:
        step = self._step.get(row[4])
        if step is None:
            step = self._step[row[4]] = _dumps(row[4])
        return spliced_record(self._vm.get(row[2], "null"), step, row)

    def event(self, row: StoredRecord) -> str:
        return f"id: {row[1]}\nevent: record\ndata: {self(row)}\n\n"


class JobFollower:
    def __init__(
        self,
        service: AgentService,
        job: JobView,
        runs: list[RunView],
        after: int,
        allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.service = service
        #: Whether the request's credentials still hold (asked every :data:`RECHECK` seconds at
        #: most); ``None``: not asked.
        self._allowed = allowed
        self._checked_at = trio.current_time() if allowed is not None else 0.0
        self._cut = False
        self.job = job
        self.runs = runs
        self.position = after
        self.text = RecordText(runs)
        self.sent = 0
        #: The connection's writer, when its chunks may go straight to its socket: then a tick
        #: of the pacer sends for this follower while it rests (:meth:`serve`).
        self.direct: BodyWriter | None = None
        #: What :meth:`serve` wrote of a chunk that the socket did not take all of: the rest,
        #: which this follower sends before anything else once it wakes.
        self._unsent = b""
        self._live_sub: Subscription | None = None
        self._idle_since = 0.0

    def still_allowed(self) -> bool:
        """Whether the follower may go on: its credentials held when last asked (at most
        :data:`RECHECK` seconds ago). Once they do not, it sends nothing more. Asked in the
        follower's own task only, which has its request's context (a client certificate's)."""
        allowed = self._allowed
        if not self._cut and allowed is not None and trio.current_time() >= self._checked_at + RECHECK:
            self._checked_at = trio.current_time()
            self._cut = not allowed()
        return not self._cut

    def _recheck_due(self) -> bool:
        return self._allowed is not None and trio.current_time() >= self._checked_at + RECHECK

    def use_writer(self, direct: BodyWriter) -> None:
        """The connection's body writer (:class:`EventStream`): :meth:`serve` needs it, and
        only a plain socket's, which takes a chunk at once or says what it did not take."""
        if direct.to_socket:
            self.direct = direct

    def _encode(self, rows: list[StoredRecord]) -> bytes:
        return "".join(map(self.text.event, rows)).encode()

    async def _catch_up(self) -> AsyncIterator[bytes]:
        """Every committed record past the position, from the journal, a page at a time: what is
        sent is never more than a page ahead of the client, and a client that goes away stops the
        reading at the next page.

        A page is read and formatted on the event loop's own reading connection
        (``readers.run_here``), one page of one follower at a time (``service.catch_up``), and
        only once the loop has nothing else to run (:func:`~.idle.idle`): the pages of a large job
        fill the time the loop would rest, and a status call or a live chunk that comes meanwhile
        waits for one page at most. In a worker thread a page held the interpreter for
        milliseconds at a time, and the loop had to wait for it at each of its system calls.
        """
        while self.still_allowed():
            async with self.service.catch_up:
                await idle(CATCH_UP_PATIENCE)
                count, self.position, text = await self.service.readers.run_here(partial(self._page, self.position))
            self.sent += count
            if text:
                yield text
            if count < CATCH_UP_BATCH:
                return

    def _page(self, after: int, journal: Journal) -> tuple[int, int, bytes]:
        rows = journal.stored_records(self.job.id, after=after, limit=CATCH_UP_BATCH)
        return len(rows), rows[-1][1] if rows else after, self._encode(rows)

    def _committed(self, event: RecordsCommitted, out: list[bytes]) -> bool:
        """Append the events of the committed records not sent yet; False at a gap (some were
        not seen live: the journal has them, and the caller catches up before going on). A
        commit that starts right after the position, the usual case, is sent as the text every
        follower of the job shares."""
        rows = event.rows
        last = rows[-1][1]
        if last <= self.position:
            return True
        first = rows[0][1]
        if first == self.position + 1 and last - first == len(rows) - 1:
            out.append(event.sse(self._encode))
            self.position = last
            self.sent += len(rows)
            return True
        mine: list[StoredRecord] = []
        whole = True
        for row in rows:
            n = row[1]
            if n <= self.position:
                continue
            if n != self.position + 1:
                whole = False
                break
            mine.append(row)
            self.position = n
        if mine:
            out.append(self._encode(mine))
            self.sent += len(mine)
        return whole

    def serve(self) -> bool:
        """At a tick of the pacer while this follower rests: send what the commits since its last
        chunk brought, as :meth:`_live` would, when it is only records and they follow the
        position without a gap (each commit's text is the one every follower of the job
        shares), straight to the socket. True if it was all sent: the follower rests on. False,
        and nothing is taken from the queue, for anything else (nothing queued, a state change,
        the job's end, a gap, a lost queue, another send under way, its credentials to be asked
        again): the follower wakes and sees to it. A socket that takes part of the chunk leaves
        the rest to the follower, woken."""
        live, direct = self._live_sub, self.direct
        if live is None or direct is None or live.lost or not live.pending or self._cut or self._recheck_due():
            return False  # (the credentials are asked again by the follower itself, woken)
        position = self.position
        count = 0
        texts: list[bytes] = []
        for event in live.pending:
            if type(event) is not RecordsCommitted:
                return False
            rows = event.rows
            first = rows[0][1]
            if first != position + 1 or rows[-1][1] - first != len(rows) - 1:
                return False
            texts.append(event.sse(self._encode))
            position = rows[-1][1]
            count += len(rows)
        rest = direct.write(texts[0] if len(texts) == 1 else b"".join(texts))
        if rest is None:
            return False
        live.take()
        self.position = position
        self.sent += count
        self._idle_since = trio.current_time()
        if rest:
            self._unsent = rest
            return False
        return True

    def _snapshot(self, at: int) -> bytes:
        """The stream's start, :data:`SNAPSHOT_RUNS` runs' states from the ``at``-th run: the first
        also has the reconnection delay and the job's state."""
        head = "retry: 1000\n\n" + sse("job", job_data(self.job)) if at == 0 else ""
        return (head + "".join(sse("run", run_data(r)) for r in self.runs[at : at + SNAPSHOT_RUNS])).encode()

    def _states(self, journal: Journal) -> tuple[JobView, list[RunView]]:
        return journal.job(self.job.id), journal.runs(self.job.id)

    def _final(self, journal: Journal) -> bytes:
        """Every run's state and the job's end, the stream's last chunk. Once the job has ended
        it is the same for every follower, so it is made once and kept with the broadcaster
        (:meth:`~.broadcast.Broadcaster.final`), under the job's end (a job resumed and ended again
        has another): a fleet job's runs are many, and its followers all end at once."""
        job = journal.job(self.job.id)

        def make() -> bytes:
            runs = journal.runs(self.job.id)
            return ("".join(sse("run", run_data(r)) for r in runs) + sse("end", job_data(job))).encode()

        if job.state.active or not job.stored_state.terminal:
            return make()
        key = (job.id, job.state, job.stored_state, job.finished_at, job.cancel_requested)
        return self.service.broadcaster.final(key, make)

    async def _finish(self) -> AsyncIterator[bytes]:
        async for text in self._catch_up():
            yield text
        if self.still_allowed():
            yield await self.service.read(self._final)

    async def _ended_elsewhere(self) -> bool:
        """Whether the job has ended, for a job this agent does not run (or whose end it missed)."""
        if self.job.id in self.service.running:
            return False
        job_id = self.job.id
        job = await self.service.read(lambda j: j.job(job_id))
        return not job.state.active

    async def events(self) -> AsyncGenerator[bytes, None]:
        service = self.service
        with service.broadcaster.subscribe(self.job.id) as live:
            service.metrics.followers.inc()
            try:
                # Every run's state, a few a chunk with a checkpoint between two: a fleet job's
                # runs are hundreds, and their text made in one step held the event loop a
                # millisecond or more for each follower that started.
                for at in range(0, max(len(self.runs), 1), SNAPSHOT_RUNS):
                    if at:
                        await trio.lowlevel.checkpoint()
                    yield self._snapshot(at)
                async for text in self._catch_up():
                    yield text
                if not self.job.state.active:
                    async for text in self._finish():
                        yield text
                    return
                async for text in self._live(live):
                    yield text
            finally:
                service.metrics.followers.dec()
                service.metrics.records_streamed.inc(self.sent)

    async def _live(self, live: Subscription) -> AsyncIterator[bytes]:
        """What commits bring, at most one chunk per tick of the pacer, until the job ends."""
        service = self.service
        self._live_sub = live
        self._idle_since = trio.current_time()
        serve = self.serve if self.direct is not None else None
        while self.still_allowed():
            if not live.pending and not live.lost:
                # A running job brings its commits and its end here, and its leaving the running
                # jobs wakes this wait (AgentService.job_left): only the keep-alive is timed. Any
                # other job's end may come without an event: the journal is read every
                # IDLE_POLL. (Nothing runs between the look at ``running`` and the wait.)
                here = self.job.id in service.running
                with trio.move_on_at(self._idle_since + KEEPALIVE if here else trio.current_time() + IDLE_POLL):
                    await live.wait()
                if not live.pending and not live.lost:
                    if self.job.id not in service.running:
                        async for text in self._catch_up():
                            self._idle_since = trio.current_time()
                            yield text
                        if await self._ended_elsewhere():
                            async for text in self._finish():
                                yield text
                            return
                    if trio.current_time() >= self._idle_since + KEEPALIVE:  # the deadline above, to the float
                        self._idle_since = trio.current_time()
                        yield b": keep-alive\n\n"
                    continue
            if not self.still_allowed():  # asked again after the wait, before anything is sent
                return
            batch, lost = live.take()
            out: list[bytes] = []
            ended = False
            for event in batch:
                if type(event) is RecordsCommitted:
                    if not self._committed(event, out):
                        if out:
                            yield b"".join(out)
                            out = []
                        async for text in self._catch_up():
                            yield text
                        self._committed(event, out)  # what is past the journal's read
                elif isinstance(event, RunChanged):
                    out.append(sse("run", changed_data(event)).encode())
                elif isinstance(event, JobEnded):
                    ended = True
            if lost and not ended:
                # Records and state events were dropped: the records are in the journal, and the
                # runs' states are sent again as snapshots (or the end, if the job has ended).
                if out:
                    yield b"".join(out)
                    out = []
                async for text in self._catch_up():
                    yield text
                job, runs = await service.read(self._states)
                ended = not job.state.active
                if not ended:
                    out.append("".join(sse("run", run_data(r)) for r in runs).encode())
            if ended:
                if out:
                    yield b"".join(out)
                async for text in self._finish():
                    yield text
                return
            if out:
                yield b"".join(out)
                self._idle_since = trio.current_time()
                # What comes meanwhile: the next chunk, sent by the tick itself while it can be.
                await service.broadcaster.pacer.rest(COALESCE, serve)
                if self._unsent:
                    assert self.direct is not None
                    unsent, self._unsent = self._unsent, b""
                    await self.direct.send_rest(unsent)


class EventStream(Response):
    """A follower's events as an HTTP response, each chunk it yields handed to the server as one
    body message, with nothing in between: no encoding (the chunks are bytes) and no task group
    of another library. The client's disconnect is noticed by a task waiting for it, which stops
    the stream at once, even while the follower waits for commits.

    The response's start goes through the application's middleware (which adds the security
    headers and notes that the response has started); its body goes past the wrappers each
    middleware puts around ``send`` (none of them looks at a body, and each cost every chunk a
    call): on an HTTP/1.x connection of the agent's, each chunk is framed here and written to the
    socket, or over TLS handed to the server's TCP server under its send lock
    (:func:`~.connection.body_writer`); otherwise it goes to the server's own ``send`` when the
    application put it in the scope (:data:`SERVER_SEND`). The body's end always goes to the
    server's ``send``, which ends it as HTTP has it."""

    media_type = "text/event-stream"

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        headers: Mapping[str, str],
        on_writer: Callable[[BodyWriter], None] | None = None,
    ) -> None:
        self.chunks = chunks
        self.on_writer = on_writer
        self.status_code = 200
        self.background = None
        self.init_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            body: Send = scope.get(SERVER_SEND, send)
            direct = body_writer(scope)
            if direct is not None and self.on_writer is not None:
                self.on_writer(direct)
            async with aclosing(self.chunks) as chunks:
                async for chunk in chunks:
                    if direct is not None:
                        rest = direct.write(chunk)
                        if rest is not None:
                            if rest:
                                await direct.send_rest(rest)
                            continue
                    await body({"type": "http.response.body", "body": chunk, "more_body": True})
            await body({"type": "http.response.body", "body": b"", "more_body": False})
            nursery.cancel_scope.cancel()
