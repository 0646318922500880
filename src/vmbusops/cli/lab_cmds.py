"""``vmbusops lab``: the simulated fleet's placement, live migration and node failure, for demos and tests.

A lab with several hosts (``[[hosts]]``) runs one simulator per host (``--host sim:HOST``), all over
one state directory; these commands change that state as a cluster would (:mod:`vmbusops.sim.cluster`),
and every simulator process sees the change at once::

    vmbusops lab status                      # where each VM is, its checkpoints, which hosts are down
    vmbusops lab migrate web01 --to HV-B     # live migration within web01's cluster
    vmbusops lab fail-host HV-A              # the node dies: its VMs fail over and restart
    vmbusops lab restore-host HV-A           # the node is back

The lab and the state directory are the simulator's: ``--lab`` (default ``$VMBUSOPS_LAB`` or
``[sim] lab``) and ``--state-dir`` (default ``$VMBUSOPS_SIM_STATE``, else ``$VMBUSOPS_HOME/sim``).
A refused operation (an unknown VM or host, another cluster, a dead node) is a usage error (exit 2).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from vmbusops.cli.common import load
from vmbusops.cli.output import terminal_safe


def _options(fn: Any) -> Any:
    fn = click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="The simulator's state directory (default: $VMBUSOPS_SIM_STATE, else "
                      "$VMBUSOPS_HOME/sim).")(fn)  # fmt: skip
    fn = click.option("--lab", "lab_path", type=click.Path(dir_okay=False), default=None,
                      help="The lab file (default: $VMBUSOPS_LAB, [sim] lab, else the built-in lab).")(fn)  # fmt: skip
    return click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")(fn)


@contextmanager
def _store(lab_path: str | None, state_dir: Path | None) -> Iterator[Any]:
    from vmbusops.sim import default_state_dir
    from vmbusops.sim.lab import load_lab
    from vmbusops.sim.state import HostStore

    lab = load_lab(lab_path or load().lab)
    store = HostStore(lab, state_dir or default_state_dir())
    try:
        yield store
    finally:
        store.close()


def _moves(moves: list[Any], as_json: bool, action: str, host: str) -> None:
    if as_json:
        click.echo(json.dumps({
            "action": action, "host": host,
            "vms": [{"vm": m.vm, "from": m.source, "to": m.to, "restarted": m.restarted} for m in moves],
        }))  # fmt: skip
        return
    for m in moves:
        if m.to is None:
            click.echo(f"{terminal_safe(m.vm)}: stays on {m.source}, unreachable (no live node of a cluster to fail over to)")
        elif m.to == m.source:
            click.echo(f"{terminal_safe(m.vm)}: boots again on {m.to}")
        else:
            click.echo(f"{terminal_safe(m.vm)}: {m.source} -> {m.to}" + (", restarted" if m.restarted else ""))


@click.group("lab")
def lab() -> None:
    """The simulated fleet: where VMs are, live migration, and hosts that fail (see vmbusops.sim.cluster)."""


@lab.command("status")
@_options
def status_cmd(lab_path: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Show each VM's host now, its checkpoints, and the hosts that are down."""
    from vmbusops.sim.cluster import placements

    with _store(lab_path, state_dir) as store:
        rows, down = placements(store)
        hosts = [(h.name, h.cluster, h.name in down) for h in store.lab.hosts]
        runtimes = store.snapshot()
        # Each VM's checkpoints, oldest first (vmbusops.sim.checkpoints).
        checkpoints = {
            r.vm: [{"name": c.name, "id": c.id, "production": c.production, "state": c.state, "created": c.created}
                   for c in runtimes[r.vm.casefold()].checkpoints]
            for r in rows
        }  # fmt: skip
    if as_json:
        click.echo(json.dumps({
            "hosts": [{"host": n, "cluster": c, "down": d} for n, c, d in hosts],
            "vms": [{"vm": r.vm, "host": r.host, "cluster": r.cluster, "state": r.state, "reachable": r.reachable,
                     "checkpoints": checkpoints[r.vm]}
                    for r in rows],
        }))  # fmt: skip
        return
    for name, cluster, is_down in hosts:
        click.echo(f"host {name}  cluster {cluster or '-'}  {'DOWN' if is_down else 'up'}")
    for r in rows:
        where = r.host if r.reachable else f"{r.host} (down: unreachable)"
        held = ", ".join(terminal_safe(c["name"]) for c in checkpoints[r.vm])
        click.echo(f"{terminal_safe(r.vm)}  {r.state}  on {where}" + (f"  checkpoints: {held}" if held else ""))


@lab.command("migrate")
@click.argument("vm")
@click.option("--to", "to", required=True, metavar="HOST", help="The node of the VM's cluster to move it to.")
@_options
def migrate_cmd(vm: str, to: str, lab_path: str | None, state_dir: Path | None, as_json: bool) -> None:
    """Live-migrate VM to another node of its cluster: the guest keeps running; PowerShell Direct
    sessions open on the old host break."""
    from vmbusops.sim.cluster import migrate_vm

    with _store(lab_path, state_dir) as store:
        move = migrate_vm(store, vm, to)
    if as_json:
        _moves([move], True, "migrate", move.source)
    elif move.source == move.to:
        click.echo(f"{terminal_safe(move.vm)} is already on {move.to}")
    else:
        click.echo(f"{terminal_safe(move.vm)}: {move.source} -> {move.to} (live migration)")


@lab.command("fail-host")
@click.argument("host")
@_options
def fail_host_cmd(host: str, lab_path: str | None, state_dir: Path | None, as_json: bool) -> None:
    """HOST dies: its clustered VMs fail over (round robin) to the live nodes of its cluster and
    restart there; its simulator processes exit and it serves nothing until restore-host."""
    from vmbusops.sim.cluster import fail_host

    with _store(lab_path, state_dir) as store:
        moves = fail_host(store, host)
    _moves(moves, as_json, "fail-host", host)
    if not as_json and not moves:
        click.echo(f"{host} is down (it owned no VM, or it was already down)")


@lab.command("restore-host")
@click.argument("host")
@_options
def restore_host_cmd(host: str, lab_path: str | None, state_dir: Path | None, as_json: bool) -> None:
    """HOST is back: it serves again; the running VMs it still owns boot again (VMs do not fail back)."""
    from vmbusops.sim.cluster import restore_host

    with _store(lab_path, state_dir) as store:
        booted = restore_host(store, host)
    _moves(booted, as_json, "restore-host", host)
    if not as_json:
        click.echo(f"{host} is up")
