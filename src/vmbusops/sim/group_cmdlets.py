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

from collections.abc import Callable
from typing import Any

from vmbusops.sim import pserrors
from vmbusops.sim.binding import BindingError, Param
from vmbusops.sim.guest_values import to_text
from vmbusops.sim.host_command import HostCmdlet, HostContext
from vmbusops.sim.hostrules import has_wildcard, wildcard_match
from vmbusops.sim.lab import Lab
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


def group_facts(lab: Lab, group: GroupSpec) -> dict[str, Any]:
    """What Get-VMGroup reports of one group, before either host shapes it into its own object:
    members as ``{"Name", "Id"}``."""
    by_name = {g.name.casefold(): g for g in lab.groups}
    vms = [spec for spec in (lab.find(name) for name in group.vms) if spec is not None]
    return {
        "Name": group.name,
        "InstanceId": group.id,
        "GroupType": group.group_type,
        "VMMembers": [{"Name": spec.name, "Id": spec.id} for spec in vms],
        "VMGroupMembers": [{"Name": g.name, "Id": g.id} for g in (by_name[m.casefold()] for m in group.groups)],
        "ComputerName": lab.host.name,
    }


def select_groups(lab: Lab, names: list[str], group_id: str | None, error: Callable[[SimError], None]) -> list[GroupSpec]:
    """The groups ``-Name`` (names or wildcards; none: all) or ``-Id`` picks, in lab order; an error
    for a plain name or an id that matches none."""
    groups = list(lab.groups)
    if group_id is not None:
        chosen = [g for g in groups if g.id == group_id]
        if not chosen:
            error(group_not_found("id", group_id))
        return chosen
    picked: list[GroupSpec] = []
    for pattern in names or ["*"]:
        hits = [g for g in groups if wildcard_match(g.name, pattern)]
        if not hits and not has_wildcard(pattern):
            error(group_not_found("name", pattern))
        picked.extend(g for g in hits if g not in picked)
    return picked


def _group_object(facts: dict[str, Any]) -> SimObject:
    # Past the default serialization depth a member arrives as its string form.
    vm_members = [f"VirtualMachine (Name = '{m['Name']}') [Id = '{m['Id']}']" for m in facts["VMMembers"]]
    group_members = [f"VMGroup (Name = '{m['Name']}') [Id = '{m['Id']}']" for m in facts["VMGroupMembers"]]
    return SimObject(
        ("Microsoft.HyperV.PowerShell.VMGroup", "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object"),
        (
            ("Name", facts["Name"]),
            ("InstanceId", facts["InstanceId"]),
            ("GroupType", facts["GroupType"]),
            ("VMMembers", vm_members),
            ("VMGroupMembers", group_members),
            ("ComputerName", facts["ComputerName"]),
            ("IsDeleted", False),
        ),
        f"VMGroup (Name = '{facts['Name']}') [Id = '{facts['InstanceId']}']",
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
    for group in select_groups(host.lab, _names(b.get("Name")), b.get("Id"), streams.error):
        streams.output(_group_object(group_facts(host.lab, group)))
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

__all__ = ["GET_VM_GROUP", "get_vm_group", "group_facts", "group_not_found", "select_groups"]
