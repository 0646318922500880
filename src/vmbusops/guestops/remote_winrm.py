"""Opening a Hyper-V host over WinRM: pypsrp's WS-Management under our runspace pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from vmbusops.credentials import CredentialStore
from vmbusops.errors import ConfigError
from vmbusops.guestops.remote_host import DEFAULT_STAGING_ROOT, RemoteHyperVHost
from vmbusops.guestops.staging import PsrpStager
from vmbusops.inventory import HostEntry
from vmbusops.psrp.client import open_runspace_pool
from vmbusops.psrp.transport import Transport
from vmbusops.psrp.winrm import WinRMTarget, WinRMTransport, parse_winrm_address


def winrm_target_for(entry: HostEntry) -> WinRMTarget:
    target = parse_winrm_address(entry.address)
    username = password = None
    if entry.credential:
        credential = CredentialStore().get(entry.credential)
        username, password = credential.username, credential.password
    elif entry.auth != "certificate":
        if "://" in entry.name:  # --host winrm://...: no [hosts.NAME] entry, so nowhere to name one
            raise ConfigError(
                f"{entry.name} needs a credential for {entry.auth} authentication",
                hint=f"add a [hosts.NAME] entry to config.toml with address = \"{entry.address}\" and "
                "credential = \"NAME-winrm\", run: vmbusops cred set NAME-winrm --username 'DOMAIN\\user', "
                "then use --host NAME",
            )
        raise ConfigError(
            f"[hosts.{entry.name}] needs a credential for {entry.auth} authentication",
            hint=f"vmbusops cred set {entry.name}-winrm --username 'DOMAIN\\user', then credential = \"{entry.name}-winrm\"",
        )
    return replace(
        target,
        auth=entry.auth,
        username=username,
        password=password,
        cert_validation=entry.cert_validation,
        encryption=entry.encryption,
        client_certificate=entry.client_certificate,
        client_key=entry.client_key,
        configuration_name=entry.configuration_name or target.configuration_name,
    )


@asynccontextmanager
async def open_winrm_target(
    target: WinRMTarget, *, max_runspaces: int = 64, staging_root: str | None = None
) -> AsyncIterator[RemoteHyperVHost]:
    async def connect(nursery: trio.Nursery) -> Transport:
        return WinRMTransport(target, nursery)

    async with open_runspace_pool(connect, max_runspaces=max_runspaces) as pool:
        host = RemoteHyperVHost(
            pool, stager=PsrpStager(pool, staging_root or DEFAULT_STAGING_ROOT), address=target.url
        )
        try:
            await host.choose_invoker()
            yield host
        finally:
            await host.aclose_staging()


@asynccontextmanager
async def open_winrm_host(entry: HostEntry, *, max_runspaces: int = 64) -> AsyncIterator[RemoteHyperVHost]:
    async with open_winrm_target(
        winrm_target_for(entry), max_runspaces=max_runspaces, staging_root=entry.staging_dir
    ) as host:
        yield host
