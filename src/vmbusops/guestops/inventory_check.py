"""Checking the host inventory: can each host be reached, and does it allow what the agent sends?"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from vmbusops.config import Config
from vmbusops.errors import VmbusOpsError
from vmbusops.guestops.host import HOST_CMDLETS
from vmbusops.guestops.invoker import INVOKER_FUNCTION
from vmbusops.guestops.staging import STAGING_CMDLETS, STAGING_FUNCTIONS
from vmbusops.psrp.client import Command
from vmbusops.records import OutputRecord, PSObjectValue

#: What a remote host must allow for every operation of the agent.
REQUIRED_CMDLETS = HOST_CMDLETS | STAGING_CMDLETS


@dataclass(frozen=True, slots=True)
class HostReport:
    name: str
    transport: str
    address: str
    reachable: bool
    seconds: float
    allowed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = field(default=())
    """Cmdlets the host allows beyond what the agent needs (a least-privilege endpoint has none)."""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.reachable and not self.missing


def _is_alias(command_type: object) -> bool:
    """Get-Command's CommandType: a string from the simulator, an enum object from PowerShell."""
    if isinstance(command_type, PSObjectValue):
        command_type = command_type.to_string
    return command_type == "Alias"


async def check_host(name: str, config: Config, *, timeout: float = 30.0) -> HostReport:
    """Open the host, list the cmdlets it allows (``Get-Command``), compare with what we need."""
    from vmbusops.guestops.connect import open_host

    entry = config.host_entry(name)
    transport = entry.transport if entry else name.split("://", 1)[0] if "://" in name else name
    address = entry.address if entry and entry.address else name
    start = time.monotonic()
    try:
        with trio.fail_after(timeout):
            async with open_host(name, config=config, max_runspaces=1) as host:
                records = await host.pool.run([[Command("Get-Command")]])
    except (VmbusOpsError, trio.TooSlowError) as exc:
        message = str(exc) if isinstance(exc, VmbusOpsError) else f"no answer within {timeout:g}s"
        return HostReport(name, transport, address, False, time.monotonic() - start, error=message)
    allowed: set[str] = set()
    for record in records:
        if isinstance(record, OutputRecord):
            value = record.value
            if isinstance(value, PSObjectValue) and _is_alias(value.get("CommandType")):
                continue  # another name of a listed command, not a command of its own
            text = value.get("Name") if isinstance(value, PSObjectValue) else value
            if isinstance(text, str):
                allowed.add(text)
    folded = {a.casefold() for a in allowed}
    # Over WinRM files are staged through the endpoint's functions; over SSH, by SFTP.
    required = REQUIRED_CMDLETS | STAGING_FUNCTIONS if transport == "winrm" else REQUIRED_CMDLETS
    # Guest runs need the invoker: on the project's JEA endpoint (known by its staging
    # functions) the role's function, since a NoLanguage endpoint refuses the script command.
    if any(f.casefold() in folded for f in STAGING_FUNCTIONS):
        required = required | {INVOKER_FUNCTION}
    missing = sorted(c for c in required if c.casefold() not in folded)
    needed = {c.casefold() for c in REQUIRED_CMDLETS | STAGING_FUNCTIONS | {INVOKER_FUNCTION}} | {"get-command"}
    extra = sorted(a for a in allowed if a.casefold() not in needed)
    return HostReport(
        name, transport, address, True, time.monotonic() - start, tuple(sorted(allowed)), tuple(missing), tuple(extra)
    )


async def check_hosts(names: list[str], config: Config, *, timeout: float = 30.0) -> list[HostReport]:
    """Check hosts concurrently; reports come back in the order of ``names``."""
    reports: dict[str, HostReport] = {}

    async def one(name: str) -> None:
        reports[name] = await check_host(name, config, timeout=timeout)

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(one, name)
    return [reports[n] for n in names]
