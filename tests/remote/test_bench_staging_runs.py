"""``./scripts/bench staging`` at its smallest runs to its end against its own sshd and
prints every figure it promises (a bench nobody runs breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sshd import find_sshd
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_staging_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    if find_sshd() is None:
        pytest.fail("OpenSSH's sshd is not installed; ./scripts/test installs it (apt-get install openssh-server)")
    out = run_bench("staging", ["--files", "1", "--mib", "1", "--rounds", "1"], tmp_path)
    for line in ("scp ", "scp -O ", "vmbusops upload ", "vmbusops staged+verified "):
        assert f"\n{line}" in out, out
    assert "goal: staged + verified on the host >= 0.80x scp: " in out, out
