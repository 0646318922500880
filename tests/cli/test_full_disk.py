"""`vmbusops run` streaming into a journal that fills up, or a bundle extracted onto a full disk:
one line, exit code 3, the job resumable or the bundle runnable later.

The first test fills the journal to its configured limit (``[retention] journal_max_mb``: SQLite's
own ``max_page_count``, which fails exactly as a full disk does); the second fills a real
filesystem (a 1 MB tmpfs), where only root can mount one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.builders import VM, bundle_doc, write_bundle_source, write_lab
from tests.engine.bundles import signed_bundle, trust_and_credential

from vmbusops.bundle.build import build_bundle, sign_bundle
from vmbusops.bundle.crypto import PrivateKey

FLOOD = '1..5000 | ForEach-Object { Write-Output "line $_ ' + "x" * 300 + '" }'
STEPS = [{"kind": "script", "name": "flood", "inline": FLOOD, "idempotent": True}]


def vmbusops(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmbusops", *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def setup(tmp_path: Path, home: Path) -> tuple[PrivateKey, dict[str, str]]:
    key = PrivateKey.generate()
    trust_and_credential(key)
    lab = write_lab(tmp_path, [VM("vm01")])
    return key, {**os.environ, "VMBUSOPS_LAB": str(lab), "VMBUSOPS_HOME": str(home), "NO_COLOR": "1"}


def only_job(env: dict[str, str]) -> dict[str, object]:
    [job] = [json.loads(line) for line in vmbusops("jobs", "--json", env=env).stdout.splitlines()]
    return job


@pytest.mark.slow
def test_a_run_into_a_full_journal_says_so_in_one_line_and_the_job_resumes(
    tmp_path: Path, vmbusops_home: Path
) -> None:
    key, env = setup(tmp_path, vmbusops_home)
    config = vmbusops_home / "config.toml"
    config.write_text("[retention]\njournal_max_mb = 0.25\n")
    db = vmbusops_home / "journal" / "journal.sqlite"

    run = vmbusops("run", str(signed_bundle(tmp_path, key, vms=["vm01"], steps=STEPS, name="a")), env=env)
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stderr.splitlines() == [
        f"vmbusops: the journal {db} cannot be written: disk full or at its limit ([retention]"
        f" journal_max_mb = 0.25) (SQLITE_FULL); free space under {vmbusops_home} or prune with:"
        " vmbusops prune"
    ]
    job = only_job(env)
    assert job["state"] == "interrupted"

    # The next run is not confused: the same cause, said the same way.
    again = vmbusops("run", str(signed_bundle(tmp_path, key, vms=["vm01"], steps=STEPS, name="b")), env=env)
    assert again.returncode == 3
    [line] = again.stderr.splitlines()
    assert "SQLITE_FULL" in line
    assert "rollback" not in line

    config.write_text("")
    resumed = vmbusops("jobs", "resume", str(job["id"]), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    logs = [json.loads(line) for line in vmbusops("logs", str(job["id"]), "--json", env=env).stdout.splitlines()]
    assert any(str(r.get("value", "")).startswith("line 5000 ") for r in logs)


@pytest.fixture
def tmpfs_home(vmbusops_home: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(vmbusops_home)],
                             capture_output=True, check=False)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield vmbusops_home
    finally:
        subprocess.run(["umount", "-l", str(vmbusops_home)], check=False)


@pytest.mark.slow
def test_a_full_disk_under_home_is_one_line_naming_the_store_and_nothing_is_lost(
    tmp_path: Path, tmpfs_home: Path
) -> None:
    key, env = setup(tmp_path, tmpfs_home)
    run = vmbusops("run", str(signed_bundle(tmp_path, key, vms=["vm01"], steps=STEPS, name="a")), env=env)
    assert run.returncode == 3, run.stderr[-3000:]
    assert run.stderr.splitlines() == [
        f"vmbusops: the journal {tmpfs_home / 'journal' / 'journal.sqlite'} cannot be written: disk full"
        f" (SQLITE_FULL); free space under {tmpfs_home} or prune with: vmbusops prune"
    ]
    job = only_job(env)
    assert job["state"] == "interrupted"
    seen = [json.loads(line)["seq"] for line in vmbusops("logs", str(job["id"]), "--json", env=env).stdout.splitlines()]
    assert seen == list(range(1, len(seen) + 1))

    # The next run fails on the replay store: it says so, and no failed ROLLBACK hides why.
    again = vmbusops("run", str(signed_bundle(tmp_path, key, vms=["vm01"], steps=STEPS, name="b")), env=env)
    assert again.returncode == 3
    [line] = again.stderr.splitlines()
    assert "disk full (SQLITE_FULL)" in line, line
    assert "rollback" not in line

    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs_home)], check=True)
    resumed = vmbusops("jobs", "resume", str(job["id"]), env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = [json.loads(line)["seq"] for line in vmbusops("logs", str(job["id"]), "--json", env=env).stdout.splitlines()]
    assert after[: len(seen)] == seen


@pytest.mark.slow
def test_a_bundle_too_big_for_the_disk_is_refused_in_one_line_and_can_be_run_later(
    tmp_path: Path, tmpfs_home: Path
) -> None:
    key, env = setup(tmp_path, tmpfs_home)
    doc = bundle_doc(
        ["vm01"],
        [{"kind": "copy", "name": "big", "source": "payload.bin", "destination": "C:\\Temp\\payload.bin"}],
        name="big",
    )
    source = write_bundle_source(tmp_path / "src-big", doc, {"payload.bin": os.urandom(3 << 20)})
    out = tmp_path / "big.vmb"
    build_bundle(source, out)
    sign_bundle(out, key)
    run = vmbusops("run", str(out), env=env)
    # A full disk under $VMBUSOPS_HOME is a store that cannot be written (3), as for the journal:
    # the bundle is not at fault (4 would say it was rejected).
    assert run.returncode == 3, run.stderr
    assert run.stderr.splitlines() == [
        "vmbusops: bundle big.vmb cannot be extracted under $VMBUSOPS_HOME: No space left on device",
        f"  hint: free space under {tmpfs_home}, then run it again (the bundle was not rejected)",
    ]
    assert not any((tmpfs_home / "bundles" / "accepted").glob("bundle-*")), "nothing extracted stays"

    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs_home)], check=True)
    again = vmbusops("run", str(out), env=env)
    assert again.returncode == 0, again.stderr[-2000:]
