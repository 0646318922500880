"""The README's bundle flow, typed as a user would, with ``--host pwsh-lab`` on ``run``.

The same commands as tests/cli/test_readme_flow.py on the default lab; only the run goes through
real PowerShell (the commands run in this process: tests.clirun): its copy, script and dsc steps (the LCM's lines streamed from the lab's LCM
through each guest's remote session) on web01, web02 and db01.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.clirun import vmbusops

pytestmark = pytest.mark.pwsh


def test_the_scaffolded_bundle_runs_on_pwsh_lab(tmp_path: Path, vmbusops_home: Path, pwsh_path: str) -> None:
    env = {"VMBUSOPS_KEY_PASSPHRASE": "correct horse battery", "VMBUSOPS_PWSH": pwsh_path}
    steps = [
        ("bundle", "init", "lab-demo"),
        ("keys", "new", "alice", "--passphrase"),
        ("bundle", "build", "lab-demo", "-o", "lab-demo.vmb"),
        ("bundle", "sign", "lab-demo.vmb", "--key", "alice"),
        ("trust", "add", str(vmbusops_home / "keys" / "alice.pub"), "--vm", "web*", "--vm", "db01",
         "--credential", "lab-admin", "--steps", "copy,script,dsc"),
        ("bundle", "verify", "lab-demo.vmb"),
    ]  # fmt: skip
    for args in steps:
        proc = vmbusops(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "correct horse" not in proc.stdout + proc.stderr

    run = vmbusops("run", "lab-demo.vmb", "--host", "pwsh-lab", "--json", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    jobs = vmbusops("jobs", "--json", cwd=tmp_path, env=env)
    [job] = [json.loads(line) for line in jobs.stdout.splitlines()]
    assert job["state"] == "success"
    logs = vmbusops("logs", str(job["id"]), "--vm", "web01", cwd=tmp_path, env=env)
    assert "This machine is managed by vmbusops over the VMBus." in logs.stdout
    # The LCM's lines, from the lab's LCM, through real PowerShell, in the job's journal.
    assert "LCM:  [ Start  Set      ]  [[VmbusOpsDemoFile]Banner]" in logs.stdout
    assert "ERROR" not in logs.stdout
    banner = vmbusops_home / "sim" / "guests" / "db01" / "C" / "ProgramData" / "vmbusops" / "banner.txt"
    assert banner.read_text(encoding="utf-8") == "Configured by vmbusops"
    # The run's live NDJSON carries each guest's LCM lines as verbose records.
    lcm = {
        line["vm"] for line in lines
        if line.get("stream") == "verbose" and "[ Start  Set      ]  [[VmbusOpsDemoFile]Banner]" in str(line.get("message"))
    }  # fmt: skip
    assert lcm == {"web01", "web02", "db01"}, run.stdout[-2000:]
