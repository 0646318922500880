"""``./scripts/bench fleet`` at its smallest runs to its end and prints every figure it promises:
a bench nobody runs in CI breaks quietly (a follower's counter it no longer kept did once)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_fleet_bench_runs_through_and_reports_each_figure(tmp_path: Path, nats_binary: str) -> None:
    out = run_bench(
        "fleet", ["--rounds", "1", "--agents", "2", "--vms-per-host", "2", "--concurrency", "2",
         "--followers", "1", "--records", "2", "--latency-ms", "10"], tmp_path, timeout=300
    )  # fmt: skip
    for side in ("fleet", "peer", "single"):
        assert f"round 1 {side}: success" in out, out
    assert "latency guest -> follower, fleet (controller SSE), 1 followers per job: p50 " in out
    assert "of it the receiving agent's timestamp -> in the LOG stream" in out
    assert "p50 - ms" not in out  # every latency had records to measure
    assert "CPU per record journaled, fleet: controller " in out
    assert "goal wall within 1.2 x ideal: fleet " in out and "goal p99 < 100 ms" in out
