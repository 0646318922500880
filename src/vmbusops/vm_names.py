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
