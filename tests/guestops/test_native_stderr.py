"""A native tool's stderr on the simulated Windows PowerShell 5.1 guest.

On Windows PowerShell 5.1 the server side of remoting turns each stderr line of a native command
into an error record, which ``$ErrorActionPreference = 'Stop'`` makes terminating even when the
tool exits 0. The engine's old batch wrapper set that preference for every step, so such a tool
failed its step. The guest invoker never sets it: the lines arrive as records, the step's result is
the tool's exit code. (PowerShell 7.2 and later leave native stderr alone, so only the simulator's
5.1 model can show this; pwsh-lab shows the same records without the terminating part.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.simhost import open_sim_host

from vmbusops.records import ErrorRecord, OutputRecord

TOOL = 'cmd.exe /c "echo working & echo warning: cache cold 1>&2 & echo second line 1>&2 & exit /b 0"'


async def test_stderr_lines_are_records_and_do_not_fail_the_step(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_sim_host(lab.path) as host:
        records, outcome = await host.run_in_guest("web01", f"{TOOL}\n'after the tool'", lab.credential())
    assert [r.record.value for r in records if isinstance(r.record, OutputRecord)] == ["working", "after the tool"]
    errors = [r.record for r in records if isinstance(r.record, ErrorRecord)]
    assert [(e.message, e.fqid) for e in errors] == [
        ("warning: cache cold", "NativeCommandError"),
        ("second line", "NativeCommandErrorMessage"),
    ]
    assert outcome.ok, outcome
    assert (outcome.exit_code, outcome.script_errors, outcome.error_records) == (0, 0, 2)


async def test_under_the_old_wrappers_preference_the_same_tool_ends_the_step(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_sim_host(lab.path) as host:
        records, outcome = await host.run_in_guest(
            "web01", f"$ErrorActionPreference = 'Stop'\n{TOOL}\n'after the tool'", lab.credential()
        )
    outputs = [r.record.value for r in records if isinstance(r.record, OutputRecord)]
    assert outputs == ["working"]  # the first stderr line ended it, as on Windows PowerShell 5.1
    assert not outcome.ok
    assert outcome.exit_code == 1


async def test_the_tools_exit_code_is_the_steps(make_lab: Callable[..., Any]) -> None:
    lab = make_lab()
    async with open_sim_host(lab.path) as host:
        _, failed = await host.run_in_guest("web01", 'cmd /c "echo e 1>&2 & exit /b 3"', lab.credential())
        _, refused = await host.run_in_guest("web01", 'cmd /c "dir C:\\"', lab.credential())
    assert (failed.exit_code, failed.script_errors, failed.ok) == (3, 0, False)
    assert failed.why_failed() == "exit code 3"
    assert refused.exit_code == 1 and "does not support" in refused.error_messages[0]
