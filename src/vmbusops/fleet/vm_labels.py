"""A bundle's ``groups`` and ``tags`` targets across the fleet: what agents report, how the
controller resolves them.

Theory of operation
-------------------
On Hyper-V a VM group lives on one host (``Get-VMGroup`` lists that host's groups; a VM that
live-migrates does not take its memberships along), and a VM's Notes travel with the VM. So a
fleet group is the union of the groups of that name on every host: a VM is in group ``G`` when
the host that runs it now says so. (The simulator's lab keeps groups lab-wide; each simulated
host reports, as a real one would, only the memberships of the VMs it runs.)

Agents report it (:func:`labels_of`), in their host entry: each VM row gets ``groups`` (the names
of the host's groups it is in, management groups included, recursively) and ``tags`` (the tags of
its Notes, :mod:`vmbusops.vm_tags`; the Notes themselves never leave the host); the entry gets
``groups``, every group name of the host, so that a plain group name no host has is refused
rather than selecting nothing. Groups are listed apart from the beats, every
:data:`GROUPS_EVERY` seconds.

The controller resolves (:func:`resolve_in_fleet`) against placement (where each VM is now) and
the live hosts' entries, with the single-host rules (:func:`vmbusops.engine.targets.resolve_targets`)
over the fleet's VMs and groups. The signer's scope then bounds the result by VM name
(:func:`vmbusops.engine.targets.within_scope`), and each agent checks its run again when it takes
it: its own trust policy's scope by VM name, and its own view of the VM's groups and Notes
(:func:`vmbusops.fleet.agent_bundles.vm_selected_here`). A group can never widen what a key may
touch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vmbusops.bundle.manifest import Manifest
from vmbusops.engine.targets import HostVM, resolve_targets
from vmbusops.errors import ConfigError
from vmbusops.guestops.host import VMInfo
from vmbusops.guestops.vm_groups import VM_COLLECTION, Member, VMGroupInfo, vms_in_groups
from vmbusops.vm_tags import is_tag_name, tags_in_notes

#: Seconds between two ``Get-VMGroup`` listings of an agent.
GROUPS_EVERY = 10.0
#: At most this many group names per VM and per host are reported (hostile hosts cost bounded).
MAX_GROUPS = 256


def labels_of(vms: Sequence[VMInfo], groups: Sequence[VMGroupInfo]) -> dict[str, dict[str, list[str]]]:
    """VM id (lowercase) -> ``{"groups": [...], "tags": [...]}`` for the VMs that have any."""
    ids = {vm.id.casefold(): vm.name for vm in vms if vm.id}
    names = [vm.name for vm in vms]
    member_of: dict[str, list[str]] = {}
    for group in groups:
        try:
            inside = vms_in_groups([group.name], groups, ids, names)
        except ConfigError:
            continue  # a cycle: that group selects nothing here, as a bundle naming it is refused
        for name in inside:
            member_of.setdefault(name, []).append(group.name)
    out: dict[str, dict[str, list[str]]] = {}
    for vm in vms:
        row: dict[str, list[str]] = {}
        if in_groups := sorted(set(member_of.get(vm.name.casefold(), [])))[:MAX_GROUPS]:
            row["groups"] = in_groups
        if tags := sorted(tags_in_notes(vm.notes)):
            row["tags"] = tags
        if row and vm.id:
            out[vm.id.lower()] = row
    return out


def group_names(groups: Sequence[VMGroupInfo]) -> list[str]:
    return sorted({g.name for g in groups})[:MAX_GROUPS]


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)][:MAX_GROUPS] if isinstance(value, list) else []


def resolve_in_fleet(
    manifest: Manifest, placed: Iterable[tuple[str, str, str]], entries: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The VMs the bundle's targets select in the fleet. ``placed``: (vm, vm id, host) of each VM
    placement shows on a live host; ``entries``: the live hosts' entries, by host. Raises
    ConfigError when groups or tags select nothing, or a plain group name is on no host."""
    rows: dict[tuple[str, str], Mapping[str, Any]] = {}
    for host, entry in entries.items():
        for row in entry.get("vms", []) if isinstance(entry.get("vms"), list) else []:
            if isinstance(row, dict) and isinstance(row.get("vm_id"), str):
                rows[(host, row["vm_id"].lower())] = row
    vms: list[HostVM] = []
    members: dict[str, list[Member]] = {name: [] for e in entries.values() for name in _strings(e.get("groups"))}
    for vm, vm_id, host in placed:
        row = rows.get((host, vm_id.lower()), {})
        tags = [t for t in _strings(row.get("tags")) if is_tag_name(t)]
        vms.append(HostVM(vm, vm_id, f"tags: {', '.join(tags)}" if tags else ""))
        for name in _strings(row.get("groups")):
            members.setdefault(name, []).append(Member(vm_id.lower(), vm))
    groups = [
        VMGroupInfo(name=name, id="", group_type=VM_COLLECTION, vm_members=tuple(m)) for name, m in members.items()
    ]
    try:
        return resolve_targets(manifest, vms, groups)
    except ConfigError as exc:
        raise ConfigError(
            exc.message.replace("on this host", "on any live host of the fleet"), hint=exc.hint
        ) from None


__all__ = ["GROUPS_EVERY", "group_names", "labels_of", "resolve_in_fleet"]
