"""What PowerShell itself shows about the guest wrapper, on the pwsh-lab lane.

On this lane ``Set-ExecutionPolicy`` throws a terminating error whatever ``-ErrorAction`` says
(PowerShell 7 on Linux has no execution policy), which is exactly how Windows PowerShell answers
it where Group Policy overrides the process scope. The engine's old wrapper set
``$ErrorActionPreference = 'Stop'`` and then called ``Set-ExecutionPolicy ... -ErrorAction
SilentlyContinue``: such a prologue ends the whole batch. The guest invoker tries it inside
``try``, so its steps run.
"""

from __future__ import annotations

import pytest
from pwshlab_support import PwshLab

from vmbusops.records import OutputRecord

pytestmark = pytest.mark.pwsh

OLD_PROLOGUE = (
    "$ErrorActionPreference = 'Stop'\n"
    "Set-ExecutionPolicy -Scope Process -ExecutionPolicy Bypass -Force -ErrorAction SilentlyContinue\n"
    "'after the prologue'\n"
)


async def test_a_policy_that_refuses_the_process_scope_does_not_end_the_batch(pwsh_lab: PwshLab) -> None:
    async with pwsh_lab.open() as host:
        # The condition is real on this lane: the old prologue never reaches its next line.
        old, old_outcome = await host.run_in_guest("web01", OLD_PROLOGUE, pwsh_lab.credential())
        # The invoker's own prologue meets the same refusal, and the step runs to its end.
        new, new_outcome = await host.run_in_guest("web01", "'step ran'", pwsh_lab.credential())
    assert [r.record.value for r in old if isinstance(r.record, OutputRecord)] == []
    assert old_outcome.exit_code == 1
    assert any("not supported on this platform" in m for m in old_outcome.error_messages), old_outcome
    assert [r.record.value for r in new if isinstance(r.record, OutputRecord)] == ["step ran"]
    assert new_outcome.ok, new_outcome
