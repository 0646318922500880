"""Hyper-V's ``Get-VMGroup`` on the simulated host, over the lab's ``[[group]]`` tables.

Its parameter sets are the real cmdlet's: ``Name`` (default; ``[[-Name] <String[]>]``, wildcards
as Get-VM's names) and ``Id`` (``[[-Id] <Guid>]``), both with ``-ComputerName``, ``-CimSession``
and ``-Credential``; naming both ``-Name`` and ``-Id`` cannot resolve a set. A plain name that
matches no group is a non-terminating error, a wildcard that matches none is not.

Each group is a ``Microsoft.HyperV.PowerShell.VMGroup`` with ``Name``, ``InstanceId``,
``GroupType``, ``VMMembers``, ``VMGroupMembers`` and ``ComputerName``. Members are written as a
remote client receives them past PowerShell's default serialization depth of 1: the string form
of each member object (``VirtualMachine (Name = 'web01') [Id = '...']``).
"""

from __future__ import annotations

from typing import Any

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param
from vmbusops.sim.guest_values import to_text
from vmbusops.sim.host_command import HostCmdlet, HostContext
from vmbusops.sim.hostrules import has_wildcard, wildcard_match
from vmbusops.sim.lab_groups import GroupSpec
from vmbusops.sim.streams import SimError, SimObject, Streams

_FQ = "Microsoft.HyperV.PowerShell.Commands.GetVMGroup"


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    return [to_text(v) for v in value] if isinstance(value, list | tuple) else [to_text(value)]


def group_not_found(what: str, value: str) -> SimError:
    return SimError(
        message=f'Hyper-V was unable to find a virtual machine group with {what} "{value}".',
        fqid=f"InvalidParameter,{_FQ}",
        category="InvalidArgument",
        exception_type=pserrors.HYPERV_EXCEPTION,
        target_name=value,
        target_object=value,
        activity="Get-VMGroup",
    )


def _group_object(host: HostContext, group: GroupSpec) -> SimObject:
    by_name = {g.name.casefold(): g for g in host.lab.groups}
    vm_members = []
    for name in group.vms:
        spec = host.lab.find(name)
        if spec is not None:
            vm_members.append(f"VirtualMachine (Name = '{spec.name}') [Id = '{spec.id}']")
    group_members = [
        f"VMGroup (Name = '{g.name}') [Id = '{g.id}']" for g in (by_name[m.casefold()] for m in group.groups)
    ]
    return SimObject(
        ("Microsoft.HyperV.PowerShell.VMGroup", "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object"),
        (
            ("Name", group.name),
            ("InstanceId", group.id),
            ("GroupType", group.group_type),
            ("VMMembers", vm_members),
            ("VMGroupMembers", group_members),
            ("ComputerName", host.lab.host.name),
            ("IsDeleted", False),
        ),
        f"VMGroup (Name = '{group.name}') [Id = '{group.id}']",
    )


async def get_vm_group(host: HostContext, b: dict[str, Any], streams: Streams, fq: str) -> None:
    if b.get("Name") is not None and b.get("Id") is not None:
        raise BindingError(
            SimError(
                message="Parameter set cannot be resolved using the specified named parameters. One or more "
                "parameters issued cannot be used together or an insufficient number of parameters were provided.",
                fqid=f"AmbiguousParameterSet,{fq}",
                category="InvalidArgument",
                exception_type="System.Management.Automation.ParameterBindingException",
            )
        )
    groups = list(host.lab.groups)
    if b.get("Id") is not None:
        chosen = [g for g in groups if g.id == b["Id"]]
        if not chosen:
            streams.error(group_not_found("id", b["Id"]))
    else:
        patterns = _names(b.get("Name"))
        chosen = []
        for pattern in patterns or ["*"]:
            hits = [g for g in groups if wildcard_match(g.name, pattern) and g not in chosen]
            if not hits and not has_wildcard(pattern) and not any(wildcard_match(g.name, pattern) for g in chosen):
                streams.error(group_not_found("name", pattern))
            chosen.extend(hits)
    for group in chosen:
        streams.output(_group_object(host, group))
        await streams.checkpoint()


GET_VM_GROUP = HostCmdlet(
    (
        Param("Name", 0, kind="strings"),
        Param("Id", kind="guid"),
        Param("ComputerName", kind="strings"),
        Param("CimSession"),
        Param("Credential"),
    ),
    get_vm_group,
)

__all__ = ["GET_VM_GROUP", "get_vm_group", "group_not_found"]
