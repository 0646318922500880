"""``vmbusops demo --fleet`` end to end, as an operator runs it: a real nats-server, a controller
and three agents on loopback, a job over every host, a live migration and a killed agent mid-job.
The tour says for each of them whether it was resolved; here each must be."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tests.clirun import hangup_delivered


@pytest.mark.slow
def test_demo_fleet_shows_a_job_over_every_host_a_migration_and_a_killed_agent_each_resolved(
    tmp_path: Path, nats_binary: str
) -> None:
    env = {**os.environ, "VMBUSOPS_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_LAB", None)
    done = subprocess.run(
        [sys.executable, "-m", "vmbusops", "demo", "--fleet"], capture_output=True, text=True, env=env,
        timeout=600, check=False,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-3000:]
    # The fleet, its VMs with their hosts, the job's records as they came, then the verdicts.
    assert "agent HV-A  node of cluster CL1" in out and "agent HV-C  a lone host" in out
    assert "(GET /v1/vms)" in out and "live migration mid-step: web01 HV-A -> HV-B" in out
    assert "web01  controller  run moved to host HV-B" in out
    assert "db01   controller  run lost host HV-C" in out and "db01   controller  run moved to host HV-C" in out
    verdicts = [line.strip() for line in out.splitlines() if "resolved: " in line]
    assert len(verdicts) == 3 and all(v.startswith("resolved: ") for v in verdicts), verdicts
    assert "web01 live-migrated HV-A -> HV-B mid-step s2" in verdicts[0]
    assert "db01's agent on HV-C was killed mid-step s2" in verdicts[1]
    assert "the job ended success" in verdicts[2]
    # Everything it started has stopped, and a tour that succeeded leaves no files behind.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("vmbusops-fleet-demo-")]
    assert processes_under(tmp_path) == []


@pytest.mark.slow
def test_demo_fleet_stopped_by_a_hangup_mid_job_leaves_no_process_running(tmp_path: Path, nats_binary: str) -> None:
    """The terminal goes away (SIGHUP) while the tour's job runs: the tour stops as on Ctrl-C
    (exit 130), and the nats-server, controller, agents and simulated hosts it started stop too:
    they live in sessions of their own, so nothing but the tour can stop them."""
    env = {**os.environ, "VMBUSOPS_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path), "NO_COLOR": "1"}
    env.pop("VMBUSOPS_LAB", None)
    proc = subprocess.Popen(
        hangup_delivered([sys.executable, "-m", "vmbusops", "demo", "--fleet"]), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "accepted by the controller" in line:
                break
        assert seen and "accepted by the controller" in seen[-1], "".join(seen)[-3000:]
        assert len(processes_under(tmp_path)) >= 8  # nats-server, a controller, 3 agents and their hosts
        proc.send_signal(signal.SIGHUP)
        rest, err = proc.communicate(timeout=120)
        left = processes_under(tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in processes_under(tmp_path):  # a failure here must not leave them to the next tests
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == 130, (rest[-3000:], err[-3000:])
    assert "interrupted, stopping the fleet it started" in err
    assert left == []


def processes_under(directory: Path) -> list[int]:
    """Processes whose environment names ``directory`` (their VMBUSOPS_HOME or lab is in it)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if str(directory).encode() in (proc / "environ").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found
