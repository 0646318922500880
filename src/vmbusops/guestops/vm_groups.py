"""Hyper-V VM groups as the agent reads them: ``Get-VMGroup``'s objects, and who is in a group.

A VM group (Windows Server 2016 and later) is a ``Microsoft.HyperV.PowerShell.VMGroup``:
``Name``, ``InstanceId`` (a GUID), ``GroupType`` (``VMCollectionType``: its ``VMMembers`` are VMs;
``ManagementCollectionType``: its ``VMGroupMembers`` are other groups, of either type). One
``Get-VMGroup`` (no parameters) lists every group of the host; :func:`parse_vm_group` reads one.

Members cross PowerShell remoting past the default serialization depth of 1, so a member usually
arrives as its string form (``VirtualMachine (Name = 'web01') [Id = '<guid>']``) rather than as an
object; both forms are read, and a member is identified by its GUID where one is given (names
may repeat or hold quotes), by its name otherwise.

:func:`vms_in_groups` is the resolution a bundle's ``targets.groups`` gets: the VMs of every
group a name or glob picks, a management group standing for the VMs of its member groups,
recursively. A cycle of management groups is refused (:class:`~vmbusops.errors.ConfigError`), as
is a plain group name the host does not have: a typo must not quietly select nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from vmbusops.errors import ConfigError
from vmbusops.records import PSObjectValue, Value
from vmbusops.vm_names import is_glob, vms_matching

VM_COLLECTION: Final = "VMCollectionType"
MANAGEMENT_COLLECTION: Final = "ManagementCollectionType"

_ID_IN_TEXT: Final = re.compile(r"\[(?:Instance)?Id = '([0-9A-Fa-f-]{36})'\]\s*$")
_NAME_IN_TEXT: Final = re.compile(r"^\w+ \(Name = '(.*)'\)")


@dataclass(frozen=True, slots=True)
class Member:
    """A group's member as the host named it: its GUID (folded) where known, and its name."""

    id: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class VMGroupInfo:
    name: str
    id: str
    group_type: str
    vm_members: tuple[Member, ...] = ()
    group_members: tuple[Member, ...] = ()

    @property
    def management(self) -> bool:
        return self.group_type == MANAGEMENT_COLLECTION


def _guid(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


def _text(value: Value) -> str | None:
    if value is None:
        return None
    if isinstance(value, PSObjectValue):
        return value.to_string
    return str(value)


def _member(value: Value) -> Member | None:
    if isinstance(value, PSObjectValue) and value.properties:
        name = _text(value.get("Name")) or _text(value.get("VMName"))
        ident = _guid(_text(value.get("InstanceId")) or _text(value.get("Id")) or _text(value.get("VMId")))
        return Member(ident, name) if (name or ident) else None
    text = _text(value)
    if not text:
        return None
    by_id = _ID_IN_TEXT.search(text)
    by_name = _NAME_IN_TEXT.match(text)
    if by_id is None and by_name is None:
        return Member(None, text)  # a bare name
    return Member(_guid(by_id[1]) if by_id else None, by_name[1] if by_name else None)


def _members(value: Value) -> tuple[Member, ...]:
    items: Iterable[Value] = value if isinstance(value, tuple) else () if value is None else (value,)
    return tuple(m for m in (_member(v) for v in items) if m is not None)


def parse_vm_group(value: Value) -> VMGroupInfo | None:
    """One object of ``Get-VMGroup``; None for anything that is not a VM group."""
    if not isinstance(value, PSObjectValue) or value.get("Name") is None:
        return None
    return VMGroupInfo(
        name=_text(value.get("Name")) or "",
        id=_guid(_text(value.get("InstanceId"))) or "",
        group_type=_text(value.get("GroupType")) or VM_COLLECTION,
        vm_members=_members(value.get("VMMembers")),
        group_members=_members(value.get("VMGroupMembers")),
    )


def vms_in_groups(
    patterns: Sequence[str], groups: Sequence[VMGroupInfo], vm_ids: Mapping[str, str], vm_names: Sequence[str]
) -> set[str]:
    """The folded names of the host's VMs in the groups ``patterns`` pick (recursively).

    ``vm_ids`` maps each host VM's folded GUID to its name; ``vm_names`` are the host's VM names.
    A member VM the host no longer lists is ignored.
    """
    names = [g.name for g in groups]
    by_id = {g.id: g for g in groups if g.id}
    by_name: dict[str, VMGroupInfo] = {}
    for g in groups:
        by_name.setdefault(g.name.casefold(), g)
    chosen: list[VMGroupInfo] = []
    for pattern in patterns:
        matched = vms_matching(pattern, names)
        if not matched and not is_glob(pattern):
            raise ConfigError(
                f"no VM group named {pattern!r} on this host",
                hint="list the host's groups with Get-VMGroup, or fix targets.groups",
            )
        chosen.extend(g for g in groups if g.name.casefold() in {m.casefold() for m in matched})
    found: set[str] = set()
    done: set[int] = set()
    host_names = {n.casefold() for n in vm_names}

    def walk(group: VMGroupInfo, path: tuple[VMGroupInfo, ...]) -> None:
        if id(group) in done:
            return
        for m in group.vm_members:
            name = vm_ids.get(m.id) if m.id else None
            if name is None and m.name is not None and m.name.casefold() in host_names:
                name = m.name
            if name is not None:
                found.add(name.casefold())
        for m in group.group_members:
            inner = by_id.get(m.id) if m.id else None
            if inner is None and m.name is not None:
                inner = by_name.get(m.name.casefold())
            if inner is None:
                continue
            if any(inner is g for g in path):
                cycle = " -> ".join(g.name for g in (*path, inner))
                raise ConfigError(
                    f"VM group {inner.name!r} contains itself ({cycle}); it cannot be resolved",
                    hint="remove the cycle with Remove-VMGroupMember on the host",
                )
            walk(inner, (*path, inner))
        done.add(id(group))

    for group in chosen:
        walk(group, (group,))
    return found


__all__ = [
    "MANAGEMENT_COLLECTION", "VM_COLLECTION", "Member", "VMGroupInfo", "parse_vm_group", "vms_in_groups",
]  # fmt: skip
