"""A WinRM service that goes away is noticed at once (the shell's Receive fails) and the host is
reopened when WinRM answers again; against the WS-Management double over the simulator.

The double cannot come back on the same port, so "WinRM answers again" is a second double and the
supervisor's ``connect`` reads which one is current, as a restarted service would be reached.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from test_winrm import PASSWORD, USER, _target
from wsman_double import WSManDouble

from vmbusops.errors import HostDownError
from vmbusops.guestops.remote_winrm import open_winrm_target
from vmbusops.guestops.supervisor import Backoff, HostStatus, HostSupervisor, supervise_host


async def test_a_vanished_winrm_service_is_noticed_and_the_host_reopened(
    tmp_path: Path, make_lab: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = make_lab()
    monkeypatch.delenv("NTLM_USER_FILE", raising=False)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    doubles = [WSManDouble(tmp_path / "one", users={USER: PASSWORD}, lab=lab.path).start()]
    seen: list[HostStatus] = []
    supervisor = HostSupervisor(
        "hv-winrm", lambda: open_winrm_target(_target(doubles[-1])), backoff=Backoff(first=0.05, cap=0.2),
        on_change=seen.append,
    )  # fmt: skip
    try:
        with trio.fail_after(60):
            async with supervise_host(supervisor):
                assert [vm.name for vm in await supervisor.current().list_vms()]
                # No command runs: the shell's own Receive is what notices.
                await trio.to_thread.run_sync(doubles[0].stop)
                await supervisor.wait_up(False)
                with pytest.raises(HostDownError):
                    supervisor.current()
                doubles.append(WSManDouble(tmp_path / "two", users={USER: PASSWORD}, lab=lab.path).start())
                await supervisor.wait_up()
                _, outcome = await supervisor.current().run_in_guest("web01", "Write-Output 'back'", lab.credential())
                assert outcome.ok
    finally:
        for double in doubles[1:]:
            double.stop()
    assert seen[0].up and seen[-1].up and seen[-1].reconnects == 1
