"""``./scripts/bench startup`` at its smallest runs to its end and times each command it
promises (a bench nobody runs breaks quietly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_startup.py"


@pytest.mark.slow
def test_the_startup_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rounds", "1"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    for line in ("python -c pass ", "vmbusops --version ", "vmbusops exec --help "):
        assert line in out, out
