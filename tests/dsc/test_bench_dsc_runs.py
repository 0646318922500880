"""``./scripts/bench dsc`` at its smallest runs to its end and prints every figure it
promises: its own guest channel stopped matching the one the push calls (``quiet=``) once, and a
bench nobody runs breaks quietly."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_dsc_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench("dsc", ["--files", "2", "--rounds", "1", "--lines", "100"], tmp_path)
    assert "every round copied all 2 files, checked in the guest by hash" in out, out
    for line in ("batched + hash-checked :", "one Copy-VMFile each   :", "the copies alone       :",
                 "first push on new pool :", "second push (unchanged):"):
        assert line in out, out
    assert "1 round trip, 0 copied" in out, out
    assert "LCM parser over 100 lines (100 events)" in out and "console lines    :" in out, out
