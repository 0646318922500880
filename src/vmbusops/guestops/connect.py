"""Opening a Hyper-V host by name: ``sim``, ``local`` or ``pwsh``.

``sim`` starts the simulated Hyper-V host as a child process; ``local`` starts Windows
PowerShell 5.1 in server mode on this Hyper-V host; ``pwsh`` starts PowerShell 7 in server mode.
All three speak the same OutOfProc PSRP to the same client code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from vmbusops.config import Config, load_config
from vmbusops.errors import ConfigError
from vmbusops.guestops.host import HyperVHost
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.transport import POWERSHELL_ARGV, PWSH_ARGV, ProcessTransport, Transport, simulator_argv

HOST_KINDS = ("sim", "local", "pwsh")


def host_argv(kind: str, config: Config) -> tuple[str, ...]:
    if kind == "sim":
        return simulator_argv(lab=config.lab)
    if kind == "local":
        return POWERSHELL_ARGV
    if kind == "pwsh":
        return PWSH_ARGV
    raise ConfigError(
        f"unknown host {kind!r}",
        hint=f"use one of: {', '.join(HOST_KINDS)} (or set VMBUSOPS_HOST)",
    )


@asynccontextmanager
async def open_host(
    kind: str | None = None,
    *,
    config: Config | None = None,
    max_runspaces: int | None = None,
) -> AsyncIterator[HyperVHost]:
    """Start the host's PowerShell process, open a runspace pool, and yield the host operations.

    ``kind`` may also be a remote address (``ssh://user@host[:port]``, ``winrm://host``) or the
    name of a ``[hosts.NAME]`` entry of the configuration (:mod:`vmbusops.guestops.remote`).
    """
    config = config or load_config()
    from vmbusops.guestops.remote import local_kind, open_remote_host

    name = kind or config.host
    local = local_kind(name, config)
    if local is None:
        async with open_remote_host(name, config=config, max_runspaces=max_runspaces) as remote:
            yield remote
        return
    argv = host_argv(local, config)

    async def connect(nursery: trio.Nursery) -> Transport:
        return await ProcessTransport.start(argv, nursery=nursery)

    async with open_runspace_pool(connect, max_runspaces=max_runspaces or config.max_runspaces) as pool:
        yield HyperVHost(pool)
