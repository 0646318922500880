"""`vmbusops prune` (and --dry-run), and the journal's size under `vmbusops jobs`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from click.testing import CliRunner
from tests.engine.test_retention import NOW, add_job, bundle_folder

from vmbusops.cli.main import cli
from vmbusops.engine import Journal, State
from vmbusops.engine.journal import journal_path
from vmbusops.retention import DAY


def test_prune_shows_then_removes_what_retention_no_longer_keeps(vmbusops_home: Path) -> None:
    (vmbusops_home / "config.toml").write_text("[retention]\nrecords_days = 7\n")
    journal = Journal()
    folder = bundle_folder("done")
    days_ago = (NOW - time.time()) / DAY
    old = add_job(journal, folder, state=State.SUCCESS, finished_days_ago=days_ago + 8)
    kept = add_job(journal, None, state=State.SUCCESS, finished_days_ago=days_ago + 6)
    runner = CliRunner()

    dry = runner.invoke(cli, ["prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    lines = dry.output.splitlines()
    assert lines[:2] == [
        f"would remove: 3 records of 1 finished job(s): {old}",
        "would remove: 1 bundle folder(s), 4.0 KB: bundle-done",
    ]
    assert lines[2].startswith("journal: ") and str(journal_path()) in lines[2]
    assert folder.exists() and len(journal.records(old)) == 3

    done = runner.invoke(cli, ["prune", "--json"])
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert (report["record_jobs"], report["records"], report["dry_run"]) == ([old], 3, False)
    assert not folder.exists()
    assert journal.records(old) == [] and len(journal.records(kept)) == 3
    assert runner.invoke(cli, ["prune"]).output.splitlines()[0] == "nothing to remove"

    listing = runner.invoke(cli, ["jobs"])
    assert listing.exit_code == 0
    assert listing.output.splitlines()[-1].startswith("journal: ")
    assert str(journal_path()) in listing.output.splitlines()[-1]
    # The JSON form stays one job per line.
    assert [json.loads(line)["id"] for line in runner.invoke(cli, ["jobs", "--json"]).output.splitlines()] == [kept, old]

    # The logs of a pruned job say where its records went; a kept job's say nothing of the kind.
    pruned = runner.invoke(cli, ["logs", str(old)])
    assert (pruned.exit_code, pruned.stdout) == (0, "")
    assert pruned.stderr.splitlines() == [
        f"vmbusops: job {old}'s records were removed by retention ([retention] records_days); its runs keep"
        f" an excerpt: vmbusops jobs show {old}"
    ]
    assert runner.invoke(cli, ["logs", str(kept)]).stderr == ""


def test_a_bad_retention_setting_is_one_line_and_a_usage_error(vmbusops_home: Path) -> None:
    (vmbusops_home / "config.toml").write_text("[retention]\nrecords_days = -1\n")
    result = CliRunner().invoke(cli, ["prune"])
    assert result.exit_code == 2
    assert "[retention] records_days must be a number from 0 to 36500" in result.output
