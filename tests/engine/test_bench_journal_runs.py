"""``./scripts/bench journal`` at its smallest runs to its end and prints every figure it
promises, reads and status calls both (a bench nobody runs breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_journal_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench(
        "journal", ["--sizes", "1000", "--runs", "5", "--rounds", "1", "--status-records", "1000",
         "--followers", "1", "--quiet-seconds", "0.5"], tmp_path, timeout=180
    )  # fmt: skip
    assert "1,000 records: Journal.records " in out and "pages of 2000: ours p50 " in out, out
    assert "the garbage collector: " in out and "; the heap frozen as logs does)" in out, out
    assert "the slowest pages: " in out and " on a CPU" in out, out
    assert "GET /v1/jobs/{id} (5 runs), no follower: p50 " in out, out
    assert "with 1 catching-up follower(s): p50 " in out and "each read all 1,000 in " in out, out
    assert "every page <= 50 ms: worst " in out and "status p99 <= 5 ms during catch-up: " in out, out


@pytest.mark.slow
def test_the_status_calls_run_through_with_the_h11_client(tmp_path: Path) -> None:
    out = run_bench(
        "journal", ["--no-reads", "--runs", "5", "--rounds", "1", "--status-records", "1000", "--followers", "1",
         "--quiet-seconds", "0.5", "--client", "h11"], tmp_path, timeout=180
    )  # fmt: skip
    assert "agent started on it; calls made with h11" in out, out
    assert "GET /v1/jobs/{id} (5 runs), no follower: p50 " in out and "(GET /v1/health): p50 " in out, out
    assert "with 1 catching-up follower(s): p50 " in out and "each read all 1,000 in " in out, out
    assert "status p99 <= 5 ms during catch-up: " in out, out
