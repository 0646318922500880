"""The simulated fleet: which host owns each VM, live migration, and a node that dies.

A lab may declare several hosts (``[[hosts]]``, some of them nodes of a failover cluster); every
simulator process of the lab shares one state directory, and the state says which host owns each
VM now (:attr:`~vmbusops.sim.state.VMRuntime.host`) and which hosts are down. A simulator started
``--as HV-B`` (host spec ``sim:HV-B``) serves that host: it sees only the VMs HV-B owns now
(:mod:`vmbusops.sim.hyperv`).

The operations here change the shared state under its lock, so every simulator process sees
them at once:

- :func:`migrate_vm`: a live migration to another node of the VM's cluster. The guest keeps
  running (same boot, same files); a PowerShell Direct session open on the old host breaks
  (see :data:`vmbusops.sim.hyperv.OWNER_POLL_SECONDS`), and the new owner answers for the VM.
- :func:`fail_host`: a node dies. Its clustered VMs fail over, round robin, to the live nodes of
  its cluster and restart there (a failover is a cold boot: ``boot_seconds`` of NoContact, as
  after Start-VM); the VMs of a lone host, or of a cluster with no live node left, stay owned by
  the dead host, unreachable. The dead host's simulator processes exit, and a new one refuses to
  serve it until :func:`restore_host`.
- :func:`restore_host`: the node is back. VMs do not fail back (failover clustering's default);
  the VMs still owned by it were running when it died, so they boot again now (Hyper-V's
  automatic start action, "restart if previously running").

The errors are the failover cluster's own Win32 texts (winerror.h: ``ERROR_CLUSTER_NODE_NOT_FOUND``
0x13B2 "The cluster node was not found.", ``ERROR_CLUSTER_NODE_DOWN`` 0x13BA "The cluster node is
down.") followed by what the lab says about it, as :class:`~vmbusops.errors.ConfigError`: one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from vmbusops.errors import ConfigError
from vmbusops.sim.lab import HostSpec, Lab, VMSpec, VMState
from vmbusops.sim.state import FleetState, HostStore, VMRuntime

NODE_NOT_FOUND = "The cluster node was not found. (0x800713B2)"
NODE_DOWN = "The cluster node is down. (0x800713BA)"


class ClusterOperationError(ConfigError):
    """A migration or failover the lab refuses (unknown VM or host, another cluster, a dead node)."""


@dataclass(frozen=True, slots=True)
class Move:
    """One VM that changed owner (or, ``to`` None, stayed on a dead host); ``restarted`` when it
    booted again (a failover, a restored host)."""

    vm: str
    source: str
    to: str | None
    restarted: bool


def _host(lab: Lab, name: str, what: str) -> HostSpec:
    host = lab.find_host(name)
    if host is None:
        raise ClusterOperationError(
            f"{what}: {NODE_NOT_FOUND} ({name!r} is not a host of the lab {lab.source})",
            hint=f"the lab's hosts: {', '.join(h.name for h in lab.hosts[:10])}"
            + (" ..." if len(lab.hosts) > 10 else ""),
        )
    return host


def _vm(lab: Lab, name: str) -> VMSpec:
    spec = lab.find(name) or lab.find_by_id(name)
    if spec is None:
        raise ClusterOperationError(
            f'Hyper-V was unable to find a virtual machine with name "{name}".',
            hint=f"the lab {lab.source} has no such VM; see vmbusops lab status",
        )
    return spec


def migrate_vm(store: HostStore, vm: str, to: str) -> Move:
    """Live-migrate ``vm`` (name or id) to host ``to``, a live node of the same cluster.

    Refused (:class:`ClusterOperationError`, nothing changes) for an unknown VM or host, a VM on a
    lone host or a host of another cluster, a dead source or target node. A VM already on ``to``
    is left alone (``Move.source == Move.to``)."""
    lab = store.lab
    spec = _vm(lab, vm)
    target = _host(lab, to, f"Live migration of '{spec.name}' failed")
    result: list[Move] = []

    def change(state: FleetState) -> FleetState:
        key = spec.name.casefold()
        rt = state.vms[key]
        where = f"Live migration of '{spec.name}' from '{rt.host}' to '{target.name}' failed"
        source = lab.find_host(rt.host) or HostSpec(name=rt.host)
        if source.name == target.name:
            result.append(Move(spec.name, source.name, target.name, restarted=False))
            return state
        if source.cluster is None or source.cluster != target.cluster:
            detail = (
                f"{source.name} is not a node of a cluster"
                if source.cluster is None
                else f"{target.name} is not a node of {source.name}'s cluster {source.cluster}"
            )
            raise ClusterOperationError(
                f"{where}: {NODE_NOT_FOUND} ({detail}; a VM moves only between nodes of its failover cluster)"
            )
        for node in (source, target):
            if node.name in state.down:
                raise ClusterOperationError(
                    f"{where}: {NODE_DOWN} ({node.name} failed)",
                    hint=f"bring it back with: vmbusops lab restore-host {node.name}",
                )
        state.vms[key] = replace(rt, host=target.name, moves=rt.moves + 1)
        result.append(Move(spec.name, source.name, target.name, restarted=False))
        return state

    store.transact(change)
    return result[0]


def fail_host(store: HostStore, host: str, *, clock: Callable[[], float] = time.time) -> list[Move]:
    """The node ``host`` dies: its clustered VMs fail over round robin to the live nodes of its
    cluster and restart there; the others stay on it, unreachable. Returns every VM it owned, in
    lab order. Failing a host that is already down changes nothing (and returns no moves)."""
    lab = store.lab
    node = _host(lab, host, "Failing the host")
    moves: list[Move] = []

    def change(state: FleetState) -> FleetState:
        moves.clear()
        if node.name in state.down:
            return state
        down = state.down | {node.name}
        live = [
            h.name for h in lab.hosts if node.cluster is not None and h.cluster == node.cluster and h.name not in down
        ]
        now = clock()
        turn = 0
        for spec in lab.vms:
            key = spec.name.casefold()
            rt = state.vms[key]
            if rt.host != node.name:
                continue
            if not live:
                moves.append(Move(spec.name, node.name, None, restarted=False))
                continue
            target = live[turn % len(live)]
            turn += 1
            moved = replace(rt, host=target, moves=rt.moves + 1)
            restart = rt.state in (VMState.RUNNING, VMState.PAUSED)
            if restart:
                moved = moved.started(now, lab.host.boot_seconds)
            state.vms[key] = moved
            moves.append(Move(spec.name, node.name, target, restarted=restart))
        return FleetState(vms=state.vms, down=down)

    store.transact(change)
    return moves


def restore_host(store: HostStore, host: str, *, clock: Callable[[], float] = time.time) -> list[Move]:
    """The node ``host`` is back: it serves again, and the running VMs it still owns boot again.
    Returns those VMs. Restoring a host that is up changes nothing."""
    lab = store.lab
    node = _host(lab, host, "Restoring the host")
    booted: list[Move] = []

    def change(state: FleetState) -> FleetState:
        booted.clear()
        if node.name not in state.down:
            return state
        now = clock()
        for spec in lab.vms:
            key = spec.name.casefold()
            rt = state.vms[key]
            if rt.host == node.name and rt.state in (VMState.RUNNING, VMState.PAUSED):
                # A new boot: a session from before the crash is as broken as after a move.
                state.vms[key] = replace(rt.started(now, lab.host.boot_seconds), moves=rt.moves + 1)
                booted.append(Move(spec.name, node.name, node.name, restarted=True))
        return FleetState(vms=state.vms, down=state.down - {node.name})

    store.transact(change)
    return booted


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one VM is now, for ``vmbusops lab status``."""

    vm: str
    host: str
    cluster: str | None
    state: str
    reachable: bool


def placements(store: HostStore) -> tuple[list[Placement], frozenset[str]]:
    """Every VM's owner now, in lab order, and the hosts that are down."""
    lab = store.lab
    snapshot = store.snapshot()
    down = store.down_hosts()
    out = []
    for spec in lab.vms:
        rt: VMRuntime = snapshot[spec.name.casefold()]
        host = lab.find_host(rt.host)
        out.append(
            Placement(
                vm=spec.name,
                host=rt.host,
                cluster=host.cluster if host is not None else None,
                state=rt.state.value,
                reachable=rt.host not in down,
            )
        )
    return out, down


def serving(lab: Lab, name: str) -> HostSpec:
    """The host a simulator started ``--as name`` serves; :class:`ConfigError` when the lab has none."""
    host = lab.find_host(name)
    if host is None:
        raise ConfigError(
            f"the lab {lab.source} has no host named {name!r}",
            hint=f"its hosts: {', '.join(h.name for h in lab.hosts[:10])}" + (" ..." if len(lab.hosts) > 10 else ""),
        )
    return host


def host_down_error(name: str) -> ConfigError:
    return ConfigError(
        f"the simulated Hyper-V host {name} is down (vmbusops lab fail-host)",
        hint=f"bring it back with: vmbusops lab restore-host {name}",
    )


__all__ = [
    "ClusterOperationError",
    "Move",
    "Placement",
    "fail_host",
    "migrate_vm",
    "placements",
    "restore_host",
    "serving",
]
