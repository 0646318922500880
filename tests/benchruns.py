"""Running a benchmark at its smallest in the suite, to its end: a bench nobody runs breaks
quietly (one's own guest channel, one's record tuples and one's follower counter each stopped
matching the product once), so each has a test that runs it and looks for every figure it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench(name: str, args: list[str], tmp_path: Path, *, timeout: float = 120) -> str:
    """``benchmarks/bench_<name>.py args`` with its temporary files under ``tmp_path`` and no
    ``VMBUSOPS_HOME`` of the caller's; what it printed, once it has exited 0."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_HOME", None)
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout
