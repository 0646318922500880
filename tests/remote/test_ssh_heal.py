"""A dropped SSH connection to the host is reopened by the host supervisor (real loopback sshd)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
from sshd import Sshd

from vmbusops.errors import HostDownError
from vmbusops.guestops.remote import open_ssh_host
from vmbusops.guestops.supervisor import Backoff, HostStatus, HostSupervisor, supervise_host


async def test_a_killed_ssh_session_is_reopened(sshd: Sshd, make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    sshd.use_lab(lab.path)
    seen: list[HostStatus] = []
    retried = trio.Event()

    def record(status: HostStatus) -> None:
        seen.append(status)
        if len(seen) >= 4:  # up, down, and at least two attempts that failed
            retried.set()

    supervisor = HostSupervisor(
        "hv-ssh",
        lambda: open_ssh_host(sshd.target(), staging_root=str(sshd.staging_root)),
        backoff=Backoff(first=0.05, cap=0.2),
        on_change=record,
    )
    hidden = sshd.lab_path.with_name("lab.away")
    with trio.fail_after(60):
        async with supervise_host(supervisor):
            first = supervisor.current()
            assert [vm.name for vm in await first.list_vms()]
            # Without its lab the subsystem cannot start, so the host stays down until it is back.
            sshd.lab_path.rename(hidden)
            try:
                assert sshd.kill_sessions() >= 1
                await supervisor.wait_up(False)
                await retried.wait()
                with pytest.raises(HostDownError):
                    supervisor.current()
            finally:
                hidden.rename(sshd.lab_path)
            await supervisor.wait_up()
            _, outcome = await supervisor.current().run_in_guest("web01", "Write-Output 'back'", lab.credential())
            assert outcome.ok
    ups = [s.up for s in seen]
    assert ups[0] is True and ups[-1] is True and ups.count(True) == 2
    assert seen[-1].reconnects == 1
    assert all(s.reason for s in seen if not s.up)
