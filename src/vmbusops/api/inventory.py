"""The host's VM list, shared by the submissions of a short moment.

Every submission resolves its targets against the host's VMs (twice: the scope check, then the
engine). On a host with many VMs, ``Get-VM`` is the most expensive part of a submission, and a
burst of submissions would ask for the same list over and over. :class:`InventoryCachingHost`
answers a full listing from a copy at most ``ttl`` seconds old, fetched once for all callers
waiting at that moment; every other host operation (and a listing by name) goes to the host.
A VM created within ``ttl`` may be missed by a glob target; a target named exactly is kept by
the engine anyway and fails, if the VM does not exist, with Hyper-V's own message.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from vmbusops.guestops.host import HyperVHost, VMInfo


class InventoryCachingHost(HyperVHost):
    def __init__(self, host: HyperVHost, *, ttl: float = 2.0) -> None:
        super().__init__(host.pool)
        self.ttl = ttl
        self._listing: list[VMInfo] | None = None
        self._at = -float("inf")
        self._lock = trio.Lock()

    async def list_vms(self, names: Sequence[str] | None = None) -> list[VMInfo]:
        if names:
            return await super().list_vms(names)
        async with self._lock:
            if self._listing is None or trio.current_time() - self._at > self.ttl:
                self._listing = await super().list_vms()
                self._at = trio.current_time()
            return list(self._listing)
