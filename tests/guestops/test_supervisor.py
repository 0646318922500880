"""The host supervisor against the real simulator process: SIGKILL it and the host comes back."""

from __future__ import annotations

import os
import random
import re
import signal
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio

from vmbusops.errors import ConfigError, HostDownError
from vmbusops.guestops.connect import open_host
from vmbusops.guestops.supervisor import Backoff, HostStatus, HostSupervisor, supervise_host


def test_backoff_grows_to_its_cap_with_jitter_below_each_step() -> None:
    backoff = Backoff(first=0.5, cap=4.0, factor=2.0, jitter=0.5)
    rng = random.Random(7)
    delays = [backoff.delay(n, rng) for n in range(8)]
    for n, delay in enumerate(delays):
        step = min(4.0, 0.5 * 2**n)
        assert step * 0.5 <= delay <= step
    assert max(delays) <= 4.0
    # Jitter: two agents whose host died at the same moment do not retry in step.
    assert [Backoff().delay(3, random.Random(1))] != [Backoff().delay(3, random.Random(2))]
    assert Backoff(cap=30).delay(10_000, rng) <= 30  # no overflow after a long outage


def host_pid(description: str) -> int:
    found = re.search(r"\(pid (\d+)\)", description)
    assert found is not None, description
    return int(found.group(1))


async def test_a_killed_simulator_is_reopened(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    seen: list[HostStatus] = []
    supervisor = HostSupervisor(
        "sim", partial(open_host, "sim", config=lab.config), backoff=Backoff(first=0.05, cap=0.2), on_change=seen.append
    )
    with trio.fail_after(30):
        async with supervise_host(supervisor):
            first = supervisor.current()
            assert [vm.name for vm in await first.list_vms()]
            os.kill(host_pid(first.pool.description), signal.SIGKILL)
            await supervisor.wait_up(False)
            # Work that started on the dead connection sees its own error, never the new host.
            with pytest.raises(HostDownError) as info:
                supervisor.current()
            assert info.value.transient and info.value.host == "sim"
            await supervisor.wait_up()
            again = supervisor.current()
            assert again is not first
            _, outcome = await again.run_in_guest("web01", "Write-Output 'back'", lab.credential())
            assert outcome.ok
    assert [s.up for s in seen] == [True, False, True]
    assert seen[-1].reconnects == 1
    assert seen[1].reason is not None and seen[1].reason.startswith("the PowerShell host python")


async def test_a_host_that_cannot_start_fails_the_start_with_its_own_error(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    lab.path.unlink()
    supervisor = HostSupervisor("sim", partial(open_host, "sim", config=lab.config))
    # The real error, as itself (not in an exception group, not "host down"), for the command
    # line to print in one line: a host that never came up is not one to wait for.
    with trio.fail_after(30), pytest.raises(ConfigError, match="cannot read lab file"):
        async with supervise_host(supervisor):
            pass
    assert supervisor.status.up is False and supervisor.status.reconnects == 0
