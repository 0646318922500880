"""``./scripts/bench dsc`` at its smallest runs to its end and prints every figure it
promises: its own guest channel stopped matching the one the push calls (``quiet=``) once, and a
bench nobody runs breaks quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_dsc.py"


@pytest.mark.slow
def test_the_dsc_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--files", "2", "--rounds", "1", "--lines", "100"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "every round copied all 2 files, checked in the guest by hash" in out, out
    for line in ("batched + hash-checked :", "one Copy-VMFile each   :", "the copies alone       :",
                 "first push on new pool :", "second push (unchanged):"):
        assert line in out, out
    assert "1 round trip, 0 copied" in out, out
    assert "LCM parser over 100 lines (100 events)" in out and "console lines    :" in out, out
