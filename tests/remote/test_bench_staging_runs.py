"""``./scripts/bench staging`` at its smallest runs to its end against its own sshd and
prints every figure it promises (a bench nobody runs breaks quietly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sshd import find_sshd

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_staging.py"


@pytest.mark.slow
def test_the_staging_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    if find_sshd() is None:
        pytest.fail("OpenSSH's sshd is not installed; ./scripts/test installs it (apt-get install openssh-server)")
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--files", "1", "--mib", "1", "--rounds", "1"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    for line in ("scp ", "scp -O ", "vmbusops upload ", "vmbusops staged+verified "):
        assert f"\n{line}" in out, out
    assert "goal: staged + verified on the host >= 0.80x scp: " in out, out
