"""``./scripts/bench fleet`` at its smallest runs to its end and prints every figure it promises:
a bench nobody runs in CI breaks quietly (a follower's counter it no longer kept did once)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_fleet.py"


@pytest.mark.slow
def test_the_fleet_bench_runs_through_and_reports_each_figure(tmp_path: Path, nats_binary: str) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rounds", "1", "--agents", "2", "--vms-per-host", "2", "--concurrency", "2",
         "--followers", "1", "--records", "2", "--latency-ms", "10"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    for side in ("fleet", "peer", "single"):
        assert f"round 1 {side}: success" in out, out
    assert "latency guest -> follower, fleet (controller SSE), 1 followers per job: p50 " in out
    assert "of it the receiving agent's timestamp -> in the LOG stream" in out
    assert "p50 - ms" not in out  # every latency had records to measure
    assert "CPU per record journaled, fleet: controller " in out
    assert "goal wall within 1.2 x ideal: fleet " in out and "goal p99 < 100 ms" in out
