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


class _Ask:
    """One run's question to the journal: may it take its VM?"""

    __slots__ = ("done", "error", "holder", "run_id", "vm")

    def __init__(self, vm: str, run_id: int) -> None:
        self.vm = vm
        self.run_id = run_id
        self.done = trio.Event()
        self.holder: int | None = None
        self.error: BaseException | None = None


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
        self._asks: list[_Ask] = []
        self._asking = False
        #: Journal transactions that took leases, and the runs they asked for.
        self.transactions = 0
        self.asked = 0

    async def take(self, vm: str, run_id: int, *, waiting: Callable[[], None]) -> None:
        """Until ``run_id`` holds ``vm``; ``waiting`` is called each time it has to wait."""
        key = vm.casefold()
        while True:
            if key not in self._held:
                self._held[key] = run_id
                try:
                    holder = await self._ask(vm, run_id)
                except BaseException:
                    del self._held[key]
                    raise
                if holder is None:
                    return
                del self._held[key]
            waiting()
            await trio.sleep(self._poll)

    async def _ask(self, vm: str, run_id: int) -> int | None:
        """The journal's answer for ``vm``, asked in one transaction with every other run's that
        asks meanwhile: a job's runs start together, and each would otherwise be a transaction.
        Shielded, as the write is: an answer is never lost to a cancelled caller."""
        ask = _Ask(vm, run_id)
        self._asks.append(ask)
        with trio.CancelScope(shield=True):
            if self._asking:
                await ask.done.wait()
            else:
                self._asking = True
                try:
                    while self._asks:
                        # Let the runs ready in this pass of the scheduler ask first.
                        await trio.lowlevel.cancel_shielded_checkpoint()
                        asks, self._asks = self._asks, []
                        self.transactions += 1
                        self.asked += len(asks)
                        wanted = [(a.vm, a.run_id) for a in asks]
                        try:
                            holders = await self._writer.call(
                                self._journal.try_lease_vms, wanted, self._owner, time.time()
                            )
                        except BaseException as exc:
                            for a in asks:
                                a.error = exc
                                a.done.set()
                            continue
                        for a, holder in zip(asks, holders, strict=True):
                            a.holder = holder
                            a.done.set()
                finally:
                    self._asking = False
        if ask.error is not None:
            raise ask.error
        return ask.holder

    async def release(self, vm: str, run_id: int) -> None:
        """Release the lease in the writer's next batch (with the run's end) and commit it."""
        key = vm.casefold()
        try:
            self._writer.release_vm(vm, run_id)
            await self._writer.commit()
        finally:
            if self._held.get(key) == run_id:
                del self._held[key]


__all__ = ["VmLeases"]
