"""Opening a Hyper-V host over WinRM (filled in with the WinRM transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from vmbusops.errors import ConfigError
from vmbusops.inventory import HostEntry

if TYPE_CHECKING:
    from vmbusops.guestops.remote import RemoteHyperVHost


@asynccontextmanager
async def open_winrm_host(entry: HostEntry, *, max_runspaces: int = 64) -> AsyncIterator[RemoteHyperVHost]:
    raise ConfigError(f"{entry.name}: the WinRM transport is not available yet")
    yield  # type: ignore[unreachable]
