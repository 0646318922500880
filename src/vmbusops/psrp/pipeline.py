"""A running pipeline as its caller sees it: the records it yields, its stop.

The pool's reader (:mod:`.client`) feeds a pipeline through its underscore methods - a record to
deliver, the final state, the pool breaking - and the caller iterates it. Stopping goes back
through the pool, which owns the transport.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import deque
from typing import TYPE_CHECKING

import trio

from vmbusops.errors import VmbusOpsError
from vmbusops.psrp.hostcalls import EchoFilter
from vmbusops.psrp.psrpcore_private import ClientPipeline
from vmbusops.records import PipelineStateRecord, Record

if TYPE_CHECKING:
    from vmbusops.psrp.client import RunspacePool

__all__ = ["DEFAULT_STOP_TIMEOUT", "Pipeline"]

DEFAULT_STOP_TIMEOUT = 15.0


class Pipeline:
    """A running pipeline; iterate it for records. The last record is a PipelineStateRecord.

    Records wait in a bounded queue between the pool's reader and the consumer. The consumer
    wakes once per batch, not per record: one OutOfProc Data packet carries many records, and
    a trio task switch per record would cost more than decoding it; :meth:`take` hands over all
    that is queued at once, for a consumer that handles records in bulk. When the queue is full the
    reader waits, which stops reading from the host: memory stays bounded by the buffer, not by
    how much a guest prints.
    """

    def __init__(self, pool: RunspacePool, ps: ClientPipeline, buffer: int) -> None:
        self._pool = pool
        self.id: uuid.UUID = ps.pipeline_id
        self._capacity = max(1, buffer)
        self._queue: deque[Record] = deque()
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self._ended = False
        self.final: PipelineStateRecord | None = None
        self._abandoned = False
        self._echoes = EchoFilter()
        #: The N of a top-level ``exit N`` in the pipeline (its SetShouldExit host call), if any.
        self.exit_code: int | None = None
        self._command_sent = False
        self._started = False

    async def _deliver(self, record: Record) -> None:
        self._echoes.saw_record(record)
        while len(self._queue) >= self._capacity and not self._abandoned:
            await self._writable.park()
        if self._abandoned:
            return
        self._queue.append(record)
        if self._readable:
            self._readable.unpark_all()

    def _finish(self, record: PipelineStateRecord) -> None:
        if self.exit_code is not None and record.exit_code is None:
            record = dataclasses.replace(record, exit_code=self.exit_code)
        self.final = record
        if not self._abandoned:
            self._queue.append(record)  # never dropped, even past the bound (by one)
        self._end()

    def _break(self, exc: VmbusOpsError) -> None:
        self._end()

    def _end(self) -> None:
        self._ended = True
        self._readable.unpark_all()
        self._writable.unpark_all()

    def _abandon(self) -> None:
        """The consumer is gone: drop what is queued and whatever still arrives."""
        self._abandoned = True
        self._queue.clear()
        self._writable.unpark_all()

    # A plain async iterator, not an async generator: a caller may ``break`` out of the loop
    # and nothing is left waiting to be finalized.
    def __aiter__(self) -> Pipeline:
        return self

    async def _wait(self) -> bool:
        """Until something is queued (True), or the pipeline has ended with nothing left (False;
        a pool that broke under it raises)."""
        while not self._queue:
            if self._ended or self._abandoned:
                if self.final is None and not self._abandoned:
                    raise self._pool._broken_error()
                return False
            await self._readable.park()
        return True

    async def __anext__(self) -> Record:
        if not self._queue and not await self._wait():
            raise StopAsyncIteration
        # Honour cancellation even while a backlog drains without parking.
        await trio.lowlevel.checkpoint_if_cancelled()
        record = self._queue.popleft()
        if self._writable and len(self._queue) < self._capacity:
            self._writable.unpark_all()
        return record

    async def take(self) -> list[Record]:
        """Every record queued now, at least one, as :meth:`__anext__` would give them one by
        one; [] once the pipeline has ended and its last record was taken. A consumer that handles
        records in bulk takes a packet's worth (or more) for one wake and one cancellation check."""
        if not self._queue and not await self._wait():
            return []
        await trio.lowlevel.checkpoint_if_cancelled()
        records = list(self._queue)
        self._queue.clear()
        if self._writable:
            self._writable.unpark_all()
        return records

    async def collect(self) -> list[Record]:
        """Every record until the pipeline ends."""
        return [record async for record in self]

    @property
    def finished(self) -> bool:
        return self.final is not None

    async def stop(self, *, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Send a stop signal and wait (bounded) for the pipeline to reach a final state."""
        if self.final is not None or self._pool.broken:
            return
        self._abandon()
        with trio.move_on_after(timeout):
            await self._pool._signal(self.id)
            await self._pool._wait_pipeline_done(self)
