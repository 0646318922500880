"""Which VMs a job runs on: a bundle's targets resolved on the host, then bounded by the signer.

Theory of operation
-------------------
:func:`resolve_targets` is sans-IO: given the host's VMs (names, ids, Notes) and, when the bundle
names groups, the host's VM groups, it returns the VMs the manifest's ``targets`` select:

1. ``vms`` (names and globs, case-insensitive, :mod:`vmbusops.vm_names`) pick VMs in the
   manifest's order; without ``vms`` every VM of the host is a candidate, in the host's order;
2. ``groups`` (names or globs of Hyper-V VM groups, :mod:`vmbusops.guestops.vm_groups`) keep
   only the candidates in one of those groups, a management group standing for the VMs of its
   member groups, recursively;
3. ``tags`` keep only the candidates whose Notes carry one of those tags (:mod:`vmbusops.vm_tags`).

Groups and tags narrow; given both, a VM must pass both. When groups or tags select nothing, the
job is refused (a :class:`~vmbusops.errors.ConfigError`) rather than run on no VM.

:func:`within_scope` is then the signer's bound, by VM name, after resolution: a VM the trust
scope that accepted the bundle does not cover is left out of the job with why (kept on the job
as :class:`LeftOut`), never touched; when that leaves nothing, the job is refused with the list.
A bundle's own ``vms`` were already checked against that scope when it was accepted; the check
here is what bounds groups and tags, whose members the signer cannot see when signing.

:func:`resolve_on_host` does the I/O: one ``Get-VM`` listing (which carries Notes) and, only
when the bundle names groups, one ``Get-VMGroup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vmbusops.bundle.errors import TargetOutOfScopeError
from vmbusops.bundle.manifest import Manifest
from vmbusops.bundle.policy import scope_covers_vm
from vmbusops.engine.journal_rows import LeftOut
from vmbusops.errors import ConfigError
from vmbusops.guestops.vm_groups import VMGroupInfo, vms_in_groups
from vmbusops.vm_names import HostNames, is_glob
from vmbusops.vm_tags import tags_in_notes

if TYPE_CHECKING:
    from vmbusops.guestops.host import HyperVHost, VMInfo


@dataclass(frozen=True, slots=True)
class HostVM:
    """What resolution needs of one host VM (a :class:`~vmbusops.guestops.host.VMInfo` has it)."""

    name: str
    id: str = ""
    notes: str = ""


def resolve_targets(
    manifest: Manifest,
    host_vms: Sequence[str | HostVM | VMInfo],
    groups: Sequence[VMGroupInfo] = (),
) -> list[str]:
    """The VMs a bundle's targets select on this host, each once (see the module docstring).

    A plain name in ``vms`` is kept even if the host has no such VM, so that its run fails with
    Hyper-V's own message in the journal rather than vanishing (unless groups or tags narrow it).
    """
    targets = manifest.targets
    index = HostNames(v if isinstance(v, str) else v.name for v in host_vms)
    names = index.names
    chosen: list[str] = []
    seen: set[str] = set()
    for pattern in targets.vms or ("*",):
        for name in index.matching(pattern) or ([] if is_glob(pattern) else [pattern]):
            if name.casefold() not in seen:
                seen.add(name.casefold())
                chosen.append(name)
    if not (targets.groups or targets.tags):
        return chosen
    vms = [HostVM(v) if isinstance(v, str) else HostVM(v.name, v.id, v.notes) for v in host_vms]
    if targets.groups:
        ids = {v.id.casefold(): v.name for v in vms if v.id}
        members = vms_in_groups(targets.groups, groups, ids, names)
        chosen = [vm for vm in chosen if vm.casefold() in members]
    if targets.tags:
        wanted = {t.lower() for t in targets.tags}
        notes = {v.name.casefold(): v.notes for v in vms}
        chosen = [vm for vm in chosen if wanted & tags_in_notes(notes.get(vm.casefold()))]
    if not chosen:
        what = [f"groups {', '.join(targets.groups)}"] if targets.groups else []
        what += [f"tags {', '.join(targets.tags)}"] if targets.tags else []
        raise ConfigError(
            f"{manifest.name}: the bundle's targets select no VM on this host ({'; '.join(what)})",
            hint="check the host's groups (Get-VMGroup) and the VMs' Notes (a line 'tags: a, b')",
        )
    return chosen


def refuse_no_targets(manifest: Manifest, vms: Sequence[str]) -> None:
    """A bundle whose targets select no VM here is refused, not run as a job of no run that would
    read as a success: its ``vms`` are globs that match none (a plain name is kept, and its run
    fails with Hyper-V's message). Called once the caller's scope has been judged, so that a
    tenant learns nothing of VMs outside it (see ``AgentService.check_targets``)."""
    if not vms:
        raise ConfigError(
            f"{manifest.name}: the bundle's targets ({', '.join(manifest.targets.vms)}) select no VM on this host",
            hint="list the host's VMs with: vmbusops vms (names and globs match case-insensitively)",
        )


def within_scope(vms: Sequence[str], scope_vms: Sequence[str] | None) -> tuple[list[str], list[LeftOut]]:
    """``vms`` split by the signer's trust scope (its VM globs; None: not checked here): the VMs it
    covers, and those left out. Raises :class:`~vmbusops.bundle.errors.TargetOutOfScopeError` when it covers none of them."""
    if scope_vms is None:
        return list(vms), []
    kept = [vm for vm in vms if any(scope_covers_vm(g, vm) for g in scope_vms)]
    covered = set(kept)
    left = [
        LeftOut(vm, f"outside the signer's trust scope ({', '.join(scope_vms)}): not touched")
        for vm in vms
        if vm not in covered
    ]
    if vms and not kept:
        raise TargetOutOfScopeError(
            f"no VM the bundle's targets select is in the signer's trust scope ({', '.join(scope_vms)});"
            f" left out: {', '.join(lo.vm for lo in left)}",
            hint="narrow the bundle's groups or tags, or widen the scope: vmbusops trust add --vm",
        )
    return kept, left


async def resolve_on_host(manifest: Manifest, host: HyperVHost) -> list[str]:
    """:func:`resolve_targets` against ``host``: its VM listing, and its groups when needed."""
    vms = await host.list_vms()
    groups = await host.list_vm_groups() if manifest.targets.groups else []
    return resolve_targets(manifest, vms, groups)


__all__ = ["HostVM", "LeftOut", "refuse_no_targets", "resolve_on_host", "resolve_targets", "within_scope"]
