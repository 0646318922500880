"""What a host cmdlet is to the simulated host: its parameters and the function that runs it.

The host's cmdlets are listed by name in ``vmbusops.sim.cmdlets``; ``vmbusops.sim.hyperv``'s
:class:`~vmbusops.sim.hyperv.HyperVHost` binds a command's parameters to :attr:`HostCmdlet.params`
and calls :attr:`HostCmdlet.run` with itself as the :class:`HostContext`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from vmbusops.sim.binding import Param
from vmbusops.sim.lab import Lab, VMSpec
from vmbusops.sim.state import HostStore
from vmbusops.sim.streams import Streams


class HostContext(Protocol):
    """The host a cmdlet runs on: the lab, its persistent state and the clock."""

    @property
    def lab(self) -> Lab: ...

    @property
    def store(self) -> HostStore: ...

    def clock(self) -> float: ...

    def owned_vms(self) -> Sequence[VMSpec] | None:
        """The VMs this host owns now, in lab order; None when it serves every VM of the lab."""
        ...

    def find_vm_by_id(self, vm_id: str) -> VMSpec | None:
        """The VM with that id, if this host owns it now."""
        ...

    @property
    def command_names(self) -> list[str]:
        """Every command the host answers, folded (what Get-Command lists)."""
        ...


#: ``run(host, bound parameters, streams, the cmdlet's fully qualified name)``.
HostRun = Callable[[HostContext, dict[str, Any], Streams, str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class HostCmdlet:
    """A host cmdlet: its parameters as its module declares them, and what runs it."""

    params: tuple[Param, ...]
    run: HostRun


#: The Hyper-V module's aliases of host cmdlets, folded: a call by alias runs (and reports errors
#: as) the cmdlet; Get-Command lists them as aliases.
HOST_ALIASES: Final[Mapping[str, str]] = {
    alias.casefold(): cmdlet
    for alias, cmdlet in {
        "Get-VMCheckpoint": "Get-VMSnapshot",
        "Restore-VMCheckpoint": "Restore-VMSnapshot",
        "Remove-VMCheckpoint": "Remove-VMSnapshot",
    }.items()
}

