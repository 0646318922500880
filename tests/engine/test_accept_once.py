"""`vmbusops run` and `jobs resume` as processes: a bundle is used up only with its job, and a job
resumes only while its bundle still passes verification."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from tests.builders import PASSWORD, VM, write_lab

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey
from vmbusops.bundle.paths import trust_policy_path
from vmbusops.bundle.policy import Scope, TrustedKey, TrustPolicy, save_trust_policy
from vmbusops.credentials import CredentialStore, Secret

SLOW = {"kind": "script", "name": "slow", "inline": 'Write-Output "started"; Start-Sleep -Seconds 30'}
QUICK = {"kind": "script", "name": "hello", "inline": 'Write-Output "hello"'}


def bundle(
    directory: Path, key: PrivateKey, *, credential: str, steps: list[dict[str, Any]], vms: tuple[str, ...] = ("vm01",)
) -> Path:
    source = directory / f"src-{uuid.uuid4().hex[:8]}"
    source.mkdir(parents=True)
    doc = {"name": "once", "version": 1, "credential": credential, "targets": {"vms": list(vms)}, "steps": steps}
    (source / "bundle.toml").write_text(tomli_w.dumps(doc))
    out = directory / f"{source.name}.vmb"
    build_bundle(source, out)
    sign_bundle(out, key)
    return out


@pytest.fixture
def env(tmp_path: Path, vmbusops_home: Path) -> dict[str, str]:
    lab = write_lab(tmp_path, [VM("vm01")])
    return {**os.environ, "VMBUSOPS_LAB": str(lab), "VMBUSOPS_HOME": str(vmbusops_home), "NO_COLOR": "1"}


@pytest.fixture
def key(vmbusops_home: Path) -> PrivateKey:
    key = PrivateKey.generate()
    scope = Scope(keys=(), credentials=("*",))
    save_trust_policy(TrustPolicy().with_key(TrustedKey(name="ops", public=key.public_key()), scope), trust_policy_path())
    CredentialStore().set("lab-admin", "Administrator", Secret(PASSWORD))
    return key


def vmbusops(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmbusops", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def jobs(home: Path) -> list[tuple[int, str]]:
    db = home / "journal" / "journal.sqlite"
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [(r[0], r[1]) for r in con.execute("SELECT id, state FROM jobs ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def run_and_kill(env: dict[str, str], home: Path, path: Path) -> int:
    """`vmbusops run`, SIGKILLed once its job is in the journal; returns the job's id."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "run", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not jobs(home) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert jobs(home), "the run ended before making its job"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return jobs(home)[-1][0]


@pytest.mark.slow
def test_a_run_refused_for_its_credential_uses_nothing_up(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path
) -> None:
    path = bundle(tmp_path, key, credential="ops-admin", steps=[QUICK])
    assert vmbusops(env, "bundle", "verify", str(path)).returncode == 0
    for _ in range(2):
        failed = vmbusops(env, "run", str(path))
        assert failed.returncode == 2, failed.stderr
        assert "no credential named 'ops-admin'" in failed.stderr
        assert "Traceback" not in failed.stderr
    assert jobs(vmbusops_home) == []
    assert vmbusops(env, "bundle", "verify", str(path)).returncode == 0  # not burnt
    CredentialStore().set("ops-admin", "Administrator", Secret(PASSWORD))
    ok = vmbusops(env, "run", str(path))
    assert ok.returncode == 0, ok.stderr
    again = vmbusops(env, "run", str(path))
    assert again.returncode == 4 and "already accepted" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("host", ["missing", "garbage"])
def test_a_run_whose_host_fails_uses_nothing_up(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path, host: str
) -> None:
    path = bundle(tmp_path, key, credential="lab-admin", steps=[QUICK])
    pwsh = tmp_path / "pwsh"
    if host == "garbage":
        pwsh.write_text("#!/bin/sh\necho 'this is not PSRP'\nhead -c 100 /dev/urandom | base64\n")
        pwsh.chmod(0o755)
    failed = vmbusops({**env, "VMBUSOPS_PWSH": str(pwsh)}, "run", "--host", "pwsh", str(path))
    assert failed.returncode in (2, 3), failed.stderr
    assert "Traceback" not in failed.stderr and len(failed.stderr.strip().splitlines()) <= 2
    assert jobs(vmbusops_home) == []
    ok = vmbusops(env, "run", str(path))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.slow
def test_a_run_killed_after_its_job_exists_keeps_the_bundle_used_and_the_job_resumable(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path
) -> None:
    path = bundle(tmp_path, key, credential="lab-admin", steps=[{**SLOW, "idempotent": True}])
    job_id = run_and_kill(env, vmbusops_home, path)
    again = vmbusops(env, "run", str(path))
    assert again.returncode == 4 and "already accepted" in again.stderr, again.stderr
    shown = json.loads(vmbusops(env, "jobs", "show", str(job_id), "--json").stdout)
    assert shown["state"] == "interrupted"


def test_a_run_killed_before_its_job_exists_leaves_the_bundle_unused(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path
) -> None:
    path = bundle(tmp_path, key, credential="lab-admin", steps=[QUICK])
    # what a SIGKILL between acceptance and the job leaves: a reservation held by a dead process
    reserve = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from vmbusops.engine import Journal, acceptance\n"
        "acceptance.accept(Path(sys.argv[1]), Journal())\n"
        "os._exit(0)\n"
    )
    held = subprocess.run([sys.executable, "-c", reserve, str(path)], env=env, check=False, capture_output=True)
    assert held.returncode == 0, held.stderr
    assert jobs(vmbusops_home) == []
    assert vmbusops(env, "bundle", "verify", str(path)).returncode == 0
    ok = vmbusops(env, "run", str(path))
    assert ok.returncode == 0, ok.stderr
    assert [state for _, state in jobs(vmbusops_home)] == ["success"]


def test_resume_verifies_the_bundle_again_and_refuses_a_signer_no_longer_trusted(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path
) -> None:
    path = bundle(tmp_path, key, credential="lab-admin", steps=[{**SLOW, "idempotent": True}, QUICK])
    job_id = run_and_kill(env, vmbusops_home, path)
    removed = vmbusops(env, "trust", "remove", key.public_key().keyid[:16])
    assert removed.returncode == 0, removed.stderr
    refused = vmbusops(env, "jobs", "resume", str(job_id))
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "no signature from a trusted key" in refused.stderr
    assert "Traceback" not in refused.stderr
    shown = json.loads(vmbusops(env, "jobs", "show", str(job_id), "--json").stdout)
    assert shown["state"] == "failed"
    assert "not resumed: no signature from a trusted key" in shown["error"]
    [run] = shown["runs"]
    assert run["state"] == "failed" and "not resumed" in run["error"]
    assert all(step["state"] != "success" for step in run["steps"])
    again = vmbusops(env, "jobs", "resume", str(job_id))
    assert again.returncode != 0 and "only an interrupted job can be resumed" in again.stderr


def test_resume_under_the_same_trust_finishes_the_job(
    tmp_path: Path, env: dict[str, str], key: PrivateKey, vmbusops_home: Path
) -> None:
    path = bundle(tmp_path, key, credential="lab-admin", steps=[QUICK, {**SLOW, "inline": "Start-Sleep -Seconds 2", "idempotent": True}])
    job_id = run_and_kill(env, vmbusops_home, path)
    resumed = vmbusops(env, "jobs", "resume", str(job_id))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert jobs(vmbusops_home) == [(job_id, "success")]
