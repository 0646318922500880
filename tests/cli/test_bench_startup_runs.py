"""``./scripts/bench startup`` at its smallest runs to its end and times each command it
promises (a bench nobody runs breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_startup_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench("startup", ["--rounds", "1"], tmp_path)
    for line in ("python -c pass ", "vmbusops --version ", "vmbusops exec --help "):
        assert line in out, out
