"""Opening a remote Hyper-V host: PSRP over SSH (``ssh://``) or WinRM (``winrm://``).

The host operations are the same :class:`~vmbusops.guestops.host.HyperVHost` as for a local
host; what differs is the session under them and that files Copy-VMFile reads must first be
staged onto the host's disk (:mod:`vmbusops.guestops.staging`), so a remote host carries a
stager for that.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import ClassVar

from vmbusops.config import Config
from vmbusops.errors import ConfigError
from vmbusops.guestops.host import HyperVHost
from vmbusops.guestops.staging import OnDemandStaging, SftpStager, Stager
from vmbusops.inventory import HostEntry
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.session import HostSession
from vmbusops.psrp.ssh import SshConnection, SshTarget, parse_user_host
from vmbusops.psrp.transport import Transport

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


@asynccontextmanager
async def open_ssh_host(
    target: SshTarget,
    *,
    max_runspaces: int = 64,
    staging_root: str | None = None,
) -> AsyncIterator[RemoteHyperVHost]:
    """Connect over SSH, open a runspace pool on the PowerShell subsystem, yield the host."""
    async with SshConnection.open(target) as conn:

        async def connect(nursery: object) -> Transport:
            return await conn.open_subsystem()

        async with open_runspace_pool(connect, max_runspaces=max_runspaces) as pool:
            host = RemoteHyperVHost(
                pool, stager=SftpStager(conn, staging_root or DEFAULT_STAGING_ROOT), address=target.url
            )
            try:
                await host.choose_invoker()
                yield host
            finally:
                await host.aclose_staging()


_LOCAL_KINDS = ("sim", "local", "pwsh", "pwsh-lab")


def local_kind(name: str, config: Config) -> str | None:
    """The local host kind ``name`` stands for, or None when it is a remote host."""
    if name.startswith(("ssh://", "winrm://", "http://", "https://")):
        return None
    entry = config.host_entry(name)
    if entry is None:
        return name  # a local kind, or an unknown name that host_argv explains
    return entry.transport if entry.transport in _LOCAL_KINDS else None


def ssh_target_for(entry: HostEntry) -> SshTarget:
    target = parse_user_host(entry.address)
    keys = (os.path.expanduser(entry.identity_file),) if entry.identity_file else ()
    return replace(
        target,
        known_hosts=os.path.expanduser(entry.known_hosts) if entry.known_hosts else None,
        host_key=entry.known_host_key,
        client_keys=keys,
        use_agent=entry.use_agent,
        subsystem=entry.subsystem or target.subsystem,
    )


@asynccontextmanager
async def open_remote_host(
    name: str,
    *,
    config: Config,
    max_runspaces: int | None = None,
) -> AsyncIterator[RemoteHyperVHost]:
    """Open a remote host given as ``ssh://...``, ``winrm://...`` or an inventory name."""
    runspaces = max_runspaces or config.max_runspaces
    entry = config.host_entry(name)
    if entry is None:
        if name.startswith("ssh://"):
            entry = HostEntry(name=name, transport="ssh", address=name)
        else:
            entry = HostEntry(name=name, transport="winrm", address=name)
    if entry.transport == "ssh":
        async with open_ssh_host(ssh_target_for(entry), max_runspaces=runspaces, staging_root=entry.staging_dir) as host:
            yield host
        return
    if entry.transport == "winrm":
        from vmbusops.guestops.remote_winrm import open_winrm_host

        async with open_winrm_host(entry, max_runspaces=runspaces) as host:
            yield host
        return
    raise ConfigError(f"host {name!r} is not a remote host (transport {entry.transport})")
