"""A fleet agent's presence on the broker: its host entry and the placement of its VMs.

Host entry (KV ``vmbusops_hosts``, key = the host's fleet name), put every heartbeat::

    {"host": "hv01", "cluster": "c1" | null, "boot": "<uuid hex, one per agent process>",
     "seq": 1, 2, ..., "time": <seconds since the epoch>,
     "vms": [{"vm": "web01", "vm_id": "<lowercase guid>", "state": "Running",
              "groups": ["web-tier"], "tags": ["web"]}, ...],
     "max_sessions": 32, "groups": ["web-tier", ...], "protocol": 2}

A VM row has ``groups`` and ``tags`` only when it has some, the entry ``groups`` only when the
host has any (:mod:`vmbusops.fleet.vm_labels`: how the controller resolves a bundle's groups and
tags over the fleet). ``protocol`` is the newest fleet protocol the agent reads
(:data:`vmbusops.fleet.messages.VERSION`; an entry without it is an agent of protocol 1): the
controller writes the host's work in it.

The controller judges a host alive while the entry's revision keeps changing; a new ``boot``
tells it the agent process is new (its runs of the old process were not resumed here).

Placement (KV ``vmbusops_placement``, key = the VM's lowercase id)::

    {"vm": "web01", "vm_id": "<lowercase guid>", "host": "hv01", "cluster": "c1" | null,
     "state": "Running", "boot": "<uuid hex>"}

:class:`Placement` writes an entry only for a VM its host lists now, and only when it differs
from what is stored, with compare-and-set (create when absent, else update on the revision it
read; a conflict is read again at the next beat). A VM listed here is here, so its entry is
written even if it names another host, with one exception: while a live migration shows the VM
on both hosts, the copy that is not running does not take the entry from a host whose copy is
(the migration's destination writes once its copy runs). An entry is never deleted: when the VM
leaves, the host that lists it next takes the entry over.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vmbusops.fleet.broker import Broker, BrokerError
from vmbusops.fleet.messages import VERSION
from vmbusops.fleet.names import HOSTS_BUCKET, PLACEMENT_BUCKET
from vmbusops.guestops.host import HyperVHost, VMInfo

log = logging.getLogger("vmbusops.fleet.agent")


def _dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")


def vm_rows(vms: Sequence[VMInfo], labels: Mapping[str, Mapping[str, list[str]]] | None = None) -> list[dict[str, Any]]:
    """A row per VM; ``labels`` (:func:`vmbusops.fleet.vm_labels.labels_of`) adds its groups and tags."""
    return [
        {"vm": vm.name, "vm_id": vm.id.lower(), "state": vm.state, **(labels or {}).get(vm.id.lower(), {})}
        for vm in vms
    ]


def host_entry(
    *,
    host: str,
    cluster: str | None,
    boot: str,
    seq: int,
    vms: Sequence[VMInfo],
    max_sessions: int,
    now: float | None = None,
    labels: Mapping[str, Mapping[str, list[str]]] | None = None,
    groups: Sequence[str] = (),
) -> bytes:
    return _dumps({
        "host": host, "cluster": cluster, "boot": boot, "seq": seq,
        "time": time.time() if now is None else now, "vms": vm_rows(vms, labels), "max_sessions": max_sessions,
        **({"groups": list(groups)} if groups else {}), "protocol": VERSION,
    })  # fmt: skip


def placement_entry(vm: VMInfo, *, host: str, cluster: str | None, boot: str) -> bytes:
    return _dumps({
        "vm": vm.name, "vm_id": vm.id.lower(), "host": host, "cluster": cluster, "state": vm.state, "boot": boot,
    })  # fmt: skip


async def put_host_entry(broker: Broker, host: str, entry: bytes) -> int:
    return await broker.kv_put(HOSTS_BUCKET, host, entry)


@dataclass
class Placement:
    """Keeps the placement entries of this host's VMs current (compare-and-set)."""

    broker: Broker
    host: str
    cluster: str | None
    boot: str
    #: vm id -> (revision, value) as this process last wrote or read it.
    known: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    writes: int = 0
    conflicts: int = 0

    async def update(self, vms: Sequence[VMInfo]) -> None:
        """Write the entries of ``vms`` that changed. A broker error stops this pass (the next
        beat tries again); a conflict leaves that VM for the next beat."""
        for vm in vms:
            key = vm.id.lower()
            if not key:
                continue
            value = placement_entry(vm, host=self.host, cluster=self.cluster, boot=self.boot)
            cached = self.known.get(key)
            if cached is not None and cached[1] == value:
                continue
            await self._write(key, value, vm, cached)

    async def _write(self, key: str, value: bytes, vm: VMInfo, cached: tuple[int, bytes] | None) -> None:
        if cached is not None:
            # What we wrote last is most likely still there: update on its revision, no read.
            revision = await self.broker.kv_update(PLACEMENT_BUCKET, key, value, last=cached[0])
            if revision is not None:
                self._wrote(key, revision, value)
                return
            self.known.pop(key, None)
        stored = await self.broker.kv_get(PLACEMENT_BUCKET, key)
        if stored is None:
            revision = await self.broker.kv_create(PLACEMENT_BUCKET, key, value)
        elif stored.value == value:
            self.known[key] = (stored.revision, value)
            return
        elif not vm.running and _running_elsewhere(stored.value, self.host):
            return
        else:
            revision = await self.broker.kv_update(PLACEMENT_BUCKET, key, value, last=stored.revision)
        if revision is None:
            self.conflicts += 1
            log.info("placement changed meanwhile; read again next beat", extra={"event": "placement-conflict", "vm": vm.name})
            return
        self._wrote(key, revision, value)

    def _wrote(self, key: str, revision: int, value: bytes) -> None:
        self.known[key] = (revision, value)
        self.writes += 1


@dataclass(frozen=True, slots=True)
class LastListing:
    """``host`` with its full VM listing answered from ``vms``, the fleet agent's last (at most
    its ``list_every`` old): a finished run's receipt (:func:`vmbusops.receipts.receipt_hook`)
    takes its VM's id from there instead of having ``Get-VM`` asked again as runs end. A listing
    by name, or a fresh one, is the host's."""

    host: HyperVHost
    vms: Sequence[VMInfo]

    async def list_vms(self, names: Sequence[str] | None = None, *, fresh: bool = False) -> list[VMInfo]:
        if names or fresh:
            return await self.host.list_vms(names, fresh=fresh)
        return list(self.vms)


def _running_elsewhere(stored: bytes, host: str) -> bool:
    try:
        doc = json.loads(stored)
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("host") != host and doc.get("state") == "Running"


__all__ = ["BrokerError", "LastListing", "Placement", "host_entry", "placement_entry", "put_host_entry", "vm_rows"]
