"""Everything under VMBUSOPS_HOME is owner-only: 0700 folders, 0600 files, SQLite's -wal and -shm
files included, after the tour, the README flow and an agent that ran a job and took a schedule.

The commands run as an operator types them, in child processes with the common umask 022, so a
file created with the default mode shows up here as 0644.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import pytest
import tomli_w

SIM_GUESTS = Path("sim", "guests")


def vmbusops(
    *args: str, cwd: Path, env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmbusops", *args],
        cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=lambda: os.umask(0o022),
    )  # fmt: skip


def loose_paths(home: Path) -> list[str]:
    """Every path below ``home`` whose mode lets anyone but the owner in, with that mode.

    The simulator's guest disks (``sim/guests/<vm>/``) stand for the guests' own file systems
    and keep their own modes; their folder is checked, so nothing below it is reachable."""
    loose = []
    for path in [home, *home.rglob("*")]:
        rel = path.relative_to(home)
        if rel.parts[: len(SIM_GUESTS.parts)] == SIM_GUESTS.parts and rel != SIM_GUESTS:
            continue
        mode = stat.S_IMODE(path.lstat().st_mode)
        want = 0o700 if path.is_dir() else 0o600
        if mode != want:
            loose.append(f"{oct(mode)} {rel}")
    return loose


@pytest.mark.slow
def test_every_path_under_the_home_is_owner_only(tmp_path: Path, vmbusops_home: Path) -> None:
    env = dict(os.environ, VMBUSOPS_KEY_PASSPHRASE="correct horse battery")
    env.pop("VMBUSOPS_LAB", None)

    def ok(*args: str, stdin: str | None = None) -> str:
        proc = vmbusops(*args, cwd=tmp_path, env=env, stdin=stdin)
        assert proc.returncode == 0, (args, proc.stderr[-2000:])
        return proc.stdout

    ok("demo")
    ok("bundle", "init", "lab-demo")
    ok("keys", "new", "alice", "--passphrase")
    ok("bundle", "build", "lab-demo", "-o", "lab-demo.vmb")
    ok("bundle", "sign", "lab-demo.vmb", "--key", "alice")
    ok("trust", "add", str(vmbusops_home / "keys" / "alice.pub"), "--vms", "*", "--credential", "lab-admin",
       "--steps", "copy,script,dsc")  # fmt: skip
    ok("run", "lab-demo.vmb")
    ok("cred", "set", "tenant-a", "--username", "Administrator", "--password-stdin", stdin="not-a-real-one\n")

    # The agent: a token, a job submitted over HTTP, and a schedule registered.
    token = ok("agent", "token", "create", "--name", "ops", "--scope", "all", "--vm", "*").strip().split()[-1]
    for name, extra in [
        ("agent-job", {}),
        ("agent-schedule", {"schedule": {"cron": "0 3 * * 6", "window": "2h"}}),
    ]:
        source = tmp_path / name
        ok("bundle", "init", str(source))
        doc = {**tomllib.loads((source / "bundle.toml").read_text()), "name": name, **extra}
        (source / "bundle.toml").write_text(tomli_w.dumps(doc))
        ok("bundle", "build", str(source), "-o", f"{name}.vmb")
        ok("bundle", "sign", f"{name}.vmb", "--key", "alice")
    agent = subprocess.Popen(
        [sys.executable, "-m", "vmbusops", "agent", "--listen", "127.0.0.1:0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
        preexec_fn=lambda: os.umask(0o022),  # noqa: PLW1509 - before any thread starts
    )  # fmt: skip
    try:
        assert agent.stdout is not None
        url = ""
        while not url:
            line = agent.stdout.readline()
            assert line, "the agent exited before it was ready"
            doc = json.loads(line)
            if doc.get("event") == "ready":
                url = doc["listen"][0]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
            post = {"Content-Type": "application/octet-stream"}
            r = c.post("/v1/jobs", content=(tmp_path / "agent-job.vmb").read_bytes(), headers=post)
            assert r.status_code == 201, r.text
            job = r.json()["job"]["id"]
            r = c.post("/v1/jobs", content=(tmp_path / "agent-schedule.vmb").read_bytes(), headers=post)
            assert r.status_code == 202, r.text
            deadline = time.monotonic() + 120
            while c.get(f"/v1/jobs/{job}").json()["job"]["state"] in ("pending", "in-progress"):
                assert time.monotonic() < deadline, "the job did not finish"
                time.sleep(0.2)
        # Look while the agent still holds its stores open: that is when -wal and -shm exist.
        open_loose = loose_paths(vmbusops_home)
        wal_files = [p.name for p in vmbusops_home.rglob("*.sqlite-wal")]
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=60)
        if agent.stdout is not None:
            agent.stdout.close()
    assert wal_files, "expected the agent's stores to have -wal files open"
    assert open_loose == [], "\n".join(open_loose)
    after = loose_paths(vmbusops_home)
    assert after == [], "\n".join(after)
