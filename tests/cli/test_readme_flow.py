"""The README's author -> sign -> trust -> verify -> run flow, as an operator types it (in this
process: tests.clirun)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.clirun import vmbusops


def test_scaffolded_bundle_runs_on_the_default_simulated_lab(tmp_path: Path, vmbusops_home: Path) -> None:
    env = {"VMBUSOPS_KEY_PASSPHRASE": "correct horse battery"}
    steps = [
        ("bundle", "init", "lab-demo"),
        ("keys", "new", "alice", "--passphrase"),
        ("bundle", "build", "lab-demo", "-o", "lab-demo.vmb"),
        ("bundle", "sign", "lab-demo.vmb", "--key", "alice"),
        ("trust", "add", str(vmbusops_home / "keys" / "alice.pub"), "--vm", "web*", "--vm", "db01",
         "--credential", "lab-admin", "--steps", "copy,script,dsc"),
        ("bundle", "verify", "lab-demo.vmb"),
    ]
    for args in steps:
        proc = vmbusops(*args, cwd=tmp_path, env=env)
        assert proc.returncode == 0, (args, proc.stderr)
        assert "correct horse" not in proc.stdout + proc.stderr

    run = vmbusops("run", "lab-demo.vmb", "--json", cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    jobs = vmbusops("jobs", "--json", cwd=tmp_path, env=env)
    [job] = [json.loads(line) for line in jobs.stdout.splitlines()]
    assert job["state"] == "success"
    logs = vmbusops("logs", str(job["id"]), "--vm", "web01", cwd=tmp_path, env=env)
    assert "This machine is managed by vmbusops over the VMBus." in logs.stdout
    assert "ERROR" not in logs.stdout
    assert '"$type"' not in logs.stdout  # objects render as in the live view, not as JSON

    again = vmbusops("run", "lab-demo.vmb", cwd=tmp_path, env=env)
    assert again.returncode == 4
    assert "already accepted" in again.stderr
