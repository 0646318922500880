"""``./scripts/bench followers`` at its smallest runs to its end and prints every figure it
promises (a bench nobody runs in CI breaks quietly)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_followers.py"


@pytest.mark.slow
def test_the_followers_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--config", "2x2", "--records", "3", "--rounds", "1"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    assert "jobs: all success; follower-records per round: 8..8 of 8 expected" in out, out
    assert "latency guest -> follower: p50 " in out and "agent CPU per follower-record: " in out
    assert "HTTP body chunks per follower-record" in out and "submissions/s: " in out
