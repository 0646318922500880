"""A remote Hyper-V host: the host operations plus a way to put files on the host's disk.

Both remote transports (:mod:`vmbusops.guestops.remote` for SSH, :mod:`vmbusops.guestops.remote_winrm`
for WinRM) build one of these; it lives apart from both so neither imports the other.
"""

from __future__ import annotations

from typing import ClassVar

from vmbusops.guestops.host import HyperVHost
from vmbusops.guestops.staging import OnDemandStaging, Stager
from vmbusops.psrp.session import HostSession

DEFAULT_STAGING_ROOT = "C:\\ProgramData\\vmbusops\\staging"


class RemoteHyperVHost(HyperVHost):
    """Host operations on a remote host, with a way to put files on its disk.

    ``copy_to_guest`` accepts the agent's local paths, as on a local host: a path that was not
    staged with :func:`~vmbusops.guestops.staging.stage_files` is staged on demand (verified,
    once per file content) into a folder of this connection, removed when the host is closed.
    """

    is_remote: ClassVar[bool] = True

    def __init__(self, pool: HostSession, *, stager: Stager, address: str) -> None:
        super().__init__(pool)
        self.stager = stager
        self.address = address
        self.staged_paths: set[str] = set()
        self._on_demand = OnDemandStaging(self)

    async def copy_to_guest(
        self,
        vm: str,
        source: str,
        destination: str,
        *,
        create_full_path: bool = True,
        force: bool = True,
    ) -> None:
        if source not in self.staged_paths:
            source = await self._on_demand.host_path(source)
        await super().copy_to_guest(vm, source, destination, create_full_path=create_full_path, force=force)

    async def aclose_staging(self) -> None:
        await self._on_demand.aclose()
