"""How a VM name or glob picks VMs of a host: one rule for a bundle's targets and ``exec --vm``.

Hyper-V compares VM names case-insensitively, so both a plain name and a glob (``*``, ``?``,
``[...]``, as :mod:`fnmatch` reads them) match that way; the host's own spelling is what is used.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def vms_matching(pattern: str, host_vms: Iterable[str]) -> list[str]:
    """The host's VMs ``pattern`` (a name or a glob) picks, in the host's order, spelled as the host
    spells them; empty when it picks none."""
    folded = pattern.casefold()
    if is_glob(pattern):
        return [vm for vm in host_vms if fnmatch.fnmatchcase(vm.casefold(), folded)]
    return [vm for vm in host_vms if vm.casefold() == folded][:1]


class HostNames:
    """A host's VM names, matched against many patterns: :func:`vms_matching` for each, with a
    plain name found by one lookup instead of a pass over the host's VMs (a bundle that names
    1,000 VMs of a 1,000-VM host made a million comparisons on the agent's event loop)."""

    __slots__ = ("_first", "names")

    def __init__(self, host_vms: Iterable[str]) -> None:
        self.names = list(host_vms)
        self._first: dict[str, str] | None = None

    def matching(self, pattern: str) -> list[str]:
        if is_glob(pattern):
            return vms_matching(pattern, self.names)
        first = self._first
        if first is None:
            first = self._first = {}
            for vm in self.names:
                first.setdefault(vm.casefold(), vm)  # the host's first spelling, as vms_matching takes
        found = first.get(pattern.casefold())
        return [] if found is None else [found]
