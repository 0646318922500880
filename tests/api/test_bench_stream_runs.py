"""``./scripts/bench stream`` at its smallest runs to its end: it drives the journal writer with
the writer's own record tuples, so a change of what the writer holds breaks it, and a bench
nobody runs breaks quietly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_stream.py"


@pytest.mark.slow
def test_the_stream_bench_runs_through_and_its_followers_get_records(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "2", "--interval-ms", "20", "--seconds", "1", "--rounds", "1"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-4000:] + done.stderr[-4000:]
    got = re.search(r"\((\d+) records to the followers in all\)", out)
    assert got is not None and int(got.group(1)) > 0, out
    assert "agent CPU per follower-record: median " in out, out
