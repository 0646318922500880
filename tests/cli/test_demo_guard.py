"""`vmbusops demo` ends with a guarded change rolling back on the simulated host, and its receipt."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.clirun import vmbusops


@pytest.mark.slow
def test_the_demo_shows_a_guarded_change_rolled_back_and_its_receipt(vmbusops_home: Path) -> None:
    ran = vmbusops("demo", env={"NO_COLOR": "1"})
    assert ran.returncode == 0, ran.stdout[-3000:]
    section = ran.stdout.split("6. A guarded change", 1)[1]
    assert "production checkpoint vmbusops-job1-run1-patch taken of web01" in section
    assert "KB5035845" in section  # the patch did install under the checkpoint...
    before = next(line for line in section.splitlines() if "hotfixes before:" in line).split(":", 1)[1]
    after = next(line for line in section.splitlines() if "hotfixes after:" in line).split(":", 1)[1]
    assert "KB5035845" not in before and after.split("(")[0].strip() == before.strip()  # ...and is gone
    assert "rolled-back  rolled back to checkpoint vmbusops-job1-run1-patch: the health check failed" in section
    assert "checkpoints left on web01: none" in section
    assert "outcome rolled-back, code RolledBack" in section
    assert "checkpoint vmbusops-job1-run1-patch (production): rolled-back; taken " in section
