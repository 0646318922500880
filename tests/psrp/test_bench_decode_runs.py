"""``./scripts/bench decode`` at its smallest runs to its end: every kind of message decodes
to what psrpcore makes of it (the bench checks that first) and gets a rate (a bench nobody runs
breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_decode_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench("decode", ["200", "1"], tmp_path)
    for kind in ("verbose", "warning", "information", "progress", "error", "output string"):
        assert f"\n{kind} " in out, out
