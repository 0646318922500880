"""SIGKILL `vmbusops run` (and the `jobs resume` that follows) at seeded random moments.

After every kill the journal is read as it was left, then the job is resumed (and maybe killed
again); at the end every invariant is checked against every snapshot taken after a kill:

* nothing committed is lost: every record of a snapshot is still there, unchanged;
* nothing is duplicated and nothing is missing in between: each run's seqs are 1..N;
* a step the journal called finished is never run again (same attempts, same finish time, and no
  record of it from a later attempt);
* no job, run or step is left active once the last resume returned.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.builders import VM, write_lab
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine import journal_records
from vmbusops.engine.states import State

SEED = int(os.environ.get("VMBUSOPS_CRASH_SEED", "20240613"))
JOBS = int(os.environ.get("VMBUSOPS_CRASH_JOBS", "6"))
KILLS_PER_JOB = 3

LOOP = '1..25 | ForEach-Object {{ Write-Output "{name} $_"; Start-Sleep -Milliseconds 8 }}'
STEPS = [
    {"kind": "script", "name": "prepare", "inline": LOOP.format(name="prepare"), "idempotent": True},
    {"kind": "script", "name": "patch", "inline": LOOP.format(name="patch")},
    {"kind": "wait-ready", "name": "ready"},
    {"kind": "script", "name": "verify", "inline": LOOP.format(name="verify"), "idempotent": True},
]


def snapshot(db: Path, job_id: int) -> dict[str, Any]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = journal_records.read(con, job_id)
        records = {(r[2], r[3]): (r[4], r[5], r[8]) for r in stored}
        assert len(records) == len(stored), "a run's seq was stored twice"
        steps = {
            (r[0], r[1]): (r[2], r[3], r[4])
            for r in con.execute(
                "SELECT s.run_id, s.idx, s.state, s.attempts, s.finished_at FROM steps s"
                " JOIN runs ON runs.id = s.run_id WHERE runs.job_id = ?",
                (job_id,),
            )
        }
        runs = dict(con.execute("SELECT id, state FROM runs WHERE job_id = ?", (job_id,)).fetchall())
        job = con.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        con.close()
    return {"records": records, "steps": steps, "runs": runs, "job": job[0] if job else None}


def job_ids(db: Path) -> list[int]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "vmbusops", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The simulator child notices its closed stdin and exits; make sure it does not linger.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    assert proc.stderr is not None
    proc.stderr.close()


def check(before: dict[str, Any], after: dict[str, Any]) -> None:
    for key, value in before["records"].items():
        assert after["records"].get(key) == value, f"record {key} lost or changed"
    for (run_id, idx), (state, attempts, finished) in before["steps"].items():
        if state == State.SUCCESS.value:
            assert after["steps"][(run_id, idx)] == (state, attempts, finished), (
                f"step {idx} of run {run_id} re-ran"
            )


def check_final(final: dict[str, Any]) -> None:
    by_run: dict[int, list[int]] = {}
    for run_id, seq in final["records"]:
        by_run.setdefault(run_id, []).append(seq)
    for run_id, seqs in by_run.items():
        assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"run {run_id} has gaps or duplicates"
    assert State(final["job"]).terminal, final["job"]
    for run_id, state in final["runs"].items():
        assert State(state).terminal, (run_id, state)
    for (run_id, idx), (state, attempts, _) in final["steps"].items():
        assert State(state).terminal, (run_id, idx, state)
        step = STEPS[idx]["name"]
        if state == State.SUCCESS.value:
            # Every record of a finished step comes from the attempt that finished it.
            stale = [
                k
                for k, (s, attempt, _) in final["records"].items()
                if k[0] == run_id and s == step and attempt > attempts
            ]
            assert not stale


@pytest.mark.slow
def test_sigkill_at_random_moments_keeps_the_journal_consistent(tmp_path: Path, vmbusops_home: Path) -> None:
    rng = random.Random(SEED)
    key = PrivateKey.generate()
    trust_and_credential(key)
    lab = write_lab(tmp_path, [VM("vm01"), VM("vm02"), VM("vm03")], boot_seconds=0.2)
    env = {**os.environ, "VMBUSOPS_LAB": str(lab), "VMBUSOPS_HOME": str(vmbusops_home), "NO_COLOR": "1"}
    db = vmbusops_home / "journal" / "journal.sqlite"
    kills = 0
    deadline = time.monotonic() + 50
    for _ in range(JOBS):
        if time.monotonic() > deadline:
            break
        bundle = signed_bundle(tmp_path, key, vms=["vm*"], steps=STEPS, execution={"max_concurrency": 2})
        known = set(job_ids(db))
        proc = start(["run", str(bundle)], env)
        job_id = None
        while job_id is None and proc.poll() is None:
            new = set(job_ids(db)) - known
            job_id = min(new) if new else None
            time.sleep(0.01)
        if job_id is None:
            raise AssertionError(f"the run ended before creating a job: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        snapshots = []
        for attempt in range(KILLS_PER_JOB + 1):
            if attempt > 0:
                proc = start(["jobs", "resume", str(job_id)], env)
            if attempt < KILLS_PER_JOB:
                time.sleep(rng.uniform(0.0, 0.9))
                if proc.poll() is None:
                    kill(proc)
                    kills += 1
                    snapshots.append(snapshot(db, job_id))
                    if len(snapshots) > 1:
                        check(snapshots[-2], snapshots[-1])
                    if State(snapshots[-1]["job"]).terminal:
                        # Killed after the job's end was committed, while the process was still
                        # exiting: there is nothing to resume (and resuming it is refused, exit 2).
                        break
                    continue
            stderr = proc.communicate(timeout=30)[1]
            assert proc.returncode in (0, 1), stderr.decode()
            break
        final = snapshot(db, job_id)
        for snap in snapshots:
            check(snap, final)
        check_final(final)
    assert kills >= 6, f"only {kills} kills landed; the test proved little"
