"""Opening a Hyper-V host by name: ``sim``, ``sim:HOST``, ``local``, ``pwsh`` or ``pwsh-lab``.

``sim`` starts the simulated Hyper-V host as a child process; ``sim:HOST`` starts it as the host
HOST of a lab with several (``[[hosts]]``: only the VMs HOST owns now; :mod:`vmbusops.sim.cluster`);
``local`` starts Windows
PowerShell 5.1 in server mode on this Hyper-V host; ``pwsh`` starts PowerShell 7 in server mode;
``pwsh-lab`` starts PowerShell 7 with the lab's Hyper-V module over the simulator's lab and state
(:mod:`vmbusops.pwshlab`). All of them speak the same OutOfProc PSRP to the same client code.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import trio

from vmbusops.config import Config, load_config
from vmbusops.errors import ConfigError
from vmbusops.guestops.host import HyperVHost
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.transport import (
    POWERSHELL_ARGV,
    PWSH_ARGV,
    ProcessTransport,
    Transport,
    require_pwsh,
    simulator_argv,
)

HOST_KINDS = ("sim", "local", "pwsh", "pwsh-lab")
#: ``sim:HOST``: one host of a simulated fleet (the lab's host names: letters, digits, - and _).
SIM_HOST = re.compile(r"sim:([A-Za-z0-9_-]{1,64})")
#: What the pwsh-lab's guests (PowerShell 7 on Linux) cannot run, and why.
PWSH_LAB_REFUSED: Final = {
    "patch": "the pwsh-lab's guests are PowerShell 7 on Linux, with no Windows Update Agent to drive",
}


def host_argv(kind: str, config: Config) -> tuple[str, ...]:
    if kind == "sim":
        return simulator_argv(lab=config.lab)
    fleet_host = SIM_HOST.fullmatch(kind)
    if fleet_host is not None:
        return (*simulator_argv(lab=config.lab), "--as", fleet_host.group(1))
    if kind == "local":
        return POWERSHELL_ARGV
    if kind == "pwsh":
        return (require_pwsh(), *PWSH_ARGV[1:])
    if kind == "pwsh-lab":
        from vmbusops.pwshlab import lab_argv

        return lab_argv(require_pwsh())
    raise unknown_host(kind)


def unknown_host(name: str) -> ConfigError:
    return ConfigError(
        f"unknown host {name!r}",
        hint=f"use one of: {', '.join(HOST_KINDS)}, sim:HOST, ssh://[user@]host[:port], winrm://host, or the NAME of "
        "a [hosts.NAME] entry of config.toml (or set VMBUSOPS_HOST)",
    )


def check_host(kind: str | None, config: Config) -> None:
    """Raise :func:`unknown_host` for a host name nothing can open, before a command looks up
    anything that depends on the host (a guest credential), so the error names the real mistake."""
    from vmbusops.guestops.remote import local_kind

    local = local_kind(kind or config.host, config)
    if local is not None and local not in HOST_KINDS and SIM_HOST.fullmatch(local) is None:
        raise unknown_host(local)


def host_environment(kind: str, config: Config) -> dict[str, str] | None:
    """What the host process needs on top of the agent's environment (``pwsh-lab`` only)."""
    if kind != "pwsh-lab":
        return None
    from vmbusops.pwshlab import lab_environment
    from vmbusops.sim import default_state_dir
    from vmbusops.sim.lab import load_lab

    # The lab's cmdlets read the lab file on every call, where a bad one would fail each as a host
    # error: read it once here, so it is the usage error it is, in the lab parser's own words.
    load_lab(config.lab)

    # labctl runs with this interpreter, so the lab module uses the agent's own vmbusops.
    return lab_environment(python=sys.executable, state_dir=default_state_dir(), lab=config.lab, inherited=os.environ)


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
    env = host_environment(local, config)

    async def connect(nursery: trio.Nursery) -> Transport:
        return await ProcessTransport.start(argv, env=env, nursery=nursery)

    async with open_runspace_pool(connect, max_runspaces=max_runspaces or config.pool_runspaces) as pool:
        yield HyperVHost(pool, refused_steps=PWSH_LAB_REFUSED if local == "pwsh-lab" else None)
