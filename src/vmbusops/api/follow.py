"""A job's records and state changes as Server-Sent Events, resumable without gap or repeat.

Theory of operation
-------------------
A follower subscribes to the job's live events *before* it reads the journal, then sends from
the journal everything after its :class:`~.cursor.Cursor` (catch-up), then live events. Every
record moves the cursor only if it is the next seq of its run, so whatever order live events and
journal rows arrive in, a record is sent at most once and never after a later one of its run:

* a live record at or below the cursor was already sent from the journal: skipped;
* a live record beyond the next one means some were not seen live (published before the
  subscription, or dropped because this follower fell behind): the follower catches up from the
  journal, which has every record once flushed (within the writer's flush interval); until then
  the live record is dropped and fetched with the rest on the next catch-up;
* the stream ends when the job does (:class:`~.broadcast.JobEnded`, or for a job another process
  runs, its state in the journal) after a last catch-up: the engine commits every record before
  the job's final state, so nothing is left behind.

Each record event's ``id`` is the cursor after it. A client reconnects with ``Last-Event-ID``
(or ``?after=``) and continues exactly there. State events (``job``, ``run``) carry no id: they
are snapshots, sent again in full on every (re)connection.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio

from vmbusops.api.broadcast import JobEnded
from vmbusops.api.cursor import Cursor
from vmbusops.api.service import AgentService
from vmbusops.engine import RecordArrived, RunChanged
from vmbusops.engine.journal import JobView, RecordView, RunView
from vmbusops.records import record_to_json

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

#: How long a follower waits for live events before it looks at the journal itself.
IDLE_POLL = 0.5
#: While a gap is open, how soon the journal is read again.
GAP_POLL = 0.02
KEEPALIVE = 15.0
CATCH_UP_BATCH = 5000
LIVE_BATCH = 512


def sse(event: str, data: dict[str, Any], ident: str | None = None) -> str:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {_dumps(data)}\n\n"


def job_data(job: JobView) -> dict[str, Any]:
    return {"job": job.id, "state": job.state.value, "cancel_requested": job.cancel_requested}


def run_data(run: RunView) -> dict[str, Any]:
    return {"vm": run.vm, "state": run.state.value, "step": run.current_step, "error": run.error}


def record_data(vm: str, seq: int, time: float, step: str | None, content: dict[str, Any]) -> dict[str, Any]:
    """The same object ``vmbusops logs --json`` prints for a record."""
    return {"vm": vm, "seq": seq, "time": time, "step": step, **content}


class JobFollower:
    def __init__(self, service: AgentService, job: JobView, runs: list[RunView], cursor: Cursor) -> None:
        self.service = service
        self.job = job
        self.runs = runs
        self.cursor = cursor
        self.run_of_vm = {r.vm: r.id for r in runs}
        self.sent = 0

    async def _catch_up(self) -> str:
        out: list[str] = []
        while True:
            batch: list[RecordView] = await self.service.read(
                lambda: self.service.reader.records(
                    self.job.id, after=self.cursor.as_after(), limit=CATCH_UP_BATCH
                )
            )
            for rec in _in_run_order(batch):
                if self.cursor.advance(rec.run_id, rec.seq):
                    out.append(
                        sse(
                            "record",
                            record_data(rec.vm, rec.seq, rec.time, rec.step, rec.content),
                            str(self.cursor),
                        )
                    )
            if len(batch) < CATCH_UP_BATCH:
                break
        self.sent += len(out)
        return "".join(out)

    def _live_record(self, event: RecordArrived) -> str | None:
        rec = event.record
        run_id = self.run_of_vm.get(rec.vm)
        if run_id is None or not self.cursor.advance(run_id, rec.seq):
            return None
        self.sent += 1
        data = record_data(rec.vm, rec.seq, rec.time, rec.step, record_to_json(rec.record))
        return sse("record", data, str(self.cursor))

    async def _finish(self) -> str:
        text = await self._catch_up()
        job = await self.service.read(self.service.reader.job, self.job.id)
        runs = await self.service.read(self.service.reader.runs, self.job.id)
        tail = "".join(sse("run", run_data(r)) for r in runs)
        return text + tail + sse("end", job_data(job))

    async def events(self) -> AsyncIterator[str]:
        service = self.service
        with service.broadcaster.subscribe(self.job.id) as live:
            service.metrics.followers.inc()
            try:
                yield (
                    "retry: 1000\n\n"
                    + sse("job", job_data(self.job))
                    + "".join(sse("run", run_data(r)) for r in self.runs)
                )
                text = await self._catch_up()
                if text:
                    yield text
                if not self.job.state.active:
                    yield await self._finish()
                    return
                gap = False
                idle_since = trio.current_time()
                while True:
                    first = None
                    with trio.move_on_after(GAP_POLL if gap else IDLE_POLL):
                        first = await live.receive()
                    if first is None:
                        chunk = await self._catch_up()
                        gap = False
                        if chunk:
                            idle_since = trio.current_time()
                            yield chunk
                        job = await service.read(service.reader.job, self.job.id)
                        if not job.state.active:
                            yield await self._finish()
                            return
                        if trio.current_time() - idle_since > KEEPALIVE:
                            idle_since = trio.current_time()
                            yield ": keep-alive\n\n"
                        continue
                    batch = [first]
                    while len(batch) < LIVE_BATCH:
                        try:
                            batch.append(live.receive_nowait())
                        except trio.WouldBlock:
                            break
                    out: list[str] = []
                    ended = False
                    for event in batch:
                        if isinstance(event, RecordArrived):
                            sent = self._live_record(event)
                            if sent is not None:
                                out.append(sent)
                            elif self._beyond(event):
                                gap = True
                        elif isinstance(event, RunChanged):
                            data = {
                                "vm": event.vm,
                                "state": event.state.value,
                                "step": event.step,
                                "error": event.error,
                            }
                            out.append(sse("run", data))
                        elif isinstance(event, JobEnded):
                            ended = True
                    if gap:
                        out.append(await self._catch_up())
                        # Whatever is still missing is not flushed yet: look again soon.
                        gap = any(isinstance(e, RecordArrived) and self._beyond(e) for e in batch)
                    if out:
                        idle_since = trio.current_time()
                        yield "".join(out)
                    if ended:
                        yield await self._finish()
                        return
            finally:
                service.metrics.followers.dec()
                service.metrics.records_streamed.inc(self.sent)

    def _beyond(self, event: RecordArrived) -> bool:
        """The record is past the next one of its run: some before it were not seen."""
        run_id = self.run_of_vm.get(event.record.vm)
        return run_id is not None and event.record.seq > self.cursor.seq(run_id)


def _in_run_order(batch: list[RecordView]) -> list[RecordView]:
    """The journal's order (by time), unless a clock step put a run's records out of seq order."""
    last: dict[int, int] = {}
    for rec in batch:
        if rec.seq < last.get(rec.run_id, 0):
            return sorted(batch, key=lambda r: (r.run_id, r.seq))
        last[rec.run_id] = rec.seq
    return batch
