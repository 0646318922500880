"""A run that waits says why in `jobs show`: for a concurrency slot, for its VM (another job's run
holds it), to retry a step after a transient failure, or for a host session (its process's
``[host] max_sessions`` all in use). Real `vmbusops run` processes on the simulator, each with a
cap of one session, read while they wait, then stopped with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.builders import VM, write_lab
from tests.clirun import vmbusops
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.crypto import PrivateKey

HOLD = {"kind": "script", "name": "hold", "inline": 'Write-Output "held"; Start-Sleep -Seconds 600', "idempotent": True}


@pytest.fixture
def started(
    tmp_path: Path, vmbusops_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., None]]:
    """Start ``vmbusops run`` of a bundle in the background; every one is stopped (Ctrl-C) at the end."""
    lab = write_lab(
        tmp_path,
        [VM("vm01"), VM("vm02"), VM("vm03", faults={"session_drop_after_records": 1}), VM("vm04"), VM("vm05")],
    )
    monkeypatch.setenv("VMBUSOPS_LAB", str(lab))
    (vmbusops_home / "config.toml").write_text("[host]\nmax_sessions = 1\n")
    key = PrivateKey.generate()
    trust_and_credential(key)
    procs: list[subprocess.Popen[str]] = []

    def start(vms: list[str], steps: list[dict[str, Any]], execution: dict[str, Any] | None = None) -> None:
        bundle = signed_bundle(tmp_path, key, vms=vms, steps=steps, execution=execution, name=f"wait{len(procs)}")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vmbusops", "run", str(bundle)],
            env={**os.environ, "NO_COLOR": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            start_new_session=True,
        ))  # fmt: skip

    yield start
    for proc in procs:
        proc.send_signal(signal.SIGINT)
    for proc in procs:
        proc.communicate(timeout=60)


def runs_once(job_id: int, ready: Callable[[dict[str, dict[str, Any]]], bool]) -> dict[str, dict[str, Any]]:
    """The job's runs (by VM) once ``ready`` says they are as the test needs them."""
    while True:
        shown = vmbusops("jobs", "show", str(job_id), "--json")
        if shown.returncode == 0:
            job = json.loads(shown.stdout)
            runs = {r["vm"]: r for r in job["runs"]}
            if ready(runs):
                return runs
            assert job["state"] in ("pending", "in-progress", "delayed"), job  # ended without waiting
        time.sleep(0.1)  # polled as an operator would; nothing here measures time


@pytest.mark.slow
def test_a_waiting_run_says_why_in_jobs_show(started: Callable[..., None]) -> None:
    # Job 1: two VMs, one at a time: one runs, the other waits for a slot.
    started(["vm01", "vm02"], [HOLD], {"max_concurrency": 1})
    runs = runs_once(1, lambda rs: sorted(r["state"] for r in rs.values()) == ["delayed", "in-progress"])
    [busy] = [vm for vm, r in runs.items() if r["state"] == "in-progress"]
    [queued] = [vm for vm, r in runs.items() if r["state"] == "delayed"]
    text = vmbusops("jobs", "show", "1").stdout
    assert "waiting for a slot: the job's max concurrency is reached (1 of its runs in progress)" in text, text

    # Job 2, on the VM job 1 is running on: it waits for that VM.
    started([busy], [HOLD])
    runs_once(2, lambda rs: rs[busy]["state"] == "delayed")
    text = vmbusops("jobs", "show", "2").stdout
    assert f"waiting for {busy}: job 1's run on it is in progress" in text, text
    assert queued != busy

    # Job 3: the session drops under the step (a transient failure), which waits to be tried again.
    twice = 'Write-Output "one"; Write-Output "two"; Start-Sleep -Seconds 600'
    retried = {**HOLD, "inline": twice, "retry": {"attempts": 3, "backoff": "600s"}}
    started(["vm03"], [retried])
    runs_once(3, lambda rs: rs["vm03"]["steps"][0]["state"] == "delayed")
    text = vmbusops("jobs", "show", "3").stdout
    assert "waiting to retry step hold (attempt 1 failed: " in text, text

    # Job 4: two runs at once, in a process with one session: one holds it, the other's step waits.
    started(["vm04", "vm05"], [HOLD], {"max_concurrency": 2})
    runs = runs_once(4, lambda rs: any(r["waiting"] == "session" for r in rs.values()))
    assert sorted(r["state"] for r in runs.values()) == ["in-progress", "in-progress"]
    assert sorted(str(r["waiting"]) for r in runs.values()) == ["None", "session"]
    text = vmbusops("jobs", "show", "4").stdout
    assert (
        "step hold waiting for a host session: all PowerShell Direct sessions of the process that runs the job"
        " are in use ([host] max_sessions, across its jobs)"
    ) in " ".join(text.split()), text
