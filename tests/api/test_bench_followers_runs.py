"""``./scripts/bench followers`` at its smallest runs to its end and prints every figure it
promises (a bench nobody runs in CI breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_followers_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench("followers", ["--config", "2x2", "--records", "3", "--rounds", "1"], tmp_path, timeout=300)
    assert "jobs: all success; follower-records per round: 8..8 of 8 expected" in out, out
    assert "latency guest -> follower: p50 " in out and "agent CPU per follower-record: " in out
    assert "HTTP body chunks per follower-record" in out and "submissions/s: " in out
