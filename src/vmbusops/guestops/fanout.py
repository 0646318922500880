"""Running one script block in many guests at once, at most N at a time.

Each guest gets its own pipeline on the shared runspace pool; a capacity limiter bounds how
many run at once (PowerShell Direct sessions are not free: each holds a runspace in the host's
PowerShell process and a remoting process in the guest; ``vmbusops exec`` defaults to the host's
``[host] max_sessions``). A per-guest timeout is a cancel scope around that guest's pipeline, so it
stops that guest's command (PSRP Signal) and no other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import trio

from vmbusops.config import DEFAULT_MAX_SESSIONS
from vmbusops.credentials import GuestCredential
from vmbusops.errors import PipelineTimedOutError, VmbusOpsError
from vmbusops.guestops.host import HyperVHost, InvokeOutcome
from vmbusops.records import GuestRecord


async def exec_in_guests(
    host: HyperVHost,
    vms: Sequence[str],
    script: str,
    credential: GuestCredential,
    *,
    on_record: Callable[[GuestRecord], Any],
    max_concurrency: int = DEFAULT_MAX_SESSIONS,
    timeout: float | None = None,
    arguments: Sequence[Any] = (),
) -> dict[str, InvokeOutcome]:
    """Run ``script`` in each VM; call ``on_record`` for every record as it arrives."""
    limiter = trio.CapacityLimiter(max(1, max_concurrency))
    outcomes: dict[str, InvokeOutcome] = {}

    async def one(vm: str) -> None:
        async with limiter:
            with trio.move_on_after(timeout if timeout is not None else math.inf) as scope:
                try:
                    async with host.invoke_in_guest(vm, script, credential, arguments=arguments) as inv:
                        outcomes[vm] = inv.outcome
                        async for rec in inv:
                            on_record(rec)
                except VmbusOpsError as exc:
                    outcome = outcomes.setdefault(vm, InvokeOutcome())
                    outcome.failure = outcome.failure or exc
            if scope.cancelled_caught:
                outcome = outcomes.setdefault(vm, InvokeOutcome())
                outcome.failure = PipelineTimedOutError(
                    f"{vm}: timed out after {timeout:g}s; the guest command was stopped"
                )

    async with trio.open_nursery() as nursery:
        for vm in vms:
            nursery.start_soon(one, vm)
    return outcomes
