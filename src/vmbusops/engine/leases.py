"""A run's hold on its VM: no other job, and no other process, touches the VM meanwhile.

Two levels: the engine's own table (two jobs of this engine racing for one VM settle here, without
a journal write), then the journal's ``vm_leases`` (another process's engine; a lease of a dead
owner is taken over). A run waiting for its VM polls every ``poll_interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio

from vmbusops.engine.journal import Journal
from vmbusops.engine.writer import JournalWriter
from vmbusops.owner import Owner


class VmLeases:
    def __init__(
        self, journal: Journal, writer: JournalWriter, owner: Owner, *, poll_interval: float
    ) -> None:
        self._journal = journal
        self._writer = writer
        self._owner = owner
        self._poll = poll_interval
        #: VM (casefolded) -> the run of this engine that holds it.
        self._held: dict[str, int] = {}

    async def take(self, vm: str, run_id: int, *, waiting: Callable[[], None]) -> None:
        """Until ``run_id`` holds ``vm``; ``waiting`` is called each time it has to wait."""
        key = vm.casefold()
        while True:
            if key not in self._held:
                self._held[key] = run_id
                try:
                    holder = await self._writer.call(
                        self._journal.try_lease_vm, vm, run_id, self._owner, time.time()
                    )
                except BaseException:
                    del self._held[key]
                    raise
                if holder is None:
                    return
                del self._held[key]
            waiting()
            await trio.sleep(self._poll)

    async def release(self, vm: str, run_id: int) -> None:
        key = vm.casefold()
        try:
            await self._writer.call(self._journal.release_vm, vm, run_id)
        finally:
            if self._held.get(key) == run_id:
                del self._held[key]


__all__ = ["VmLeases"]
