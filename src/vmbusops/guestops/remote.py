"""Opening a remote Hyper-V host: PSRP over SSH (``ssh://``) or WinRM (``winrm://``).

The host operations are the same :class:`~vmbusops.guestops.host.HyperVHost` as for a local
host; what differs is the session under them and that files Copy-VMFile reads must first be
staged onto the host's disk (:mod:`vmbusops.guestops.staging`), so a remote host carries a
stager for that (:class:`~vmbusops.guestops.remote_host.RemoteHyperVHost`). WinRM support lives
in :mod:`vmbusops.guestops.remote_winrm`, imported only when a WinRM host is opened.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from vmbusops.config import Config
from vmbusops.errors import ConfigError
from vmbusops.guestops.remote_host import DEFAULT_STAGING_ROOT, RemoteHyperVHost
from vmbusops.guestops.staging import SftpStager
from vmbusops.inventory import HostEntry
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.ssh import SshConnection, SshTarget, parse_user_host
from vmbusops.psrp.transport import Transport


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
    runspaces = max_runspaces or config.pool_runspaces
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
