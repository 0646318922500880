"""Ctrl-C during `vmbusops run` (a real process, a real SIGINT), and a process killed outright:
afterwards the journal tells the truth (states, record counts, durations that stopped) and the
operator is told how to finish the job."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.builders import VM, write_lab
from tests.clirun import hangup_delivered, vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey
from vmbusops.engine import journal_records

SLOW = 'Write-Output "one"; Write-Output "two"; Write-Output "three"; Start-Sleep -Seconds 600'
VMS = ["vm01", "vm02"]


def start_run(tmp_path: Path, env: dict[str, str], *flags: str) -> subprocess.Popen[str]:
    key = PrivateKey.generate()
    trust_and_credential(key)
    steps = [{"kind": "script", "name": "hold", "inline": SLOW}]
    bundle = signed_bundle(tmp_path, key, vms=VMS, steps=steps)
    return subprocess.Popen(
        hangup_delivered([sys.executable, "-m", "vmbusops", "run", str(bundle), *flags]),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def wait_for_output(proc: subprocess.Popen[str]) -> list[str]:
    """Read the run's lines until every VM printed its last line before the sleep."""
    assert proc.stdout is not None
    lines: list[str] = []
    waiting = set(VMS)
    while waiting:
        line = proc.stdout.readline()
        assert line, f"run ended early: {lines} {proc.stderr.read() if proc.stderr else ''}"
        lines.append(line)
        if line.rstrip().endswith("| three"):
            waiting.discard(line.split()[0])
        elif line.startswith("{") and json.loads(line).get("value") == "three":
            waiting.discard(json.loads(line)["vm"])
    return lines


def wait_committed(db: Path, count: int) -> None:
    """Until the journal holds ``count`` output records (the writer commits in batches)."""
    while True:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            jobs = [job_id for (job_id,) in con.execute("SELECT id FROM jobs")]
            n = sum(len(journal_records.read(con, job_id, stream="output")) for job_id in jobs)
        finally:
            con.close()
        if n >= count:
            return


def shown(env: dict[str, str], job_id: int) -> dict[str, Any]:
    r = vmbusops("jobs", "show", str(job_id), "--json", env=env)
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def journaled_records(env: dict[str, str], job_id: int) -> dict[str, int]:
    r = vmbusops("logs", str(job_id), "--json", env=env)
    counts: dict[str, int] = {}
    for line in r.stdout.splitlines():
        vm = json.loads(line)["vm"]
        counts[vm] = counts.get(vm, 0) + 1
    return counts


def env_for(tmp_path: Path, home: Path) -> dict[str, str]:
    lab = write_lab(tmp_path, [VM(v) for v in VMS])
    return {**os.environ, "VMBUSOPS_LAB": str(lab), "VMBUSOPS_HOME": str(home), "NO_COLOR": "1"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "hangup"])
def test_ctrl_c_or_a_hangup_prints_where_each_run_stands_and_the_resume_command(
    tmp_path: Path, vmbusops_home: Path, sig: signal.Signals
) -> None:
    """A hangup (the terminal went away) stops the guest pipelines and writes the job down
    interrupted as Ctrl-C does, instead of the process dying where it stands."""
    env = env_for(tmp_path, vmbusops_home)
    proc = start_run(tmp_path, env)
    try:
        first = wait_for_output(proc)
        job_id = int(first[0].split()[1])
        proc.send_signal(sig)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # failed: nothing of it is left to the next tests
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted, stopping guest pipelines" in err
    assert f"job {job_id}: 2 interrupted\n" in rest
    assert rest.endswith(f"2 runs interrupted; resume with: vmbusops jobs resume {job_id}\n"), rest

    job = shown(env, job_id)
    assert job["state"] == "interrupted"
    assert job["finished_at"] is not None
    counts = journaled_records(env, job_id)
    for run in job["runs"]:
        assert run["state"] == "interrupted"
        assert run["records"] == counts[run["vm"]] >= 3  # as `logs` shows them, not the last step's count
        assert run["finished_at"] is not None
        assert [s["state"] for s in run["steps"]] == ["interrupted"]
    # Its duration stopped with it: reading it again gives the same times.
    listed = [json.loads(line) for line in vmbusops("jobs", "--json", env=env).stdout.splitlines()]
    assert [(j["id"], j["finished_at"]) for j in listed] == [(job_id, job["finished_at"])]
    assert vmbusops("jobs", "--state", "interrupted", "--json", env=env).stdout.count("\n") == 1
    assert vmbusops("jobs", "--state", "success", "--json", env=env).stdout == ""


def test_ctrl_c_on_a_follower_stops_the_follower_and_says_the_job_goes_on(tmp_path: Path, vmbusops_home: Path) -> None:
    """`vmbusops logs -f` of a job `vmbusops run` runs: interrupting the follower stops no
    pipeline, and it says so rather than that it stops them."""
    env = env_for(tmp_path, vmbusops_home)
    proc = start_run(tmp_path, env)
    try:
        job_id = int(wait_for_output(proc)[0].split()[1])
        follower = subprocess.Popen(
            [sys.executable, "-m", "vmbusops", "logs", str(job_id), "-f"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )  # fmt: skip
        assert follower.stdout is not None
        seen = 0
        while seen < len(VMS):
            line = follower.stdout.readline()
            assert line, follower.stderr.read() if follower.stderr else ""
            seen += line.rstrip().endswith("| three")
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=60)
        assert follower.returncode == 130, err
        assert "interrupted; the job goes on where it runs" in err and "stopping guest pipelines" not in err
        assert shown(env, job_id)["state"] == "in-progress"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)


def test_a_killed_run_reads_interrupted_with_its_journaled_records_and_a_stopped_clock(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    env = env_for(tmp_path, vmbusops_home)
    proc = start_run(tmp_path, env)
    first = wait_for_output(proc)
    job_id = int(first[0].split()[1])
    wait_committed(vmbusops_home / "journal" / "journal.sqlite", 3 * len(VMS))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)

    job = shown(env, job_id)
    assert job["state"] == "interrupted"
    assert job["finished_at"] is not None and job["finished_at"] >= job["started_at"]
    counts = journaled_records(env, job_id)
    for run in job["runs"]:
        assert (run["state"], run["records"]) == ("interrupted", counts[run["vm"]])
        assert run["records"] >= 3
        assert [s["state"] for s in run["steps"]] == ["interrupted"]
    assert shown(env, job_id)["finished_at"] == job["finished_at"]
    history = [json.loads(line) for line in vmbusops("history", "--vm", "VM01", "--json", env=env).stdout.splitlines()]
    assert [(h["job"], h["state"], h["records"]) for h in history] == [(job_id, "interrupted", counts["vm01"])]
    assert history[0]["submitter"]  # the local user who ran it


def test_ctrl_c_of_run_json_ends_with_a_summary_object_naming_the_resume_command(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    env = env_for(tmp_path, vmbusops_home)
    proc = start_run(tmp_path, env, "--json")
    first = wait_for_output(proc)
    job_id = json.loads(first[0])["job"]
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(rest.splitlines()[-1])
    assert (summary["event"], summary["job"], summary["state"]) == ("summary", job_id, "interrupted")
    assert summary["interrupted"] == 2 and summary["resume"] == f"vmbusops jobs resume {job_id}"
    assert [r["state"] for r in summary["runs"]] == ["interrupted", "interrupted"]


def test_a_resume_the_trust_policy_refuses_is_coded_bundle_rejected(tmp_path: Path, vmbusops_home: Path) -> None:
    env = env_for(tmp_path, vmbusops_home)
    key = PrivateKey.generate()
    trust_and_credential(key)
    steps = [{"kind": "script", "name": "hold", "inline": SLOW, "idempotent": True}]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "run", str(signed_bundle(tmp_path, key, vms=VMS, steps=steps))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    job_id = int(wait_for_output(proc)[0].split()[1])
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert vmbusops("trust", "remove", key.public_key().keyid[:16], env=env).returncode == 0

    refused = vmbusops("jobs", "resume", str(job_id), env=env)
    assert refused.returncode == 4, refused.stderr
    job = shown(env, job_id)
    assert job["state"] == "failed"
    for run in job["runs"]:
        # Nothing about the run was abandoned by its resume policy: its bundle was rejected.
        assert (run["state"], run["code"]) == ("failed", "BundleRejected"), run
        assert [(s["state"], s["code"]) for s in run["steps"]] == [("failed", "BundleRejected")], run


def test_ctrl_c_of_exec_json_ends_each_guest_with_a_result_and_names_the_interrupted(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    env = env_for(tmp_path, vmbusops_home)
    trust_and_credential(PrivateKey.generate())  # the lab's credential, stored as lab-admin
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "exec", "--vm", "vm0*", "--credential", "lab-admin", "--json", "--", SLOW],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    wait_for_output(proc)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [json.loads(line) for line in rest.splitlines()]
    results = {line["vm"]: line for line in lines if line["event"] == "result"}
    assert sorted(results) == VMS, rest
    for line in results.values():
        assert (line["ok"], line["code"], line["interrupted"]) == (False, "Cancelled", True), line
        assert "interrupted" in line["failure"]
    summary = lines[-1]
    assert (summary["event"], summary["interrupted"], summary["succeeded"], summary["failed"]) == (
        "summary", VMS, [], []
    ), summary
    assert "interrupted: vm01, vm02" in err  # and said to the operator, on stderr
