"""``./scripts/bench bundle`` at its smallest runs to its end and prints every figure it
promises (a bench nobody runs breaks quietly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_bundle_bench_runs_through_and_reports_each_figure(tmp_path: Path) -> None:
    out = run_bench("bundle", ["--files", "1", "--mib", "4", "--rounds", "1", "--dir", str(tmp_path)], tmp_path)
    for line in ("bundle verify (hash only)", "openssl dgst -sha256", "sha256sum (coreutils)",
                 "hashlib.sha256 (1 MiB reads)", "bundle accept (+extract)", "verify / openssl dgst -sha256",
                 "verifier peak RSS "):
        assert line in out, out
