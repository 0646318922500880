"""pypsrp 1.0.0b1, a PSRP client nobody here wrote, opens a pool on the simulator and works.

The peer runs in its own environment (.venv-peer: its httpx pins clash with ours), so this
test starts it as a process; ./scripts/test bootstraps that environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vmbusops.sim.lab import DEFAULT_USERNAME, lab_admin_password, load_lab

ROOT = Path(__file__).resolve().parents[2]
PEER_SCRIPT = Path(__file__).with_name("pypsrp_peer.py")


def peer_python() -> str:
    path = os.environ.get("VMBUSOPS_PEER_PYTHON") or str(ROOT / ".venv-peer" / "bin" / "python")
    if not Path(path).exists():
        pytest.fail(f"the independent PSRP peer is not installed at {path}; run ./scripts/test to bootstrap it")
    return path


def test_pypsrp_runs_get_vm_copy_vmfile_and_invoke_command(tmp_path: Path) -> None:
    source = tmp_path / "peer.txt"
    source.write_text("copied by the peer\n", encoding="utf-8")
    password = lab_admin_password(load_lab(None))
    env = dict(os.environ, VMBUSOPS_PEER_PASSWORD=password)
    proc = subprocess.run(
        [peer_python(), str(PEER_SCRIPT), sys.executable, "smoke", str(source), DEFAULT_USERNAME],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert password not in proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert {"web01", "web02", "db01", "legacy01", "app01"} <= set(result["vms"])
    assert result["states"]["legacy01"] == "Off"
    assert result["copy_errors"] == []
    assert result["invoke_errors"] == []
    assert result["invoke_verbose"] == ["from the peer"]
    assert result["invoke_output"] == ["copied by the peer", "arg-one"]
