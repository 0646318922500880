"""``./scripts/bench stream`` at its smallest runs to its end: it drives the journal writer with
the writer's own record tuples, so a change of what the writer holds breaks it, and a bench
nobody runs breaks quietly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.benchruns import run_bench


@pytest.mark.slow
def test_the_stream_bench_runs_through_and_its_followers_get_records(tmp_path: Path) -> None:
    out = run_bench("stream", ["--jobs", "2", "--interval-ms", "20", "--seconds", "1", "--rounds", "1"], tmp_path)
    got = re.search(r"\((\d+) records to the followers in all\)", out)
    assert got is not None and int(got.group(1)) > 0, out
    assert "agent CPU per follower-record: median " in out, out
