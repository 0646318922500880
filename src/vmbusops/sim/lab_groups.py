"""The lab's Hyper-V VM groups: ``[[group]]`` tables, which the simulated ``Get-VMGroup`` lists.

A lab declares groups as Hyper-V has them (``New-VMGroup``, ``Add-VMGroupMember``)::

    [[group]]
    name = "web-tier"               # the group's name (required; unique, case-insensitively)
    type = "VMCollectionType"       # VMCollectionType (default): its members are VMs;
                                    # ManagementCollectionType: its members are other groups
    vms = ["web01", "web02"]        # a VM collection's members: VM names of this lab
    groups = []                     # a management collection's members: group names of this lab
    id = "GUID"                     # optional; derived from the name when absent

As on a Hyper-V host, a VM collection holds only VMs and a management collection only groups (of
either type). A management collection may contain itself through others here: Hyper-V's own
checks are not modelled, so that a lab can show the agent refusing such a cycle.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

from vmbusops.errors import ConfigError

VM_COLLECTION: Final = "VMCollectionType"
MANAGEMENT_COLLECTION: Final = "ManagementCollectionType"
GROUP_KEYS: Final = {"name", "type", "vms", "groups", "id"}


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupSpec:
    name: str
    id: str
    group_type: str = VM_COLLECTION
    #: Member VM names (a VM collection), as the lab spells them.
    vms: tuple[str, ...] = ()
    #: Member group names (a management collection), as the lab spells them.
    groups: tuple[str, ...] = ()


def parse_groups(raw: Any, vm_names: list[str], source: str) -> tuple[GroupSpec, ...]:
    """The ``[[group]]`` tables of a lab, checked against its VMs and each other."""
    if not isinstance(raw, list):
        raise ConfigError(f"lab file {source}: group must be an array of tables")
    by_vm = {n.casefold(): n for n in vm_names}
    specs: list[GroupSpec] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ConfigError(f"lab file {source}: group must be an array of tables")
        unknown = sorted(set(item) - GROUP_KEYS)
        if unknown:
            raise ConfigError(f"{source} [[group]]: unknown key(s) {', '.join(unknown)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"lab file {source}: group.name must be a non-empty string")
        kind = item.get("type", VM_COLLECTION)
        if kind not in (VM_COLLECTION, MANAGEMENT_COLLECTION):
            raise ConfigError(
                f"lab file {source}: group {name!r}: type must be {VM_COLLECTION} or {MANAGEMENT_COLLECTION}"
            )
        vms, groups = _names(item.get("vms", []), name, "vms", source), _names(item.get("groups", []), name, "groups", source)
        if kind == VM_COLLECTION and groups:
            raise ConfigError(f"lab file {source}: group {name!r} is a {VM_COLLECTION}: its members are vms, not groups")
        if kind == MANAGEMENT_COLLECTION and vms:
            raise ConfigError(
                f"lab file {source}: group {name!r} is a {MANAGEMENT_COLLECTION}: its members are groups, not vms"
            )
        missing = [v for v in vms if v.casefold() not in by_vm]
        if missing:
            raise ConfigError(f"lab file {source}: group {name!r} names VM {missing[0]!r}, which the lab does not have")
        group_id = item.get("id") or str(uuid.uuid5(uuid.NAMESPACE_URL, f"vmbusops-sim-group:{name}".casefold()))
        try:
            group_id = str(uuid.UUID(str(group_id)))
        except ValueError:
            raise ConfigError(f"lab file {source}: group {name!r}: id must be a GUID") from None
        specs.append(
            GroupSpec(
                name=name, id=group_id, group_type=kind, vms=tuple(by_vm[v.casefold()] for v in vms), groups=groups
            )
        )
    seen: dict[str, str] = {}
    for g in specs:
        if g.name.casefold() in seen:
            raise ConfigError(f"lab file {source}: group name {g.name!r} appears twice")
        seen[g.name.casefold()] = g.name
    for g in specs:
        for member in g.groups:
            if member.casefold() not in seen:
                raise ConfigError(
                    f"lab file {source}: group {g.name!r} names group {member!r}, which the lab does not have"
                )
    return tuple(
        GroupSpec(name=g.name, id=g.id, group_type=g.group_type, vms=g.vms, groups=tuple(seen[m.casefold()] for m in g.groups))
        for g in specs
    )


def _names(value: Any, group: str, key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"lab file {source}: group {group!r}: {key} must be an array of names")
    return tuple(value)


__all__ = ["GROUP_KEYS", "MANAGEMENT_COLLECTION", "VM_COLLECTION", "GroupSpec", "parse_groups"]
